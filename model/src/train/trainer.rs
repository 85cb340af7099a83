//! The stage-1/2 training loop (../shared/spec/sftok-training.md §5, §6, §9–§11), readable top to
//! bottom: data → (codes) → forward → loss → backward → clip → AdamW → EMA → log → checkpoint.
//!
//! Precision: CPU runs are float32. On CUDA, `training.mixed_precision: fp16` (the reference's
//! setting) runs the forward under libtorch's CUDA autocast (fp16, the only dtype tch can select)
//! with a dynamic loss scale like PyTorch's GradScaler; the quantizer is forced to float32 as in the
//! reference; master weights and the optimiser stay float32. TF32 matmuls are allowed through
//! TORCH_ALLOW_TF32_CUBLAS_OVERRIDE (set by the binary before CUDA starts; tch exposes no switch).
//! bf16 is refused: tch cannot select a bf16 autocast dtype.
//!
//! Randomness: libtorch's generator is reseeded from (seed, micro-step) before every forward, so a
//! resumed run draws exactly the numbers an uninterrupted one would.

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig, clip_grad_norm, cosine_lr};
use super::state::{self, TrainerState};
use super::tensorboard::EventWriter;
use crate::config::{Config, MixedPrecision};
use crate::losses::masked_token_ce;
use crate::multistep_decoder::DecoderInput;
use crate::sftok::{LoadedSFTok, SFTok, SFTokConfig};
use crate::vqgan::MaskgitVqgan;
use anyhow::{Context, Result, bail};
use sftok_pipeline::batch::{Batch, BatchStream};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Warming up: single-step prediction, every proxy slot masked.
    Stage1,
    /// Distribution alignment: self-forcing guided visual reconstruction.
    Stage2,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Stage1 => "stage1",
            Stage::Stage2 => "stage2",
        }
    }
}

/// Builds the data stream, fresh (`None`) or from a saved loader position.
pub type DataFactory = Box<dyn Fn(Option<serde_json::Value>) -> Result<Box<dyn BatchStream>>>;

pub struct TrainOptions {
    pub stage: Stage,
    pub config: Config,
    pub device: Device,
    /// Weights to start from (stage 2: stage 1's EMA weights); overrides `experiment.init_weight`.
    pub init: Option<PathBuf>,
    /// `auto` (newest checkpoint in output_dir, if any), `never`, or a checkpoint directory.
    pub resume: String,
    /// Teacher for on-the-fly proxy codes and for decoding the logged reconstructions.
    pub teacher: Option<Arc<(nn::VarStore, MaskgitVqgan)>>,
    /// Stop after this many non-finite losses in a row.
    pub max_nonfinite_in_a_row: u64,
    /// Set by Ctrl-C: save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct TrainSummary {
    pub global_step: u64,
    pub last_loss: f64,
    pub output_dir: PathBuf,
    pub ema_dir: PathBuf,
    pub interrupted: bool,
}

/// One step's logged values.
struct StepMetrics {
    values: BTreeMap<String, f64>,
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

fn log_line(out: &Path, line: &str) {
    eprintln!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(out.join("log.txt")) {
        let _ = writeln!(f, "{line}");
    }
}

/// Loss of one micro-batch for the stage, plus its metrics.
fn stage_loss(model: &SFTok, stage: Stage, cfg: &Config, x: &Tensor, codes: &Tensor) -> (Tensor, StepMetrics) {
    let out = match stage {
        Stage::Stage1 => model.forward(x, codes, &DecoderInput::MaskAll),
        Stage::Stage2 => {
            let guided = model.generate_guided_mask(x, codes); // no grad, first-step prediction
            model.forward(x, codes, &DecoderInput::Random(Some(&guided)))
        }
    };
    let l = &cfg.losses;
    let rec = masked_token_ce(&out.logits, codes, &out.masks, l.label_smoothing, l.loss_weight_unmasked_token);
    let total = &rec + &out.quant.quantizer_loss * l.quantizer_weight;
    let mut values = BTreeMap::new();
    tch::no_grad(|| {
        let pred = out.logits.argmax(-1, false);
        let masked = out.masks.to_kind(Kind::Float);
        let correct = pred.eq_tensor(codes).to_kind(Kind::Float);
        let acc = (&correct * &masked).sum(Kind::Float) / masked.sum(Kind::Float).clamp_min(1.0);
        let idx = out.quant.min_encoding_indices.flatten(0, -1);
        let k = model.cfg.quantizer.codebook_size;
        let hist = idx.bincount(None::<Tensor>, k).to_kind(Kind::Double);
        let p = &hist / hist.sum(Kind::Double);
        let entropy = -(&p * (&p + 1e-12).log()).sum(Kind::Double);
        let unique = hist.gt(0.0).sum(Kind::Int64).int64_value(&[]) as f64;
        values.insert("train/total_loss".into(), scalar(&total));
        values.insert("train/reconstruction_loss".into(), scalar(&rec));
        values.insert("train/quantizer_loss".into(), scalar(&(&out.quant.quantizer_loss * l.quantizer_weight)));
        values.insert("train/commitment_loss".into(), scalar(&out.quant.commitment_loss));
        values.insert("train/codebook_loss".into(), scalar(&out.quant.codebook_loss));
        values.insert("train/masked_token_accuracy".into(), scalar(&acc));
        values.insert("train/index_unique_ratio".into(), unique / idx.numel() as f64);
        values.insert("train/codebook_perplexity".into(), scalar(&entropy.exp()));
    });
    (total, StepMetrics { values })
}

fn proxy_codes(batch: &Batch, x: &Tensor, teacher: Option<&MaskgitVqgan>, device: Device) -> Result<Tensor> {
    if let Some(c) = crate::handoff::codes(batch, device) {
        return Ok(c);
    }
    match teacher {
        Some(t) => Ok(t.encode(x)),
        None => bail!(
            "the batch has no proxy codes: set dataset.params.train_proxy_codes_path (sftok-prep proxy-codes output) \
             or pass --teacher to compute them on the fly"
        ),
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

/// Saves the EMA weights as a model directory (model.safetensors + config.json).
fn save_ema_dir(ema: &Ema, cfg: &Config, dir: &Path) -> Result<()> {
    LoadedSFTok::save_tensors_dir(ema.shadow.iter().map(|(n, t)| (n.clone(), t.shallow_clone())), cfg, dir)
}

/// Reconstruction strip for TensorBoard: [original | reconstruction | |difference|] per image.
fn reconstruction_grid(model: &SFTok, teacher: &MaskgitVqgan, x: &Tensor, n: i64) -> Result<sftok_pipeline::transform::RgbImage> {
    let x = x.narrow(0, 0, n.min(x.size()[0]));
    let (y, _) = crate::recon::reconstruct(model, Some(teacher), &x)?;
    let diff = (&x - &y).abs();
    let (a, b, c) = (crate::recon::to_images(&x)?, crate::recon::to_images(&y)?, crate::recon::to_images(&diff)?);
    let rows: Vec<Vec<&sftok_pipeline::transform::RgbImage>> = (0..a.len()).map(|i| vec![&a[i], &b[i], &c[i]]).collect();
    Ok(sftok_pipeline::transform::grid(&rows, 2))
}

pub fn train(opts: TrainOptions, data: DataFactory) -> Result<TrainSummary> {
    let cfg = &opts.config;
    let t = &cfg.training;
    let out = PathBuf::from(&cfg.experiment.output_dir);
    std::fs::create_dir_all(&out).with_context(|| format!("creating experiment.output_dir {}", out.display()))?;
    crate::checkpoint::write_atomic(&out.join("config.yaml"), |tmp| Ok(std::fs::write(tmp, cfg.to_yaml())?))?;
    let autocast = match (t.mixed_precision, opts.device) {
        (MixedPrecision::Bf16, Device::Cuda(_)) => bail!(
            "training.mixed_precision=bf16: tch cannot select a bf16 autocast dtype; use fp16 (the reference's setting) or no"
        ),
        (MixedPrecision::Fp16, Device::Cuda(_)) => true,
        _ => false, // CPU: float32
    };

    // Model, initial weights (seeded: construction draws the raw embeddings and the quantizer).
    tch::manual_seed(t.seed as i64);
    let vs = nn::VarStore::new(opts.device);
    let model = SFTok::new(&vs.root(), &SFTokConfig::from_config(cfg)?);
    if model.pixel_decoder.is_some() {
        bail!("model.vq_model.finetune_decoder = True is stage 3; `sftok-train {}` trains stages 1–2", opts.stage.name());
    }
    let resume_from = state::resolve_resume(&out, &opts.resume)?;
    let init = opts.init.clone().or_else(|| (!cfg.experiment.init_weight.is_empty()).then(|| PathBuf::from(&cfg.experiment.init_weight)));
    if resume_from.is_none() {
        SFTok::reference_init(&vs);
        if let Some(init) = &init {
            let mut sd = crate::checkpoint::read(init).context("experiment.init_weight / --init")?;
            sd.apply_aliases(crate::sftok::KEY_ALIASES);
            crate::checkpoint::load_into(&vs, &sd, true).with_context(|| format!("initialising from {}", init.display()))?;
            log_line(&out, &format!("initialised from {}", init.display()));
        }
    }
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let trainable: BTreeMap<String, Tensor> = vars.iter().filter(|(_, v)| v.requires_grad()).map(|(n, v)| (n.clone(), v.shallow_clone())).collect();
    let trainable_list: Vec<Tensor> = trainable.values().map(|t| t.shallow_clone()).collect();
    let p = &cfg.optimizer.params;
    let mut opt = AdamW::new(trainable, AdamWConfig { beta1: p.beta1, beta2: p.beta2, eps: 1e-8, weight_decay: p.weight_decay });
    let mut ema = Ema::new(&vars, 0.999);
    let mut st = TrainerState {
        global_step: 0,
        ema_step: 0,
        micro_step: 0,
        skipped_nonfinite: 0,
        loss_scale: if autocast { 65536.0 } else { 1.0 },
        loss_scale_good_steps: 0,
        loader: serde_json::Value::Null,
        seed: t.seed,
        stage: opts.stage.name().into(),
    };

    // Resume: model, EMA, optimiser, counters, loader position.
    if let Some(ckpt) = &resume_from {
        st = state::read_state(ckpt)?;
        if st.stage != opts.stage.name() {
            bail!("{} is a {} checkpoint; this run is {}", ckpt.display(), st.stage, opts.stage.name());
        }
        crate::checkpoint::load_into(&vs, &crate::checkpoint::read(&ckpt.join("model/model.safetensors"))?, true)?;
        let ema_sd = crate::checkpoint::read(&ckpt.join("ema_model/model.safetensors"))?;
        for (n, t) in &ema_sd.tensors {
            if let Some(s) = ema.shadow.get_mut(n) {
                tch::no_grad(|| s.copy_(t));
            }
        }
        ema.optimization_step = st.ema_step;
        let moments = crate::checkpoint::read(&ckpt.join("optimizer.safetensors"))?;
        opt.load_state_tensors(&moments.tensors, st.global_step)?;
        truncate_jsonl(&out.join("metrics.jsonl"), st.global_step)?;
        log_line(&out, &format!("resumed from {} at step {}", ckpt.display(), st.global_step));
    }
    let (decay_n, no_decay_n) = opt.group_sizes();
    log_line(&out, &format!(
        "{}: {} trainable values ({decay_n} with weight decay, {no_decay_n} without), device {}, {}",
        opts.stage.name(),
        decay_n + no_decay_n,
        crate::device::describe(opts.device),
        if autocast { "fp16 autocast + dynamic loss scale" } else { "float32" }
    ));
    let teacher = opts.teacher.as_ref().map(|t| &t.1);

    let mut stream = data((!st.loader.is_null()).then(|| st.loader.clone()))?;
    let mut tb = EventWriter::create(&out.join("logs"))?;
    let mut jsonl = std::fs::OpenOptions::new().create(true).append(true).open(out.join("metrics.jsonl"))?;
    let accum = t.gradient_accumulation_steps.max(1);
    let started = Instant::now();
    let start_step = st.global_step;
    let mut window = (Instant::now(), 0u64); // images since the last log line
    let mut nonfinite_in_a_row = 0u64;
    let mut last = StepMetrics { values: BTreeMap::new() };
    let mut logged_no_teacher = false;
    let mut interrupted = false;

    while st.global_step < t.max_train_steps {
        if opts.stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let Some(batch) = stream.next_batch()? else {
            log_line(&out, "the data stream ended before training.max_train_steps");
            break;
        };
        let x = crate::handoff::images(&batch, opts.device);
        let codes = proxy_codes(&batch, &x, teacher, opts.device)?;
        let batch_len = batch.len() as u64;
        stream.recycle(batch); // pixels and codes now live in tensors
        tch::manual_seed((st.seed as i64).wrapping_mul(1_000_003).wrapping_add(st.micro_step as i64));
        let (loss, metrics) = if autocast { tch::autocast(true, || stage_loss(&model, opts.stage, cfg, &x, &codes)) } else { stage_loss(&model, opts.stage, cfg, &x, &codes) };
        st.micro_step += 1;
        window.1 += batch_len;
        let loss_value = metrics.values["train/total_loss"];
        if !loss_value.is_finite() {
            st.skipped_nonfinite += 1;
            nonfinite_in_a_row += 1;
            opt.zero_grad();
            log_line(&out, &format!("step {}: non-finite loss ({loss_value}); step skipped ({nonfinite_in_a_row} in a row)", st.global_step + 1));
            if nonfinite_in_a_row >= opts.max_nonfinite_in_a_row {
                bail!(
                    "{nonfinite_in_a_row} non-finite losses in a row at step {}: stopping. The last good checkpoint in {} is untouched; \
                     lower optimizer.params.learning_rate or check the data, then resume",
                    st.global_step + 1,
                    out.display()
                );
            }
            continue;
        }
        nonfinite_in_a_row = 0;
        (loss * (st.loss_scale / accum as f64)).backward();
        if st.micro_step % accum != 0 {
            continue;
        }

        // Optimiser step: unscale, clip, AdamW, EMA.
        if st.loss_scale != 1.0 {
            tch::no_grad(|| {
                for p in &trainable_list {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_div_scalar_(st.loss_scale);
                    }
                }
            });
        }
        let grad_norm = clip_grad_norm(&trainable_list, t.max_grad_norm);
        if !grad_norm.is_finite() {
            // fp16 overflow (GradScaler semantics): halve the scale, skip the update.
            st.loss_scale = (st.loss_scale * 0.5).max(1.0);
            st.loss_scale_good_steps = 0;
            opt.zero_grad();
            log_line(&out, &format!("step {}: non-finite gradient norm; update skipped, loss scale {}", st.global_step + 1, st.loss_scale));
            continue;
        }
        if autocast {
            st.loss_scale_good_steps += 1;
            if st.loss_scale_good_steps % 2000 == 0 {
                st.loss_scale *= 2.0;
            }
        }
        let lr = cosine_lr(st.global_step, cfg.lr_scheduler.params.learning_rate, cfg.lr_scheduler.params.end_lr, cfg.lr_scheduler.params.warmup_steps, t.max_train_steps);
        opt.step(lr);
        opt.zero_grad();
        ema.update(&vars);
        st.global_step += 1;
        st.ema_step = ema.optimization_step;

        // Logging.
        let step = st.global_step;
        let mut values = metrics.values;
        values.insert("lr".into(), lr);
        values.insert("grad_norm".into(), grad_norm);
        let elapsed = window.0.elapsed().as_secs_f64().max(1e-9);
        values.insert("samples/sec".into(), window.1 as f64 / elapsed);
        for (k, v) in &values {
            tb.scalar(k, step as i64, *v as f32)?;
        }
        let mut row = serde_json::Map::new();
        row.insert("step".into(), step.into());
        for (k, v) in &values {
            row.insert(k.clone(), serde_json::json!(v));
        }
        writeln!(jsonl, "{}", serde_json::Value::Object(row))?;
        if step % cfg.experiment.log_every.max(1) == 0 || step == t.max_train_steps || step == start_step + 1 {
            let rate = (step - start_step) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let eta = (t.max_train_steps - step) as f64 / rate.max(1e-9);
            log_line(&out, &format!(
                "step {step}/{} | loss {:.4} | rec {:.4} | q {:.4} | acc {:.3} | lr {lr:.2e} | gnorm {grad_norm:.3} | {:.1} img/s | ETA {}",
                t.max_train_steps,
                values["train/total_loss"],
                values["train/reconstruction_loss"],
                values["train/quantizer_loss"],
                values["train/masked_token_accuracy"],
                values["samples/sec"],
                format_eta(eta)
            ));
            tb.flush()?;
            jsonl.flush()?;
        }
        window = (Instant::now(), 0);
        if cfg.experiment.generate_every > 0 && step % cfg.experiment.generate_every == 0 {
            match teacher {
                Some(teacher) => {
                    let backup: BTreeMap<String, Tensor> = vars.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
                    copy_into(&vars, &ema.shadow); // EMA weights for the preview, as the reference
                    let grid = reconstruction_grid(&model, teacher, &x, t.num_generated_images as i64);
                    copy_into(&vars, &backup);
                    let grid = grid?;
                    let png = sftok_pipeline::transform::encode_png(&grid)?;
                    tb.image("Train Reconstruction", step as i64, &png, grid.width, grid.height)?;
                    let dir = out.join("train_images");
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(dir.join(format!("{step:08}.png")), &png)?;
                }
                None if !logged_no_teacher => {
                    logged_no_teacher = true;
                    log_line(&out, "no --teacher: reconstruction previews are skipped (proxy codes need the teacher's decoder)");
                }
                None => {}
            }
        }
        last.values = values;
        if step % cfg.experiment.save_every.max(1) == 0 || step == t.max_train_steps {
            st.loader = stream.state();
            save(&out, &vs, &ema, &opt, &st, cfg)?;
            if let Ok(p) = std::env::var("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT")
                && p.parse::<u64>().ok() == Some(step)
            {
                // Test hook: wait here so a test can kill -9 a run right after a checkpoint.
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }
    if interrupted && st.global_step > 0 {
        st.loader = stream.state();
        save(&out, &vs, &ema, &opt, &st, cfg)?;
        log_line(&out, &format!("interrupted: checkpoint saved at step {}; continue with --resume auto", st.global_step));
    }
    tb.flush()?;
    let ema_dir = out.join("ema_model");
    save_ema_dir(&ema, cfg, &ema_dir)?;
    use super::plot::{Panel, plot_metrics};
    let panels = [
        Panel::new("losses", &["train/total_loss", "train/reconstruction_loss", "train/quantizer_loss"]),
        Panel::new("learning rate", &["lr"]),
        Panel::new("gradient norm", &["grad_norm"]),
    ];
    if let Err(e) = plot_metrics(&out.join("metrics.jsonl"), &panels, &out.join("loss.png")) {
        log_line(&out, &format!("loss plot not written: {e:#}"));
    }
    Ok(TrainSummary {
        global_step: st.global_step,
        last_loss: last.values.get("train/total_loss").copied().unwrap_or(f64::NAN),
        output_dir: out,
        ema_dir,
        interrupted,
    })
}

fn save(out: &Path, vs: &nn::VarStore, ema: &Ema, opt: &AdamW, st: &TrainerState, cfg: &Config) -> Result<()> {
    let dir = state::save_checkpoint(out, st.global_step, cfg.experiment.keep_last_checkpoints, |tmp| {
        LoadedSFTok::save_dir(vs, cfg, &tmp.join("model"))?;
        save_ema_dir(ema, cfg, &tmp.join("ema_model"))?;
        crate::checkpoint::save_tensors(opt.state_tensors(), &tmp.join("optimizer.safetensors"))?;
        state::write_state(tmp, st)
    })?;
    log_line(out, &format!("checkpoint {}", dir.display()));
    Ok(())
}

/// Drops metric rows after `step` (a resumed run rewrites them).
fn truncate_jsonl(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::checkpoint::write_atomic(path, |tmp| Ok(std::fs::write(tmp, kept)?))
}

fn format_eta(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, (s % 3600) / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}
