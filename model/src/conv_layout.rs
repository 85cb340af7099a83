//! Conv nets in channels-last on CUDA (the teacher, the stage-3 pixel decoder, LPIPS's VGG16;
//! the FID Inception gets the layout from its NHWC input view, `inception::preprocess`):
//! cuDNN's NHWC kernels are the ones with tensor cores in bf16/fp16. The conv weights are
//! re-laid out once at load (csrc/sftok_layout.cpp); a convolution with a channels-last weight
//! returns a channels-last output, so the layout then runs through the net. Values do not change
//! (`copy_` into the weights keeps their layout, checkpoints are written contiguous).
//!
//! On the CPU the nets stay NCHW: oneDNN's channels-last convolutions are faster there too
//! (PyTorch, teacher encoder at batch 2: 1.39 → 1.18 s), but they round differently (up to 2e-5 in
//! the teacher's latent), which would let a near-tie proxy code differ from the reference's.

use crate::ffi::{AtTensor, check};
use anyhow::{Result, anyhow};
use std::ffi::c_char;
use tch::{Device, Tensor, nn};

unsafe extern "C" {
    fn sftok_to_channels_last_(ts: *const *const AtTensor, n: usize) -> *mut c_char;
    fn sftok_is_channels_last(t: *const AtTensor) -> i32;
}

/// Whether conv nets on `device` run channels-last (CUDA).
pub fn channels_last_on(device: Device) -> bool {
    device.is_cuda()
}

/// On a device that wants it ([`channels_last_on`]), [`to_channels_last`] over the variables of
/// `vs` whose names start with `prefix` ("" for all); returns how many were converted.
pub fn prefer_channels_last(vs: &nn::VarStore, prefix: &str) -> Result<usize> {
    if !channels_last_on(vs.device()) {
        return Ok(0);
    }
    to_channels_last(vs, prefix)
}

/// Re-lays out every 4-D variable of `vs` under `prefix` as channels-last, in place.
pub fn to_channels_last(vs: &nn::VarStore, prefix: &str) -> Result<usize> {
    let vars: Vec<Tensor> = vs.variables().into_iter().filter(|(n, t)| n.starts_with(prefix) && t.dim() == 4).map(|(_, t)| t).collect();
    let ptrs: Vec<*const AtTensor> = vars.iter().map(|t| t.as_ptr() as *const AtTensor).collect();
    check(unsafe { sftok_to_channels_last_(ptrs.as_ptr(), ptrs.len()) }).map_err(|e| anyhow!("converting conv weights to channels-last: {e}"))?;
    Ok(vars.len())
}

/// Whether `t` is a dense 4-D channels-last tensor.
pub fn is_channels_last(t: &Tensor) -> bool {
    unsafe { sftok_is_channels_last(t.as_ptr() as *const AtTensor) == 1 }
}
