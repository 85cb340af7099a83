// libtorch's multi-tensor optimiser kernels, which tch 0.26 does not bind (toolchain-notes.md,
// "_foreach_* ops, fused AdamW"): AdamW as one pass over each parameter (`torch.optim.AdamW(...,
// fused=True)`'s kernel, CPU and CUDA) instead of the single-tensor loop's ~13 passes, and the
// EMA's lerp as one pass per tensor. At SFTok-B that is ~700 MB per array, so each saved pass is
// tens of milliseconds on a CPU and a kernel launch per parameter on a GPU.
//
// Tensors arrive as arrays of `at::Tensor*` (what tch's `Tensor::as_ptr` points at); every
// function returns NULL or a message (sftok_guarded.h).

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <vector>

#include "sftok_guarded.h"

namespace {
std::vector<at::Tensor> list(const at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}
}  // namespace

extern "C" {

// at::_fused_adamw_ over n parameters of one group: params, grads, exp_avgs and exp_avg_sqs are
// updated in place; steps are float32 scalars holding the step number of this update (PyTorch
// increments them before the call). No amsgrad, no maximize, no grad scale (the trainer unscales).
char* sftok_fused_adamw(const at::Tensor* const* params, const at::Tensor* const* grads,
                        const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs,
                        const at::Tensor* const* steps, size_t n, double lr, double beta1, double beta2,
                        double weight_decay, double eps) {
  return sftok::guarded([&] {
    c10::NoGradGuard no_grad;
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n), {},
                      list(steps, n), lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  });
}

// dst[i] += weight * (src[i] - dst[i]) for every i (at::_foreach_lerp_ with a scalar weight).
char* sftok_foreach_lerp(const at::Tensor* const* dst, const at::Tensor* const* src, size_t n, double weight) {
  return sftok::guarded([&] {
    c10::NoGradGuard no_grad;
    at::_foreach_lerp_(list(dst, n), list(src, n), at::Scalar(weight));
  });
}

// Drops the gradients of n tensors (`zero_grad(set_to_none=True)`, PyTorch's default): the next
// backward stores its gradient instead of adding it to a zero-filled one, a pass over every
// gradient saved, and an unused parameter then has no gradient, as in the reference.
char* sftok_set_grads_to_none(const at::Tensor* const* ts, size_t n) {
  return sftok::guarded([&] {
    for (size_t i = 0; i < n; ++i) const_cast<at::Tensor*>(ts[i])->mutable_grad().reset();
  });
}

}  // extern "C"
