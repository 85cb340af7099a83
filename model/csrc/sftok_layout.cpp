// Memory formats, which tch 0.26 does not expose: conv weights converted in place to channels-last
// (NHWC memory behind the NCHW shape), the layout cuDNN's fastest kernels (tensor cores in
// bf16/fp16) and oneDNN's want. A convolution whose weight is channels-last returns a
// channels-last output, so one conversion at load makes a whole conv net run in that layout.
//
// Tensors arrive as `at::Tensor*` (tch's `Tensor::as_ptr`); functions return NULL or a message
// (sftok_guarded.h).

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "sftok_guarded.h"

extern "C" {

// Every 4-D tensor of the n given (conv weights) re-laid out as channels-last in place
// (`set_data`, so every handle to the variable, the module's included, sees the new layout).
char* sftok_to_channels_last_(const at::Tensor* const* ts, size_t n) {
  return sftok::guarded([&] {
    c10::NoGradGuard no_grad;
    for (size_t i = 0; i < n; ++i) {
      at::Tensor& t = *const_cast<at::Tensor*>(ts[i]);
      if (t.dim() == 4) t.set_data(t.contiguous(at::MemoryFormat::ChannelsLast));
    }
  });
}

// 1 when t is a dense channels-last tensor (4-D), 0 otherwise.
int sftok_is_channels_last(const at::Tensor* t) {
  try {
    return t->dim() == 4 && t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
