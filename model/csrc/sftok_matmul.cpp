// float32 matrix products on the CPU through oneDNN instead of MKL (cpu_matmul.rs says when).
//
// libtorch runs a float32 `mm`/`addmm` on the CPU through MKL's sgemm. On AMD CPUs MKL takes an
// AVX2 code path even where the CPU has AVX-512; oneDNN, which libtorch also bundles (its convs,
// and ATen's own bf16/fp16 matmuls, `at::native::mkldnn_matmul`), picks its kernels from the ISA.
// Measured on a 2-core AMD EPYC (Zen 5), SFTok-B's shapes ([642, 768] x [768, 3072] and the like,
// forward and both backward products): MKL 161–191 GFLOP/s, oneDNN 334–442.
//
// The route: kernels for `aten::mm` and `aten::addmm` on the CPU dispatch key, registered over
// ATen's own once per process. Autograd's backward of a linear calls the same two ops, so forward
// and backward both take it. A product goes to oneDNN when both operands are dense float32
// matrices with at least `min_mnk` multiply-adds (oneDNN costs ~10–13 µs a call; below ~2^21
// multiply-adds MKL is faster) and, for addmm, beta = alpha = 1 (what a linear layer uses);
// anything else runs ATen's CPU kernel (`at::cpu::mm` / `at::cpu::addmm`), exactly as before.
// oneDNN is asked for plain float32 (its default fpmath mode, no bf16 down-conversion), so the
// results are float32 products that round differently from MKL's, not lower-precision ones.

#include <ATen/ATen.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "sftok_guarded.h"

namespace at::native {
// libtorch exports it (TORCH_API) but its wheel ships no header for it (ATen/native/mkldnn/Matmul.h):
// result = beta * result + alpha * (mat1 @ mat2), for float32 (x86 with AVX-512), bf16 and fp16.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

namespace {
std::atomic<int64_t> min_mnk{INT64_MAX};
std::atomic<uint64_t> routed{0};

bool to_onednn(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || a.dim() != 2 || b.dim() != 2 ||
      a.layout() != at::kStrided || b.layout() != at::kStrided || a.numel() == 0 || b.numel() == 0) {
    return false;
  }
  return a.size(0) * a.size(1) * b.size(1) >= min_mnk.load(std::memory_order_relaxed);
}

at::Tensor onednn_mm(const at::Tensor& a, const at::Tensor& b) {
  if (!to_onednn(a, b)) return at::cpu::mm(a, b);
  TORCH_CHECK(a.size(1) == b.size(0), "mm: mat1 and mat2 shapes cannot be multiplied (", a.size(0), "x", a.size(1),
              " and ", b.size(0), "x", b.size(1), ")");
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  at::native::mkldnn_matmul(a, b, out, /*beta=*/0.f, /*alpha=*/1.f);
  routed.fetch_add(1, std::memory_order_relaxed);
  return out;
}

// out = self (broadcast to [m, n]) + a @ b, the bias added by oneDNN's fused sum as MKL's beta = 1.
at::Tensor onednn_addmm(const at::Tensor& self, const at::Tensor& a, const at::Tensor& b, const at::Scalar& beta,
                        const at::Scalar& alpha) {
  if (!to_onednn(a, b) || self.scalar_type() != at::kFloat || beta.toDouble() != 1.0 || alpha.toDouble() != 1.0) {
    return at::cpu::addmm(self, a, b, beta, alpha);
  }
  TORCH_CHECK(a.size(1) == b.size(0), "addmm: mat1 and mat2 shapes cannot be multiplied (", a.size(0), "x", a.size(1),
              " and ", b.size(0), "x", b.size(1), ")");
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  out.copy_(self.expand({a.size(0), b.size(1)}));  // a fresh buffer: oneDNN accumulates into it
  at::native::mkldnn_matmul(a, b, out, /*beta=*/1.f, /*alpha=*/1.f);
  routed.fetch_add(1, std::memory_order_relaxed);
  return out;
}

// Registering over ATen's kernel makes the dispatcher warn once ("Overriding a previously
// registered kernel"); that override is the point here, so the warning is dropped.
struct Quiet : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};
}  // namespace

extern "C" {

// From now on in this process, the CPU's float32 mm/addmm of at least `min_mnk` multiply-adds
// (m·k·n) go to oneDNN; INT64_MAX sends them all back to ATen's kernels. The first call that
// enables the route checks that oneDNN takes float32 on this CPU (it needs AVX-512:
// mkldnn_matmul raises otherwise, and that message comes back) and registers the kernels.
char* sftok_set_cpu_matmul_min_mnk(int64_t min_mnk_) {
  return sftok::guarded([&] {
    TORCH_CHECK(min_mnk_ >= 1, "min_mnk must be at least 1");
    static std::mutex mu;
    static torch::Library* lib = nullptr;  // kept for the life of the process (no exit-time deregistration)
    std::lock_guard<std::mutex> lock(mu);
    if (!lib && min_mnk_ != INT64_MAX) {
      at::Tensor probe = at::ones({8, 8});
      at::Tensor out = at::empty({8, 8});
      at::native::mkldnn_matmul(probe, probe, out, 0.f, 1.f);
      TORCH_CHECK(out.eq(8.f).all().item<bool>(), "oneDNN's float32 matmul returned a wrong product (8x8 ones)");
      Quiet quiet;
      c10::WarningUtils::WarningHandlerGuard guard(&quiet);
      auto l = std::make_unique<torch::Library>(torch::Library::IMPL, "aten", c10::DispatchKey::CPU, __FILE__, __LINE__);
      l->impl("mm", TORCH_FN(onednn_mm));
      l->impl("addmm", TORCH_FN(onednn_addmm));
      lib = l.release();
    }
    min_mnk.store(min_mnk_, std::memory_order_relaxed);
  });
}

// The current threshold (INT64_MAX: the route is off).
int64_t sftok_cpu_matmul_min_mnk() { return min_mnk.load(std::memory_order_relaxed); }

// How many products have gone to oneDNN in this process.
uint64_t sftok_onednn_matmul_count() { return routed.load(std::memory_order_relaxed); }

}  // extern "C"
