//! Stage 3, fine-tuning (../shared/spec/sftok-training.md §6b, §7.3, §7.4, §8, §9): the encoder,
//! `latent_tokens` and the quantizer are frozen; the decoder, `pixel_quantize` and `pixel_decoder`
//! learn to reconstruct pixels through the soft-code path. The main optimiser (the loop's) takes
//! the generator loss; a second AdamW with its own schedule trains the discriminator on every
//! micro-batch from `losses.discriminator_start` on ([`Task::after_micro_step`]).
//!
//! Hand-off (§8): the stage-2 EMA weights + the teacher's `decoder.*` and
//! `quantize.embedding.weight` renamed to `pixel_decoder.*` / `pixel_quantize.embedding.weight`
//! ([`stage3_handoff`]); the loop builds the EMA after this initialisation.
//!
//! Checkpoint state beyond the loop's (the reference's accelerate layout, §11.1):
//! `model_1.safetensors` (the loss module: discriminator parameters and buffers, LeCam EMA),
//! `optimizer_1.safetensors` (the discriminator's AdamW moments), `scheduler_1.json` (its step count).

use super::optim::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm, reference_param_groups, trainable_param_groups};
use super::plot::Panel;
use super::task::{Metrics, ParamGroup, Precision, Preview, StepContext, StepOutput, Task};
use super::token_task::{EvalSetup, evaluate_val, reconstruction_grid, require_flag};
use crate::checkpoint::StateDict;
use crate::config::Config;
use crate::sftok::{ForwardOutput, SFTok, SFTokConfig};
use crate::stage3_loss::{FrozenNets, Stage3Loss};
use crate::vqgan::MaskgitVqgan;
use anyhow::{Context, Result, bail};
use sftok_pipeline::batch::Batch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

pub const NAME: &str = "stage3";

/// Prefixes of the parameters stage 3 freezes (§6b).
const FROZEN_PREFIXES: &[&str] = &["encoder.", "latent_tokens", "quantize."];

pub struct Stage3Options {
    pub config: Config,
    pub device: Device,
    /// The stage-2 EMA weights (`experiment.init_weight` when None).
    pub init: Option<PathBuf>,
    /// The MaskGIT-VQGAN whose decoder and codebook initialise the pixel modules.
    pub teacher: Option<(nn::VarStore, MaskgitVqgan)>,
    pub frozen: FrozenNets,
    pub eval: Option<EvalSetup>,
}

/// What the discriminator step needs from the micro-batch's generator step.
struct Pending {
    x: Tensor,
    x_hat: Tensor,
    /// The optimiser steps taken when the micro-batch ran (the reference's `global_step` there).
    global_step: u64,
}

pub struct Stage3Task {
    cfg: Config,
    vs: nn::VarStore,
    model: SFTok,
    init: Option<PathBuf>,
    teacher: Option<(nn::VarStore, MaskgitVqgan)>,
    eval: Option<EvalSetup>,
    loss_vs: nn::VarStore,
    loss: Stage3Loss,
    d_opt: AdamW,
    d_schedule: LrSchedule,
    /// Discriminator optimiser steps taken (its schedule's counter).
    d_steps: u64,
    pending: Option<Pending>,
    last_images: Option<Tensor>,
}

/// Refuses configs that are not stage 3, naming the key.
pub fn check_config(cfg: &Config) -> Result<()> {
    let t = &cfg.training;
    if !cfg.model.vq_model.finetune_decoder {
        bail!("model.vq_model.finetune_decoder = False, but `sftok-train stage3` fine-tunes the pixel decoder: set it True (configs/sftok_b64_stage3.yaml)");
    }
    require_flag(t.single_step_generation, false, "training.single_step_generation", NAME, "masks a random share of the tokens")?;
    require_flag(t.guided_mask, true, "training.guided_mask", NAME, "feeds the model's own first-step prediction at every visible position (there are no proxy codes in stage 3)")?;
    if !cfg.dataset.params.train_proxy_codes_path.is_empty() {
        bail!("dataset.params.train_proxy_codes_path is set, but stage 3 trains on pixels and reads no proxy codes: set it to \"\"");
    }
    if t.use_soft_proxycodes {
        bail!("training.use_soft_proxycodes = True is inert in the reference and not implemented; set it False");
    }
    Ok(())
}

/// The stage-2 → stage-3 hand-off (§8): every teacher key without `encoder.` gets the prefix
/// `pixel_`, merged with the stage-2 state dict. Fails on a collision.
pub fn stage3_handoff(stage2: StateDict, teacher: &StateDict) -> Result<StateDict> {
    let mut tensors = stage2.tensors;
    let have: std::collections::HashSet<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    for (name, t) in &teacher.tensors {
        if name.contains("encoder.") {
            continue;
        }
        let renamed = format!("pixel_{name}");
        if have.contains(&renamed) {
            bail!("stage-3 hand-off: {renamed} is both in the stage-2 weights and renamed from the teacher's {name}: is --init a stage-3 checkpoint?");
        }
        tensors.push((renamed, t.shallow_clone()));
    }
    Ok(StateDict { tensors })
}

/// Stage 3's freezing (§6b): the encoder, `latent_tokens` and the quantizer get no gradient (and
/// so are in no optimiser group). Returns the frozen names, sorted.
pub fn freeze(vs: &nn::VarStore) -> Vec<String> {
    let mut frozen: Vec<String> = Vec::new();
    for (name, t) in vs.variables() {
        if FROZEN_PREFIXES.iter().any(|p| name.starts_with(p)) {
            let _ = t.shallow_clone().set_requires_grad(false);
            frozen.push(name);
        }
    }
    frozen.sort();
    frozen
}

/// The main pass of §6b: the no-grad all-masked guidance pass (float32, as in the reference), then
/// the decoder with [MASK] at a random arccos share of the positions and the guidance argmax at
/// all others, and the soft path to pixels. No proxy codes are materialised (spec §13 item 20):
/// the decoder reads only their shape.
pub fn stage3_forward(model: &SFTok, x: &Tensor) -> ForwardOutput {
    let b = x.size()[0];
    let shape_only = Tensor::zeros([b, model.cfg.decoder.num_proxy_codes], (Kind::Int64, x.device()));
    model.forward_self_forcing(x, &shape_only)
}

impl Stage3Task {
    pub fn new(o: Stage3Options) -> Result<Stage3Task> {
        let cfg = o.config;
        check_config(&cfg)?;
        let precision = Precision::resolve(cfg.training.mixed_precision, o.device)?;
        if cfg.losses.reference_discriminator_grad_leak && precision == Precision::Fp16Autocast {
            bail!(
                "losses.reference_discriminator_grad_leak = True cannot be reproduced under fp16 autocast \
                 (the leaked gradient would carry the loss scale): set training.mixed_precision=no or bf16, or the leak False"
            );
        }
        tch::manual_seed(cfg.training.seed as i64);
        let vs = nn::VarStore::new(o.device);
        let model = SFTok::new(&vs.root(), &SFTokConfig::from_config(&cfg)?);
        crate::conv_layout::prefer_channels_last(&vs, "pixel_decoder.")?;
        freeze(&vs);
        let loss_vs = nn::VarStore::new(o.device);
        let loss = Stage3Loss::new(&loss_vs, &cfg.losses, o.frozen)?;
        let d_named = loss.trainable().iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let d_groups = reference_param_groups(d_named, cfg.optimizer.params.weight_decay);
        let p = &cfg.optimizer.params;
        let d_opt = AdamW::new(&d_groups, AdamWConfig { beta1: p.beta1, beta2: p.beta2, eps: 1e-8 });
        // The discriminator's schedule counts its own steps from `discriminator_start` (§9). Its
        // base is `discriminator_learning_rate` (the reference takes the generator's; every
        // shipped config sets both to 1e-4).
        let mut d_schedule = LrSchedule::from_config(&cfg)?;
        d_schedule.base = p.discriminator_learning_rate;
        d_schedule.max_steps = cfg.training.max_train_steps.saturating_sub(cfg.losses.discriminator_start);
        let init = o.init.or_else(|| cfg.experiment.init_weight_path());
        Ok(Stage3Task {
            cfg,
            vs,
            model,
            init,
            teacher: o.teacher,
            eval: o.eval,
            loss_vs,
            loss,
            d_opt,
            d_schedule,
            d_steps: 0,
            pending: None,
            last_images: None,
        })
    }

    /// The discriminator's trainable parameters (its optimiser's), by name.
    pub fn discriminator_parameters(&self) -> &BTreeMap<String, Tensor> {
        self.loss.trainable()
    }

    fn accumulation(&self) -> f64 {
        self.cfg.training.gradient_accumulation_steps.max(1) as f64
    }
}

impl Task for Stage3Task {
    fn name(&self) -> &'static str {
        NAME
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        trainable_param_groups(&self.vs, self.cfg.optimizer.params.weight_decay)
    }

    fn init_fresh(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        SFTok::reference_init(&self.vs);
        let Some(init) = &self.init else {
            log("warning: no --init / experiment.init_weight: stage 3 starts from a random tokenizer (the reference starts from stage 2's EMA weights)");
            return Ok(());
        };
        let mut sd = crate::checkpoint::read(init).context("experiment.init_weight / --init (stage 2's ema_model)")?;
        sd.apply_aliases(crate::sftok::KEY_ALIASES);
        match self.teacher.take() {
            Some((tvs, _)) => {
                let teacher = StateDict { tensors: tvs.variables().into_iter().collect() };
                let merged = stage3_handoff(sd, &teacher)?;
                crate::checkpoint::load_into(&self.vs, &merged, true)
                    .with_context(|| format!("stage-3 hand-off: {} + the teacher's decoder and codebook", init.display()))?;
                log(&format!("initialised from {} + the teacher's decoder/codebook as pixel_decoder/pixel_quantize", init.display()));
            }
            None => {
                // Strict but for the pixel modules, which only the teacher (or a stage-3 file) has.
                let unexpected = crate::checkpoint::load_into(&self.vs, &sd, false).with_context(|| format!("initialising from {}", init.display()))?;
                if !unexpected.is_empty() {
                    bail!("{} has {} tensors a stage-3 model does not have (first: {})", init.display(), unexpected.len(), unexpected[0]);
                }
                let mut missing: Vec<String> =
                    self.vs.variables().into_keys().filter(|n| !n.starts_with("pixel_") && sd.get(n).is_none()).collect();
                if !missing.is_empty() {
                    missing.sort();
                    bail!("{} lacks {} tensors of the model (first: {}): is it stage 2's ema_model of this config?", init.display(), missing.len(), missing[0]);
                }
                let has_pixel = sd.names().any(|n| n.starts_with("pixel_"));
                log(&format!(
                    "initialised from {}{}",
                    init.display(),
                    if has_pixel { "" } else { "; warning: no --teacher, so pixel_decoder/pixel_quantize start RANDOM (the reference starts them from MaskGIT's)" }
                ));
            }
        }
        Ok(())
    }

    fn step(&mut self, batch: &Batch, ctx: &StepContext) -> Result<StepOutput> {
        let x = crate::handoff::images(batch, ctx.device);
        let out = ctx.autocast(|| stage3_forward(&self.model, &x));
        let x_hat = out.decoded_img.as_ref().expect("finetune_decoder models decode pixels");
        let (loss, mut metrics) = self.loss.generator_loss(&x, x_hat, &out.quant, ctx.global_step);
        let idx = out.quant.min_encoding_indices.flatten(0, -1);
        let unique = idx.bincount(None::<Tensor>, self.model.cfg.quantizer.codebook_size).gt(0.0).sum(Kind::Int64).int64_value(&[]);
        metrics.insert("train/index_unique_ratio".into(), unique as f64 / idx.numel() as f64);
        metrics.insert("train/latent_spread".into(), out.quant.latent_spread());
        self.pending = Some(Pending { x: x.shallow_clone(), x_hat: x_hat.detach(), global_step: ctx.global_step });
        self.last_images = Some(x);
        Ok(StepOutput { loss, metrics })
    }

    /// The discriminator: loss and backward on every micro-batch from `discriminator_start`, its
    /// own clipping and AdamW step on the window's last one.
    fn after_micro_step(&mut self, ctx: &StepContext, sync: bool) -> Result<Metrics> {
        let Some(p) = self.pending.take() else { return Ok(Metrics::new()) };
        if !self.loss.trains_discriminator(p.global_step) {
            return Ok(Metrics::new());
        }
        let (d_loss, mut metrics) = self.loss.discriminator_loss(&p.x, &p.x_hat, p.global_step);
        (d_loss / self.accumulation()).backward();
        if sync {
            let params: Vec<Tensor> = self.loss.trainable().values().map(|t| t.shallow_clone()).collect();
            ctx.average_gradients(&params)?;
            let norm = clip_grad_norm(&params, self.cfg.training.max_grad_norm);
            if norm.is_finite() {
                let lr = self.d_schedule.lr(self.d_steps);
                self.d_opt.step(lr)?;
                self.d_steps += 1;
                metrics.insert("lr/discriminator".into(), lr);
            }
            metrics.insert("grad_norm/discriminator".into(), norm);
            self.d_opt.zero_grad();
            // The LeCam EMAs follow each rank's own logits: rank 0's win, as DDP's
            // broadcast_buffers does for the reference's loss module.
            if let Some(d) = &ctx.dist {
                let trainable = self.loss.trainable();
                let buffers = self.loss_vs.variables().into_iter().filter(|(n, _)| !trainable.contains_key(n)).collect();
                d.broadcast_named(&buffers)?;
            }
        }
        Ok(metrics)
    }

    fn extra_vars(&self) -> BTreeMap<String, Tensor> {
        self.loss_vs.variables().into_iter().collect()
    }

    fn save_extra(&self, dir: &Path) -> Result<()> {
        crate::checkpoint::save_tensors(self.loss_vs.variables(), &dir.join("model_1.safetensors"))?;
        crate::checkpoint::save_tensors(self.d_opt.state_tensors(), &dir.join("optimizer_1.safetensors"))?;
        let sched = serde_json::json!({ "discriminator_steps": self.d_steps });
        sftok_pipeline::fsutil::write_atomic(&dir.join("scheduler_1.json"), serde_json::to_string_pretty(&sched)?.as_bytes())
    }

    fn load_extra(&mut self, dir: &Path) -> Result<()> {
        let need = |f: &str| -> Result<PathBuf> {
            let p = dir.join(f);
            if !p.is_file() {
                bail!("{} has no {f}: not a stage-3 checkpoint of sftok", dir.display());
            }
            Ok(p)
        };
        crate::checkpoint::load_into(&self.loss_vs, &crate::checkpoint::read(&need("model_1.safetensors")?)?, true)
            .context("restoring the discriminator and LeCam state (model_1.safetensors)")?;
        let sched: serde_json::Value = serde_json::from_slice(&std::fs::read(need("scheduler_1.json")?)?)?;
        self.d_steps = sched["discriminator_steps"].as_u64().context("scheduler_1.json: discriminator_steps")?;
        let moments = crate::checkpoint::read(&need("optimizer_1.safetensors")?)?;
        self.d_opt.load_state_tensors(&moments.tensors, self.d_steps)
    }

    fn preview(&mut self, n: usize) -> Result<Preview> {
        let Some(x) = &self.last_images else { return Ok(Preview::Unavailable("no batch yet".into())) };
        Ok(Preview::Image(reconstruction_grid(&self.model, None, x, n as i64)?))
    }

    fn evaluate(&mut self) -> Result<Metrics> {
        let Some(eval) = &self.eval else { return Ok(Metrics::new()) };
        evaluate_val(&self.model, None, eval, &self.cfg)
    }

    fn console_summary(&self, m: &Metrics) -> String {
        let mut s = format!(
            "loss {:.4} | mse {:.4} | lpips {:.4} | gan {:.4}",
            m["train/total_loss"], m["train/reconstruction_loss"], m["train/perceptual_loss"], m["train/weighted_gan_loss"]
        );
        if let Some(d) = m.get("train/discriminator_loss") {
            s.push_str(&format!(" | d {d:.4} | real {:.3} fake {:.3}", m["train/logits_real"], m["train/logits_fake"]));
        }
        s
    }

    fn metric_panels(&self) -> Vec<Panel> {
        vec![
            Panel::new("generator losses", &["train/total_loss", "train/reconstruction_loss", "train/perceptual_loss", "train/weighted_gan_loss"]),
            Panel::new("discriminator losses", &["train/discriminator_loss", "train/lecam_loss"]),
            Panel::new("discriminator logits (mean)", &["train/logits_real", "train/logits_fake"]),
            Panel::new("quantizer terms (frozen: constant)", &["train/quantizer_loss", "train/commitment_loss", "train/codebook_loss"]),
            Panel::new("encoder output spread across images (frozen; ~0: collapsed)", &["train/latent_spread"]),
            Panel::new("discriminator: learning rate", &["lr/discriminator"]),
            Panel::new("discriminator: gradient norm", &["grad_norm/discriminator"]),
            Panel::new("EMA eval: PSNR (dB)", &["ema_eval/PSNR"]),
            Panel::new("EMA eval: rFID", &["ema_eval/rFID"]),
        ]
    }

    fn save_weights(&self, tensors: Vec<(String, Tensor)>, dir: &Path) -> Result<()> {
        crate::checkpoint::save_weights_dir(tensors, &self.cfg, dir)
    }
}
