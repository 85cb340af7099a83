//! EMA of the model weights (../shared/spec/sftok-training.md §10): `decay = min(0.999,
//! (1+s)/(10+s))` with `s = optimisation_step − 1` (0 for the first step). Unlike the reference,
//! the decay does not silently change to 0.9999 after a resume (gap 19): it is a pure function of
//! the step counter, which is saved.

use crate::ffi::{AtTensor, check};
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;
use std::ffi::c_char;
use tch::Tensor;

unsafe extern "C" {
    fn sftok_foreach_lerp(dst: *const *const AtTensor, src: *const *const AtTensor, n: usize, weight: f64) -> *mut c_char;
}

pub struct Ema {
    /// name → shadow copy (same dtype/device as the parameter).
    pub shadow: BTreeMap<String, Tensor>,
    pub max_decay: f64,
    pub optimization_step: u64,
}

impl Ema {
    /// Starts from the current weights (all variables, buffers included, so the EMA model saves
    /// as a complete state dict).
    pub fn new(vars: &BTreeMap<String, Tensor>, max_decay: f64) -> Ema {
        let shadow = vars.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
        Ema { shadow, max_decay, optimization_step: 0 }
    }

    pub fn decay(&self) -> f64 {
        let s = self.optimization_step as f64 - 1.0;
        if s <= 0.0 { 0.0 } else { self.max_decay.min((1.0 + s) / (10.0 + s)) }
    }

    /// After an optimiser step: trainable → `shadow += (1 − decay)(param − shadow)`, else copy.
    /// The reference writes `shadow −= (1 − decay)(shadow − param)`, the same update, which
    /// allocates two temporaries of every parameter's size; `_foreach_lerp_` (csrc/sftok_optim.cpp)
    /// is one pass with none (SFTok-B's 174 M values in PyTorch on this project's 2-core CPU:
    /// 0.37 s a step for the reference's expression, 0.036 s for the lerp). Its rounding differs
    /// in the last bit for ~2 values in 10⁴.
    pub fn update(&mut self, vars: &BTreeMap<String, Tensor>) -> Result<()> {
        self.optimization_step += 1;
        let one_minus = 1.0 - self.decay();
        let (mut dst, mut src) = (Vec::new(), Vec::new());
        for (name, p) in vars {
            let Some(s) = self.shadow.get_mut(name) else { bail!("the EMA has no shadow of {name}") };
            if p.requires_grad() {
                dst.push(s.as_ptr() as *const AtTensor);
                src.push(p.as_ptr() as *const AtTensor);
            } else {
                tch::no_grad(|| s.copy_(p));
            }
        }
        check(unsafe { sftok_foreach_lerp(dst.as_ptr(), src.as_ptr(), dst.len(), one_minus) }).map_err(|e| anyhow!("EMA update: {e}"))
    }

    /// Runs `f` with the EMA weights in `vars`, then puts the trained weights back (the
    /// reference's store → copy_to → restore around previews and evaluations).
    pub fn with_shadow_weights<T>(&self, vars: &BTreeMap<String, Tensor>, f: impl FnOnce() -> T) -> T {
        let backup: BTreeMap<String, Tensor> = vars.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
        copy_into(vars, &self.shadow);
        let result = f();
        copy_into(vars, &backup);
        result
    }

    /// The shadow weights as named tensors (for saving).
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.shadow.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }
}

fn copy_into(dst: &BTreeMap<String, Tensor>, src: &BTreeMap<String, Tensor>) {
    tch::no_grad(|| {
        for (n, t) in dst {
            let mut t = t.shallow_clone();
            t.copy_(&src[n]);
        }
    });
}
