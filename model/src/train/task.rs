//! What a training job supplies to the generic loop ([`super::fit::fit`]): its model and parameter
//! groups, one step on a micro-batch, and the job-specific parts of logging, previews, evaluation
//! and checkpoints. Stage 1 and stage 2 are implementations (`stage1.rs`, `stage2.rs` over
//! `token_task.rs`); stage 3 (a discriminator with its own optimiser) and the MaskGIT generator
//! (tokens + class labels) are new files implementing the same trait.

use super::plot::Panel;
use crate::autocast::AutocastDtype;
use crate::config::MixedPrecision;
use crate::dist::Dist;
use anyhow::Result;
use sftok_pipeline::batch::Batch;
use sftok_pipeline::transform::RgbImage;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Tensor, nn};

pub use super::optim::ParamGroup;

/// Named scalar metrics of a step or an evaluation (`train/total_loss`, `ema_eval/PSNR`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// One micro-batch's result: the loss to back-propagate and what to log.
pub struct StepOutput {
    /// Scalar with its graph (not yet divided by the accumulation steps or scaled).
    pub loss: Tensor,
    /// Detached values, logged for the last micro-batch of every optimiser step.
    pub metrics: Metrics,
}

/// A preview for TensorBoard (`Train Reconstruction`) and `train_images/`, or why there is none.
pub enum Preview {
    Image(RgbImage),
    /// Logged once per run.
    Unavailable(String),
}

/// The floating-point regime of a run (../shared/spec/sftok-training.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Float32,
    /// CUDA fp16 autocast with a dynamic loss scale (PyTorch GradScaler semantics).
    Fp16Autocast,
    /// bf16 autocast (CUDA or CPU) with fp32 master weights and no loss scale.
    Bf16Autocast,
}

impl Precision {
    /// `training.mixed_precision` on `device`: bf16 autocasts on CUDA and on the CPU (libtorch
    /// has CPU autocast in bf16); fp16 autocasts on CUDA only (CPU fp16 runs are float32).
    pub fn resolve(mixed: MixedPrecision, device: Device) -> Result<Precision> {
        Ok(match (mixed, device) {
            (MixedPrecision::Bf16, _) => Precision::Bf16Autocast,
            (MixedPrecision::Fp16, Device::Cuda(_)) => Precision::Fp16Autocast,
            _ => Precision::Float32,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Fp16Autocast => "fp16 autocast + dynamic loss scale",
            Precision::Bf16Autocast => "bf16 autocast (fp32 master weights, no loss scale)",
        }
    }
}

/// What a step may need to know about the run.
pub struct StepContext {
    pub device: Device,
    pub precision: Precision,
    /// Optimiser steps taken so far.
    pub global_step: u64,
    /// Micro-batches consumed before this one.
    pub micro_step: u64,
    /// The data-parallel job (None: one process).
    pub dist: Option<Arc<Dist>>,
}

impl StepContext {
    /// Runs `f` under the run's autocast. Tasks wrap their forward in it and keep out what the
    /// spec keeps in float32 (the teacher's proxy codes, the quantizer, pixel losses).
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.precision {
            Precision::Fp16Autocast => crate::autocast::autocast(self.device, AutocastDtype::Float16, f),
            Precision::Bf16Autocast => crate::autocast::autocast(self.device, AutocastDtype::BFloat16, f),
            Precision::Float32 => f(),
        }
    }

    /// Averages the gradients of `params` over the data-parallel ranks (nothing for one process):
    /// a task's own optimiser (stage 3's discriminator) calls it before clipping.
    pub fn average_gradients(&self, params: &[Tensor]) -> Result<()> {
        match &self.dist {
            Some(d) => d.average_gradients(params, self.global_step),
            None => Ok(()),
        }
    }
}

pub trait Task {
    /// `stage1`, `stage2`, ...: in logs and `trainer_state.json` (a checkpoint of another task is
    /// refused on resume).
    fn name(&self) -> &'static str;

    /// The trained model's variables (parameters and buffers): EMA, checkpoints, resume.
    fn var_store(&self) -> &nn::VarStore;

    /// The main optimiser's groups over the trainable parameters. Frozen parameters are in none
    /// and must not require grad.
    fn param_groups(&self) -> Vec<ParamGroup>;

    /// A fresh run (not a resume): the reference's initialisation and any starting weights.
    fn init_fresh(&mut self, log: &mut dyn FnMut(&str)) -> Result<()>;

    /// One micro-batch: forward (under `ctx.autocast` where the spec allows) and loss. The loop has
    /// seeded libtorch's generator from (seed, micro-step) just before.
    fn step(&mut self, batch: &Batch, ctx: &StepContext) -> Result<StepOutput>;

    /// Runs after every micro-batch's backward and, on the last micro-batch of an accumulation
    /// window (`sync`), after the main optimiser step: stage 3's discriminator update.
    fn after_micro_step(&mut self, _ctx: &StepContext, _sync: bool) -> Result<Metrics> {
        Ok(Metrics::new())
    }

    /// Variables outside [`Task::var_store`] that every data-parallel rank must hold alike (stage
    /// 3's discriminator): broadcast from rank 0 at the start, like the model's.
    fn extra_vars(&self) -> BTreeMap<String, Tensor> {
        BTreeMap::new()
    }

    /// Extra checkpoint state (a second optimiser, buffers) written into the checkpoint directory.
    fn save_extra(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Restores what [`Task::save_extra`] wrote.
    fn load_extra(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// A preview of the last micro-batch with the current weights (the loop swaps in the EMA).
    fn preview(&mut self, n: usize) -> Result<Preview>;

    /// The preview's TensorBoard tag (the reference's image key).
    fn preview_tag(&self) -> &'static str {
        "Train Reconstruction"
    }

    /// Periodic evaluation with the current weights (the loop swaps in the EMA): `ema_eval/*`.
    fn evaluate(&mut self) -> Result<Metrics> {
        Ok(Metrics::new())
    }

    /// The task's part of the console line (`loss 1.2345 | rec 1.2000 | ...`).
    fn console_summary(&self, metrics: &Metrics) -> String;

    /// The task's panels of `loss.png`; the loop adds learning rate, gradient norms and throughput.
    fn metric_panels(&self) -> Vec<Panel>;

    /// Writes a weights directory (the reference's layout) from named tensors: `model/`,
    /// `ema_model/` of checkpoints and the final export.
    fn save_weights(&self, tensors: Vec<(String, Tensor)>, dir: &Path) -> Result<()>;
}
