//! What the Rust side of every C++ shim (`csrc/`) shares: the tensor pointer type and how a
//! returned exception message becomes an `Err` (csrc/sftok_guarded.h).

use anyhow::{Result, anyhow};
use std::ffi::{CStr, c_char};

/// `*const tch::Tensor`'s target is tch's C_tensor, which is an `at::Tensor`.
pub(crate) type AtTensor = std::ffi::c_void;

unsafe extern "C" {
    fn sftok_free_message(message: *mut c_char);
}

/// NULL → Ok; a message → Err (the message freed).
pub(crate) fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().trim().to_string();
    unsafe { sftok_free_message(err) };
    Err(anyhow!("{msg}"))
}
