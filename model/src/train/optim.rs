//! Optimisation pieces of ../shared/spec/sftok-training.md §9: parameter groups (the reference's
//! decay / no-decay rule), AdamW, the learning-rate schedules (`lr_scheduler.scheduler`), global-norm
//! gradient clipping and per-group gradient norms.
//!
//! AdamW is implemented here (not tch's) because its moments must be saved and restored for a
//! bit-identical resume; the arithmetic is PyTorch's single-tensor AdamW, op for op.

use crate::config::Config;
use anyhow::{Result, bail};
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
    weight_decay: f64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Two buffers of the largest parameter's size for the update's intermediates: fresh
    /// temporaries of every parameter's size each step cost page faults (~0.3 s a step at SFTok-B
    /// on a CPU); reusing these keeps the arithmetic op for op.
    scratch: Option<(Tensor, Tensor)>,
    /// Optimiser steps taken (PyTorch keeps one per parameter; they are always equal here).
    pub step: u64,
}

impl AdamW {
    /// One slot per parameter of `groups`, each with its group's weight decay.
    pub fn new(groups: &[ParamGroup], cfg: AdamWConfig) -> AdamW {
        let slots: Vec<Slot> = groups
            .iter()
            .flat_map(|g| {
                g.params.iter().map(|(name, param)| Slot {
                    exp_avg: param.zeros_like().detach(),
                    exp_avg_sq: param.zeros_like().detach(),
                    weight_decay: g.weight_decay,
                    name: name.clone(),
                    param: param.shallow_clone(),
                })
            })
            .collect();
        let scratch = slots.iter().max_by_key(|s| s.param.numel()).map(|s| {
            let n = [s.param.numel() as i64];
            (s.param.new_zeros(n, (s.param.kind(), s.param.device())), s.param.new_zeros(n, (s.param.kind(), s.param.device())))
        });
        AdamW { cfg, slots, scratch, step: 0 }
    }

    /// (values with decay, values without) — for logging the group split.
    pub fn group_sizes(&self) -> (i64, i64) {
        let count = |decay: bool| self.slots.iter().filter(|s| (s.weight_decay > 0.0) == decay).map(|s| s.param.numel() as i64).sum();
        (count(true), count(false))
    }

    /// One update with learning rate `lr` (parameters without a gradient are skipped).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bias_correction1 = 1.0 - b1.powi(self.step as i32);
        let bias_correction2 = 1.0 - b2.powi(self.step as i32);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = bias_correction2.sqrt();
        let Some((buf_a, buf_b)) = &self.scratch else { return };
        tch::no_grad(|| {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                let shape = s.param.size();
                let n = s.param.numel() as i64;
                let mut a = buf_a.narrow(0, 0, n).view(shape.as_slice());
                let mut b = buf_b.narrow(0, 0, n).view(shape.as_slice());
                let _ = s.param.g_mul_scalar_(1.0 - lr * s.weight_decay);
                let _ = s.exp_avg.lerp_(&grad, 1.0 - b1);
                // addcmul_(grad, grad, value = 1 − β2) evaluates (value·grad)·grad.
                let _ = a.copy_(&grad);
                let _ = a.g_mul_scalar_(1.0 - b2).g_mul_(&grad);
                let _ = s.exp_avg_sq.g_mul_scalar_(b2).g_add_(&a);
                // denom = sqrt(v) / √bc2 + eps, into `a`.
                let _ = s.exp_avg_sq.sqrt_out(&a);
                let _ = a.g_div_scalar_(bc2_sqrt).g_add_scalar_(self.cfg.eps);
                // addcdiv_(exp_avg, denom, value = −step_size) evaluates (value·exp_avg)/denom.
                let _ = b.copy_(&s.exp_avg);
                let _ = b.g_mul_scalar_(-step_size);
                let _ = s.param.addcdiv_(&b, &a);
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`) for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.to_device(tch::Device::Cpu)));
            out.push((format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.to_device(tch::Device::Cpu)));
        }
        out
    }

    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)], step: u64) -> Result<()> {
        let map: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
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
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (max_norm / (total.double_value(&[]) + 1e-6)).min(1.0);
        let total_f = total.to_kind(Kind::Double).double_value(&[]);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total_f
    })
}

/// L2 norm of the gradients of `params` (0 when none has one): `grad_norm_group/<group>`.
pub fn grad_norm_of(params: &BTreeMap<String, Tensor>) -> f64 {
    tch::no_grad(|| {
        let norms: Vec<Tensor> = params.values().map(|p| p.grad()).filter(|g| g.defined()).map(|g| g.norm()).collect();
        if norms.is_empty() { 0.0 } else { Tensor::stack(&norms, 0).norm().to_kind(Kind::Double).double_value(&[]) }
    })
}
