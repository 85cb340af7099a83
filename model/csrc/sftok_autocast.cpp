// libtorch's autocast state per device type, which tch 0.26 does not expose: tch::autocast only
// toggles CUDA autocast in its default dtype (fp16) and is a no-op without CUDA, so bf16 autocast
// (the generator's reference precision) and CPU autocast are unreachable through it.
// ../shared/spec/toolchain-notes.md (tch row) has the measurement.
//
// Every function returns -1 when libtorch threw (the message is dropped: the Rust side names the
// call), so no C++ exception crosses into Rust.

#include <ATen/autocast_mode.h>

namespace {
at::DeviceType device_type(int device) { return device == 1 ? at::kCUDA : at::kCPU; }
at::ScalarType scalar_type(int dtype) { return dtype == 1 ? at::kHalf : at::kBFloat16; }
}  // namespace

extern "C" {

// Enables autocast on `device` (0 CPU, 1 CUDA) in `dtype` (0 bf16, 1 fp16) for one scope and
// enters it; returns 1/0: whether autocast was enabled before, for sftok_autocast_exit.
int sftok_autocast_enter(int device, int dtype) {
  try {
    const auto d = device_type(device);
    const bool was = at::autocast::is_autocast_enabled(d);
    at::autocast::set_autocast_dtype(d, scalar_type(dtype));
    at::autocast::set_autocast_enabled(d, true);
    at::autocast::increment_nesting();
    return was ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Disables autocast on `device` for one scope (float32 islands such as the quantizer); returns
// whether it was enabled before.
int sftok_autocast_suspend(int device) {
  try {
    const auto d = device_type(device);
    const bool was = at::autocast::is_autocast_enabled(d);
    at::autocast::set_autocast_enabled(d, false);
    return was ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Restores the state `sftok_autocast_suspend` returned.
int sftok_autocast_resume(int device, int was_enabled) {
  try {
    at::autocast::set_autocast_enabled(device_type(device), was_enabled != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Leaves a scope entered with sftok_autocast_enter: the cast cache is cleared when the outermost
// scope ends (as torch.autocast's __exit__ does), then the previous state is restored.
int sftok_autocast_exit(int device, int was_enabled) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(device), was_enabled != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// 1 when autocast is on for `device` now, 0 when off; -1 on error.
int sftok_autocast_enabled(int device) {
  try {
    return at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// The dtype autocast uses on `device` now: 0 bf16, 1 fp16, 2 other; -1 on error (tests).
int sftok_autocast_dtype(int device) {
  try {
    const auto t = at::autocast::get_autocast_dtype(device_type(device));
    return t == at::kBFloat16 ? 0 : (t == at::kHalf ? 1 : 2);
  } catch (...) {
    return -1;
  }
}
}
