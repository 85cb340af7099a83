//! Optimisation pieces of ../shared/spec/sftok-training.md §9: parameter groups (the reference's
//! decay / no-decay rule), AdamW, the learning-rate schedules (`lr_scheduler.scheduler`), global-norm
//! gradient clipping and per-group gradient norms.
//!
//! AdamW is implemented here (not tch's) because its moments must be saved and restored for a
//! bit-identical resume; it runs libtorch's fused AdamW kernel (PyTorch's `fused=True`).

use crate::config::Config;
use crate::ffi::{AtTensor, check};
use anyhow::{Result, anyhow, bail};
use std::ffi::c_char;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Name fragments that put a parameter in the no-decay group (with any parameter of ndim < 2).
const NO_DECAY: &[&str] = &["ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed"];

/// The reference's rule: weight decay only for ≥ 2-D tensors whose name has none of `NO_DECAY`.
pub fn uses_weight_decay(name: &str, ndim: usize) -> bool {
    ndim >= 2 && !NO_DECAY.iter().any(|frag| name.contains(frag))
}

/// Parameters that share optimiser settings (PyTorch's `param_groups`). Frozen parameters are in
/// no group: they get no gradient and no update.
pub struct ParamGroup {
    /// Logged as `grad_norm_group/<name>`.
    pub name: String,
    pub params: BTreeMap<String, Tensor>,
    pub weight_decay: f64,
}

/// The reference's two groups over `trainable`: `decay` (weight decay `weight_decay`) and
/// `no_decay` (0), split by [`uses_weight_decay`].
pub fn reference_param_groups(trainable: BTreeMap<String, Tensor>, weight_decay: f64) -> Vec<ParamGroup> {
    let (decay, no_decay): (BTreeMap<_, _>, BTreeMap<_, _>) = trainable.into_iter().partition(|(n, p)| uses_weight_decay(n, p.dim()));
    vec![
        ParamGroup { name: "decay".into(), params: decay, weight_decay },
        ParamGroup { name: "no_decay".into(), params: no_decay, weight_decay: 0.0 },
    ]
}

/// [`reference_param_groups`] over the variables of `vs` that require grad (frozen ones are in none).
pub fn trainable_param_groups(vs: &tch::nn::VarStore, weight_decay: f64) -> Vec<ParamGroup> {
    let trainable: BTreeMap<String, Tensor> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    reference_param_groups(trainable, weight_decay)
}

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// One parameter with its optimiser state.
struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The step number of the update (a float32 scalar, PyTorch's `state["step"]`): a view of
    /// [`AdamW::steps`], so one `fill_` sets every parameter's.
    step: Tensor,
}

/// The slots of one [`ParamGroup`]: one fused kernel call per step.
struct SlotGroup {
    weight_decay: f64,
    slots: Vec<Slot>,
}

unsafe extern "C" {
    fn sftok_fused_adamw(
        params: *const *const AtTensor,
        grads: *const *const AtTensor,
        exp_avgs: *const *const AtTensor,
        exp_avg_sqs: *const *const AtTensor,
        steps: *const *const AtTensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
    fn sftok_set_grads_to_none(ts: *const *const AtTensor, n: usize) -> *mut c_char;
}

/// Drops the gradients of `params` (the next backward stores fresh ones).
pub fn set_grads_to_none<'a>(params: impl Iterator<Item = &'a Tensor>) {
    let ptrs: Vec<*const AtTensor> = params.map(|p| p.as_ptr() as *const AtTensor).collect();
    // Resetting a gradient handle cannot throw; a message here would be a broken shim.
    check(unsafe { sftok_set_grads_to_none(ptrs.as_ptr(), ptrs.len()) }).expect("sftok_set_grads_to_none");
}

/// `torch.optim.AdamW(..., fused=True)`: libtorch's fused kernel (csrc/sftok_optim.cpp), one pass
/// over each parameter, its gradient and its two moments per step. The single-tensor loop that
/// PyTorch runs on a CPU by default makes ~13 passes with temporaries (SFTok-B's 175 M values on
/// this project's 2-core CPU, in PyTorch: 0.40 s a step for the loop, 0.08 s fused). The
/// arithmetic is the same update; its float32 rounding is the fused kernel's (equal to PyTorch's
/// `fused=True` bit for bit, within 1e-7 of the single-tensor loop after 3 steps: model/tests/train.rs).
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<SlotGroup>,
    /// `[slots]` float32 on the parameters' device: every slot's step number.
    steps: Option<Tensor>,
    /// Optimiser steps taken (PyTorch keeps one per parameter; they are always equal here).
    pub step: u64,
}

impl AdamW {
    /// One slot per parameter of `groups`, each with its group's weight decay.
    pub fn new(groups: &[ParamGroup], cfg: AdamWConfig) -> AdamW {
        let n: usize = groups.iter().map(|g| g.params.len()).sum();
        let first = groups.iter().flat_map(|g| g.params.values()).next();
        let steps = first.map(|p| Tensor::zeros([n as i64], (Kind::Float, p.device())));
        let mut index = 0i64;
        let mut slot = |name: &String, param: &Tensor| {
            let step = steps.as_ref().expect("a parameter implies a step tensor").select(0, index);
            index += 1;
            Slot { name: name.clone(), param: param.shallow_clone(), exp_avg: param.zeros_like().detach(), exp_avg_sq: param.zeros_like().detach(), step }
        };
        let groups = groups
            .iter()
            .map(|g| SlotGroup { weight_decay: g.weight_decay, slots: g.params.iter().map(|(n, p)| slot(n, p)).collect() })
            .collect();
        AdamW { cfg, groups, steps, step: 0 }
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.groups.iter().flat_map(|g| &g.slots)
    }

    /// (values with decay, values without) — for logging the group split.
    pub fn group_sizes(&self) -> (i64, i64) {
        let count = |decay: bool| {
            self.groups.iter().filter(|g| (g.weight_decay > 0.0) == decay).flat_map(|g| &g.slots).map(|s| s.param.numel() as i64).sum()
        };
        (count(true), count(false))
    }

    /// One update with learning rate `lr` (parameters without a gradient are skipped): one fused
    /// kernel call per parameter group.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let Some(steps) = &mut self.steps else { return Ok(()) };
        let _ = tch::no_grad(|| steps.fill_(self.step as f64));
        for group in &self.groups {
            let wd = group.weight_decay;
            let (slots, grads): (Vec<&Slot>, Vec<Tensor>) = group.slots.iter().map(|s| (s, s.param.grad())).filter(|(_, g)| g.defined()).unzip();
            if slots.is_empty() {
                continue;
            }
            let ptrs = |f: &dyn Fn(&Slot) -> &Tensor| -> Vec<*const AtTensor> { slots.iter().map(|s| f(s).as_ptr() as *const AtTensor).collect() };
            let (p, m, v, k) = (ptrs(&|s| &s.param), ptrs(&|s| &s.exp_avg), ptrs(&|s| &s.exp_avg_sq), ptrs(&|s| &s.step));
            let g: Vec<*const AtTensor> = grads.iter().map(|g| g.as_ptr() as *const AtTensor).collect();
            let AdamWConfig { beta1, beta2, eps } = self.cfg;
            check(unsafe { sftok_fused_adamw(p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), k.as_ptr(), slots.len(), lr, beta1, beta2, wd, eps) })
                .map_err(|e| anyhow!("AdamW step (fused kernel, weight decay {wd}): {e}"))?;
        }
        Ok(())
    }

    /// `zero_grad(set_to_none=True)` (PyTorch's default and the reference's): every gradient
    /// dropped, so that the next backward writes fresh ones (csrc/sftok_optim.cpp).
    pub fn zero_grad(&mut self) {
        set_grads_to_none(self.slots().map(|s| &s.param));
    }

    /// Moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`) for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in self.slots() {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.to_device(tch::Device::Cpu)));
            out.push((format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.to_device(tch::Device::Cpu)));
        }
        out
    }

    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)], step: u64) -> Result<()> {
        let map: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| -> Result<()> {
            for s in self.groups.iter_mut().flat_map(|g| &mut g.slots) {
                for (prefix, dst) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                    let key = format!("{prefix}.{}", s.name);
                    let Some(src) = map.get(key.as_str()) else { bail!("optimizer state has no {key}: was it saved by a different model?") };
                    if src.size() != dst.size() {
                        bail!("optimizer state {key}: shape {:?}, parameter {:?}", src.size(), dst.size());
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// `lr_scheduler.scheduler`: the learning rate as a function of the optimiser steps taken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    /// The reference's schedule: linear warm-up, then cosine decay from `learning_rate` to `end_lr`.
    Cosine,
    /// Linear warm-up, then `learning_rate` (`end_lr` unused).
    Constant,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base: f64,
    pub end: f64,
    pub warmup: u64,
    pub max_steps: u64,
}

impl LrSchedule {
    /// The main optimiser's schedule of a config (`lr_scheduler.*`, `training.max_train_steps`).
    pub fn from_config(cfg: &Config) -> Result<LrSchedule> {
        let kind = match cfg.lr_scheduler.scheduler.as_str() {
            "cosine" => ScheduleKind::Cosine,
            "constant" => ScheduleKind::Constant,
            other => bail!("lr_scheduler.scheduler: {other:?} is not a schedule sftok has; use \"cosine\" (the reference's) or \"constant\""),
        };
        let p = &cfg.lr_scheduler.params;
        Ok(LrSchedule { kind, base: p.learning_rate, end: p.end_lr, warmup: p.warmup_steps, max_steps: cfg.training.max_train_steps })
    }

    /// Learning rate of the optimiser step taken after `k` steps.
    pub fn lr(&self, k: u64) -> f64 {
        match self.kind {
            ScheduleKind::Cosine => cosine_lr(k, self.base, self.end, self.warmup, self.max_steps),
            ScheduleKind::Constant if k < self.warmup => self.base * k as f64 / self.warmup as f64,
            ScheduleKind::Constant => self.base,
        }
    }
}

/// `lr(k)` of the reference's "cosine" schedule for the k-th optimiser step (k = steps taken).
pub fn cosine_lr(k: u64, base: f64, end: f64, warmup: u64, max_steps: u64) -> f64 {
    if k < warmup {
        return base * k as f64 / warmup as f64;
    }
    let span = max_steps.saturating_sub(warmup).max(1) as f64;
    let progress = ((k - warmup) as f64 / span).min(1.0);
    end + (base - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// `torch.nn.utils.clip_grad_norm_`: global L2 norm of all gradients (returned, pre-clip), and
/// gradients scaled by `max_norm / (norm + 1e-6)` when that is below 1.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        // One read of the norm (a device sync on CUDA), used for the coefficient and returned.
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total
    })
}

/// L2 norm of the gradients of `params` (0 when none has one): `grad_norm_group/<group>`.
pub fn grad_norm_of(params: &BTreeMap<String, Tensor>) -> f64 {
    tch::no_grad(|| {
        let norms: Vec<Tensor> = params.values().map(|p| p.grad()).filter(|g| g.defined()).map(|g| g.norm()).collect();
        if norms.is_empty() { 0.0 } else { Tensor::stack(&norms, 0).norm().to_kind(Kind::Double).double_value(&[]) }
    })
}
