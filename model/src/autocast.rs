//! Autocast through libtorch's own per-device state (`csrc/sftok_autocast.cpp`): bf16 or fp16,
//! CPU or CUDA. `tch::autocast` reaches only CUDA in fp16 (and is a no-op without CUDA), so bf16 —
//! the generator's reference precision — and CPU autocast need this shim.
//!
//! `autocast` opens a scope (nesting like `torch.autocast`; the cast cache is cleared when the
//! outermost scope ends); `float32` is a scope without autocast on every device, for what the spec
//! keeps in float32 (the quantizer, stage 2's guidance pass, the pixel losses).

use tch::Device;

unsafe extern "C" {
    fn sftok_autocast_enter(device: i32, dtype: i32) -> i32;
    fn sftok_autocast_exit(device: i32, was_enabled: i32) -> i32;
    fn sftok_autocast_suspend(device: i32) -> i32;
    fn sftok_autocast_resume(device: i32, was_enabled: i32) -> i32;
    fn sftok_autocast_dtype(device: i32) -> i32;
    fn sftok_autocast_enabled(device: i32) -> i32;
}

/// The lower precision of an autocast scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutocastDtype {
    BFloat16,
    Float16,
}

const CPU: i32 = 0;
const CUDA: i32 = 1;

fn code(device: Device) -> i32 {
    match device {
        Device::Cuda(_) => CUDA,
        _ => CPU,
    }
}

fn check(rc: i32, what: &str) -> i32 {
    assert!(rc >= 0, "libtorch refused {what} (see model/csrc/sftok_autocast.cpp)");
    rc
}

/// Runs `f` with autocast on `device` in `dtype` (fp32 weights, lower-precision compute where
/// libtorch's autocast lists allow it).
pub fn autocast<T>(device: Device, dtype: AutocastDtype, f: impl FnOnce() -> T) -> T {
    struct Scope(i32, i32);
    impl Drop for Scope {
        fn drop(&mut self) {
            check(unsafe { sftok_autocast_exit(self.0, self.1) }, "leaving an autocast scope");
        }
    }
    let d = code(device);
    let dt = match dtype {
        AutocastDtype::BFloat16 => 0,
        AutocastDtype::Float16 => 1,
    };
    let was = check(unsafe { sftok_autocast_enter(d, dt) }, "entering an autocast scope");
    let _scope = Scope(d, was);
    f()
}

/// Runs `f` with autocast off on the CPU and on CUDA (restored afterwards).
pub fn float32<T>(f: impl FnOnce() -> T) -> T {
    struct Suspended([i32; 2]);
    impl Drop for Suspended {
        fn drop(&mut self) {
            for (d, was) in [(CPU, self.0[0]), (CUDA, self.0[1])] {
                check(unsafe { sftok_autocast_resume(d, was) }, "restoring autocast");
            }
        }
    }
    let was = [CPU, CUDA].map(|d| check(unsafe { sftok_autocast_suspend(d) }, "suspending autocast"));
    let _s = Suspended(was);
    f()
}

/// Whether autocast is on for `device` now (inside an [`autocast`] scope, outside [`float32`]).
pub fn is_enabled(device: Device) -> bool {
    check(unsafe { sftok_autocast_enabled(code(device)) }, "reading the autocast state") == 1
}

/// The dtype autocast would use on `device` when on (None: neither bf16 nor fp16); it is set
/// whether or not autocast is on ([`is_enabled`]).
pub fn current_dtype(device: Device) -> Option<AutocastDtype> {
    match check(unsafe { sftok_autocast_dtype(code(device)) }, "reading the autocast dtype") {
        0 => Some(AutocastDtype::BFloat16),
        1 => Some(AutocastDtype::Float16),
        _ => None,
    }
}
