//! The generic training loop, readable top to bottom: batch → (seeded) task step → backward →
//! every `gradient_accumulation_steps` micro-batches: unscale, clip, AdamW, EMA → the task's extra
//! update → log, preview, evaluate, checkpoint. It knows nothing about SFTok: everything specific
//! to a job comes through [`Task`]. ../shared/spec/sftok-training.md §9–§11 for the semantics.
//!
//! Randomness: libtorch's generator is reseeded from (seed, micro-step) before every step, so a
//! resumed run draws exactly the numbers an uninterrupted one would.
//!
//! Data parallelism (`opts.dist`): parameters and buffers start as rank 0's; gradients are averaged
//! over the ranks once per optimiser step; every micro-step the ranks agree on the loss (logged
//! and checked for NaN as the mean), on stopping and on the end of the data; logged scalars are
//! rank means; rank 0 alone writes (logs, previews, evaluation, checkpoints with every rank's
//! loader position), behind a barrier. Rank r draws from seed + r (the reference's per-process seed).
//!
//! Precision: see [`Precision`]. Master weights and the optimiser stay float32; with fp16 the loss
//! is scaled dynamically (halved and the update skipped on overflow, doubled every 2000 good steps).

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm, grad_norm_of};
use super::plot::Panel;
use super::run_log::RunLog;
use sftok_pipeline::progress::format_eta;
use super::state::{self, TrainerState};
use super::task::{Metrics, Precision, Preview, StepContext, Task};
use crate::config::Config;
use crate::dist::Dist;
use anyhow::{Context, Result, bail};
use sftok_pipeline::batch::BatchStream;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Builds the data stream, fresh (`None`) or from a saved loader position.
pub type DataFactory = Box<dyn Fn(Option<serde_json::Value>) -> Result<Box<dyn BatchStream>>>;

/// GradScaler's defaults: initial scale 2^16, growth every 2000 steps without overflow.
const INITIAL_LOSS_SCALE: f64 = 65536.0;
const LOSS_SCALE_GROWTH_INTERVAL: u64 = 2000;
/// The reference's EMA decay (§10).
const EMA_DECAY: f64 = 0.999;

pub struct FitOptions {
    /// The loop reads `experiment.*`, `training.*`, `optimizer.params.beta*` and `lr_scheduler.*`.
    pub config: Config,
    pub device: Device,
    /// `auto` (newest checkpoint in output_dir, if any), `never`, or a checkpoint directory; None
    /// follows `experiment.resume` (True → auto, the reference's behaviour; False → never).
    pub resume: Option<String>,
    /// Stop after this many non-finite losses in a row.
    pub max_nonfinite_in_a_row: u64,
    /// Set by Ctrl-C: save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
    /// The data-parallel job this process is a rank of (None: one process).
    pub dist: Option<Arc<Dist>>,
}

#[derive(Debug)]
pub struct FitSummary {
    pub global_step: u64,
    pub last_loss: f64,
    pub output_dir: PathBuf,
    /// The weights for evaluation and the next stage: `ema_model/` (or `model/` when
    /// `training.use_ema` is false).
    pub weights_dir: PathBuf,
    pub interrupted: bool,
    /// This process's data-parallel rank (0 for one process): only rank 0 wrote anything.
    pub rank: usize,
}

/// What one optimiser step reports.
struct Update {
    lr: f64,
    grad_norm: f64,
    /// Every `experiment.log_grad_norm_every` steps.
    grad_norms: Option<GradNorms>,
}

struct GradNorms {
    /// `grad_norm_group/<group>`: L2 norm of the group's clipped gradients.
    groups: Metrics,
    /// The reference's `grad_norm/<parameter>` = ‖grad‖₂ / numel (TensorBoard only: hundreds of keys).
    parameters: Metrics,
}

pub fn fit(task: &mut impl Task, opts: FitOptions, data: DataFactory) -> Result<FitSummary> {
    let cfg = &opts.config;
    let (t, x) = (&cfg.training, &cfg.experiment);
    let out = PathBuf::from(&x.output_dir);
    // Refusals first: a bad config writes nothing.
    if t.enable_wandb {
        bail!("training.enable_wandb = True: sftok logs to TensorBoard (output_dir/logs) and metrics.jsonl, not wandb; set training.enable_wandb=False");
    }
    let precision = Precision::resolve(t.mixed_precision, opts.device)?;
    let schedule = LrSchedule::from_config(cfg)?;
    let dist = opts.dist.clone();
    let (rank, world_size) = dist.as_ref().map_or((0, 1), |d| (d.rank, d.world_size));
    let main = rank == 0;
    if main {
        std::fs::create_dir_all(&out).with_context(|| format!("creating experiment.output_dir {}", out.display()))?;
        sftok_pipeline::fsutil::write_atomic(&out.join("config.yaml"), cfg.to_yaml().as_bytes())?;
    }

    // Model state: fresh or resumed. The EMA starts from the weights after initialisation.
    let resume = opts.resume.clone().unwrap_or_else(|| if x.resume { "auto".into() } else { "never".into() });
    let resume_from = state::resolve_resume(&out, &resume)?;
    let resumed_state = resume_from.as_deref().map(state::read_state).transpose()?;
    if let Some(d) = &dist {
        let step = resumed_state.as_ref().map_or(-1.0, |s| s.global_step as f64);
        if !d.all_equal(step, "agreeing on the checkpoint to resume from")? {
            bail!(
                "rank {rank}: the ranks disagree about the checkpoint to resume from (this rank: {}): experiment.output_dir {} must be \
                 one directory every rank sees (a shared file system), or pass the same --resume everywhere",
                resume_from.as_ref().map_or("none".into(), |p| p.display().to_string()),
                out.display()
            );
        }
    }
    if let (Some(ckpt), Some(saved)) = (&resume_from, &resumed_state)
        && saved.world_size != world_size
    {
        bail!(
            "{} was written by a {}-process run and this run has {world_size}: the data order of a resume depends on it. \
             Resume with {} processes (torchrun --nproc_per_node {}), or start afresh in another experiment.output_dir",
            ckpt.display(),
            saved.world_size,
            saved.world_size,
            saved.world_size
        );
    }
    let mut log = if main { RunLog::open(&out, resumed_state.as_ref().map(|s| s.global_step))? } else { RunLog::silent(&out) };
    if resume_from.is_none() {
        task.init_fresh(&mut |line| log.line(line))?;
    }
    let vars: BTreeMap<String, Tensor> = task.var_store().variables().into_iter().collect();
    if let Some(d) = &dist {
        // Every rank starts from rank 0's weights (a resume reads the same files everywhere anyway).
        d.broadcast_named(&vars)?;
        d.broadcast_named(&task.extra_vars())?;
    }
    let groups = task.param_groups();
    // Sorted by name: the clipping norm sums in a fixed order.
    let trainable: Vec<Tensor> =
        groups.iter().flat_map(|g| g.params.iter()).collect::<BTreeMap<_, _>>().into_values().map(|p| p.shallow_clone()).collect();
    let p = &cfg.optimizer.params;
    let mut opt = AdamW::new(&groups, AdamWConfig { beta1: p.beta1, beta2: p.beta2, eps: 1e-8 });
    let mut ema = t.use_ema.then(|| Ema::new(&vars, EMA_DECAY));
    let mut st = TrainerState {
        global_step: 0,
        ema_step: 0,
        micro_step: 0,
        skipped_nonfinite: 0,
        loss_scale: if precision == Precision::Fp16Autocast { INITIAL_LOSS_SCALE } else { 1.0 },
        loss_scale_good_steps: 0,
        loader: serde_json::Value::Null,
        world_size,
        rank_loaders: Vec::new(),
        seed: t.seed,
        stage: task.name().into(),
    };
    if let (Some(ckpt), Some(saved)) = (&resume_from, resumed_state) {
        st = restore(ckpt, saved, task, ema.as_mut(), &mut opt)?;
        log.line(&format!("resumed from {} at step {}", ckpt.display(), st.global_step));
    }
    let n_values = |decay: bool| groups.iter().filter(|g| (g.weight_decay > 0.0) == decay).flat_map(|g| g.params.values()).map(|p| p.numel()).sum::<usize>();
    log.line(&format!(
        "{}: {} trainable values ({} with weight decay, {} without), device {}, {}{}{}",
        task.name(),
        n_values(true) + n_values(false),
        n_values(true),
        n_values(false),
        crate::device::describe(opts.device),
        precision.describe(),
        if ema.is_some() { "" } else { ", no EMA (training.use_ema = False)" },
        dist.as_ref().map_or(String::new(), |d| format!(", {} data-parallel ranks over {} (timeout {} s)", d.world_size, d.backend(), d.timeout().as_secs())),
    ));

    let my_loader = if world_size > 1 { st.rank_loaders.get(rank).cloned().unwrap_or_default() } else { st.loader.clone() };
    let mut stream = data((!my_loader.is_null()).then_some(my_loader))?;
    let accum = t.gradient_accumulation_steps.max(1);
    let (started, start_step) = (Instant::now(), st.global_step);
    let mut window = (Instant::now(), 0u64); // images since the last optimiser step
    let mut nonfinite_in_a_row = 0u64;
    let mut last_loss = f64::NAN;
    let mut preview_unavailable_logged = false;
    let mut interrupted = false;
    let mut probe_attention = true; // the run's first micro-step logs its attention kernels

    while st.global_step < t.max_train_steps {
        let batch = stream.next_batch()?;
        // Every rank stops (Ctrl-C) or runs out of data together.
        let mut flags = [opts.stop.load(Ordering::SeqCst) as u8 as f64, batch.is_none() as u8 as f64];
        if let Some(d) = &dist {
            d.mark_micro_step(st.micro_step + 1);
            d.sum_all(&mut flags, &format!("agreeing on micro-step {}", st.micro_step + 1))?;
        }
        if flags[0] > 0.0 {
            interrupted = true;
            break;
        }
        let Some(batch) = batch.filter(|_| flags[1] == 0.0) else {
            log.line("the data stream ended before training.max_train_steps");
            break;
        };

        // 1. One micro-batch through the task.
        tch::manual_seed(micro_step_seed(st.seed + rank as u64, st.micro_step));
        let ctx = StepContext { device: opts.device, precision, global_step: st.global_step, micro_step: st.micro_step, dist: dist.clone() };
        let step_out = if std::mem::take(&mut probe_attention) {
            let (out, uses) = crate::attention::probe(|| task.step(&batch, &ctx));
            if !uses.is_empty() {
                log.line(&format!("attention kernels (first step's forward): {}", crate::attention::describe(&uses)));
            }
            out?
        } else {
            task.step(&batch, &ctx)?
        };
        window.1 += batch.len() as u64;
        stream.recycle(batch);
        st.micro_step += 1;
        let mut loss_value = step_out.loss.to_kind(Kind::Double).double_value(&[]);
        if let Some(d) = &dist {
            // The mean over ranks: NaN anywhere skips the step everywhere.
            let mut v = [loss_value];
            d.sum_all(&mut v, &format!("the loss of micro-step {}", st.micro_step))?;
            loss_value = v[0] / world_size as f64;
        }
        if !loss_value.is_finite() {
            st.skipped_nonfinite += 1;
            nonfinite_in_a_row += 1;
            opt.zero_grad();
            log.line(&format!("step {}: non-finite loss ({loss_value}); step skipped ({nonfinite_in_a_row} in a row)", st.global_step + 1));
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

        // 2. Backward, scaled for fp16 and averaged over the accumulation window.
        (step_out.loss * (st.loss_scale / accum as f64)).backward();
        let sync = st.micro_step.is_multiple_of(accum);

        // 3. On the window's last micro-batch: gradients averaged over the ranks, then the
        //    optimiser step (None when fp16 overflowed: the norm is the same on every rank).
        if sync && let Some(d) = &dist {
            d.average_gradients(&trainable, st.global_step + 1)?;
        }
        let update = if sync { optimizer_step(&mut st, &mut opt, &trainable, &groups, &schedule, cfg, precision, &log)? } else { None };
        if update.is_some() {
            if let Some(ema) = &mut ema {
                ema.update(&vars)?;
                st.ema_step = ema.optimization_step;
            }
            st.global_step += 1;
        }

        // 4. The task's own update after the main one (stage 3: the discriminator).
        let extra = task.after_micro_step(&StepContext { global_step: st.global_step, ..ctx }, sync)?;
        let Some(update) = update else { continue };

        // 5. Log, preview, evaluate, checkpoint.
        let step = st.global_step;
        let mut values = step_out.metrics;
        values.extend(extra);
        values.insert("lr".into(), update.lr);
        values.insert("grad_norm".into(), update.grad_norm);
        values.insert("samples/sec".into(), window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9));
        if let Some(norms) = update.grad_norms {
            values.extend(norms.groups);
            log.tensorboard_only(step, &norms.parameters)?;
        }
        if let Some(d) = &dist {
            d.average_metrics(&mut values, &format!("averaging the metrics of step {step}"))?;
        }
        log.scalars(step, &values)?;
        last_loss = loss_value;
        if step.is_multiple_of(x.log_every.max(1)) || step == t.max_train_steps || step == start_step + 1 {
            let rate = (step - start_step) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            log.line(&format!(
                "step {step}/{} | {} | lr {:.2e} | gnorm {:.3} | {:.1} img/s | ETA {}",
                t.max_train_steps,
                task.console_summary(&values),
                update.lr,
                update.grad_norm,
                values["samples/sec"],
                format_eta((t.max_train_steps - step) as f64 / rate.max(1e-9))
            ));
            log.flush()?;
        }
        // Previews and evaluation see the EMA weights, as in the reference (rank 0 only).
        if main && x.generate_every > 0 && step.is_multiple_of(x.generate_every) {
            match with_eval_weights(ema.as_ref(), &vars, || task.preview(t.num_generated_images as usize))? {
                Preview::Image(grid) => {
                    let png = sftok_pipeline::transform::encode_png(&grid)?;
                    log.image(task.preview_tag(), step, &png, grid.width, grid.height)?;
                    let dir = out.join("train_images");
                    std::fs::create_dir_all(&dir)?;
                    sftok_pipeline::fsutil::write_atomic(&dir.join(format!("{step:08}.png")), &png)?;
                }
                Preview::Unavailable(why) if !preview_unavailable_logged => {
                    preview_unavailable_logged = true;
                    log.line(&format!("previews are skipped: {why}"));
                }
                Preview::Unavailable(_) => {}
            }
        }
        if main && x.eval_every > 0 && step.is_multiple_of(x.eval_every) {
            let t0 = Instant::now();
            let metrics = with_eval_weights(ema.as_ref(), &vars, || task.evaluate())?;
            log.scalars(step, &metrics)?;
            log.flush()?;
            let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            log.line(&format!("step {step}: evaluation ({:.1} s) | {}", t0.elapsed().as_secs_f64(), shown.join(" | ")));
        }
        if step.is_multiple_of(x.save_every.max(1)) || step == t.max_train_steps {
            checkpoint(&out, task, &vars, ema.as_ref(), &opt, &mut st, stream.as_ref(), dist.as_deref(), x.keep_last_checkpoints, &log)?;
            pause_after_checkpoint_for_tests(step, rank);
        }
        window = (Instant::now(), 0);
    }

    if interrupted && st.global_step > 0 {
        checkpoint(&out, task, &vars, ema.as_ref(), &opt, &mut st, stream.as_ref(), dist.as_deref(), x.keep_last_checkpoints, &log)?;
        log.line(&format!("interrupted: checkpoint saved at step {}; continue with --resume auto", st.global_step));
    }
    log.flush()?;
    let weights_dir = out.join(if ema.is_some() { "ema_model" } else { "model" });
    if !main {
        return Ok(FitSummary { global_step: st.global_step, last_loss, output_dir: out, weights_dir, interrupted, rank });
    }
    match &ema {
        Some(ema) => task.save_weights(ema.named(), &weights_dir)?,
        None => task.save_weights(named(&vars), &weights_dir)?,
    }
    let mut panels = task.metric_panels();
    panels.extend(loop_panels());
    if let Err(e) = super::plot::plot_metrics(&log.jsonl_path(), &panels, &out.join("loss.png")) {
        log.line(&format!("loss plot not written: {e:#}"));
    }
    Ok(FitSummary { global_step: st.global_step, last_loss, output_dir: out, weights_dir, interrupted, rank })
}

/// Unscale, clip, the fp16 overflow rule, AdamW with the scheduled learning rate.
#[allow(clippy::too_many_arguments)]
fn optimizer_step(
    st: &mut TrainerState,
    opt: &mut AdamW,
    trainable: &[Tensor],
    groups: &[super::optim::ParamGroup],
    schedule: &LrSchedule,
    cfg: &Config,
    precision: Precision,
    log: &RunLog,
) -> Result<Option<Update>> {
    if st.loss_scale != 1.0 {
        tch::no_grad(|| {
            for p in trainable {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_div_scalar_(st.loss_scale);
                }
            }
        });
    }
    let grad_norm = clip_grad_norm(trainable, cfg.training.max_grad_norm);
    if !grad_norm.is_finite() {
        // fp16 overflow (GradScaler semantics): halve the scale, skip the update.
        st.loss_scale = (st.loss_scale * 0.5).max(1.0);
        st.loss_scale_good_steps = 0;
        opt.zero_grad();
        log.line(&format!("step {}: non-finite gradient norm; update skipped, loss scale {}", st.global_step + 1, st.loss_scale));
        return Ok(None);
    }
    if precision == Precision::Fp16Autocast {
        st.loss_scale_good_steps += 1;
        if st.loss_scale_good_steps.is_multiple_of(LOSS_SCALE_GROWTH_INTERVAL) {
            st.loss_scale *= 2.0;
        }
    }
    let lr = schedule.lr(st.global_step);
    opt.step(lr)?;
    // The reference logs gradient norms after the update, before zeroing (clipped values).
    let every = cfg.experiment.log_grad_norm_every;
    let grad_norms = (every > 0 && (st.global_step + 1).is_multiple_of(every)).then(|| GradNorms {
        groups: groups.iter().map(|g| (format!("grad_norm_group/{}", g.name), grad_norm_of(&g.params))).collect(),
        parameters: per_parameter_grad_norms(groups),
    });
    opt.zero_grad();
    Ok(Some(Update { lr, grad_norm, grad_norms }))
}

fn per_parameter_grad_norms(groups: &[super::optim::ParamGroup]) -> Metrics {
    groups
        .iter()
        .flat_map(|g| g.params.iter())
        .map(|(n, p)| {
            let g = p.grad();
            let v = if g.defined() { g.norm().double_value(&[]) / p.numel().max(1) as f64 } else { 0.0 };
            (format!("grad_norm/{n}"), v)
        })
        .collect()
}

/// Panels the loop adds to every task's.
fn loop_panels() -> Vec<Panel> {
    vec![
        Panel::new("learning rate", &["lr"]),
        Panel::new("gradient norm (clipped groups: grad_norm_group/*)", &["grad_norm", "grad_norm_group/*"]),
        Panel::new("throughput (images/s)", &["samples/sec"]),
    ]
}

fn with_eval_weights<T>(ema: Option<&Ema>, vars: &BTreeMap<String, Tensor>, f: impl FnOnce() -> T) -> T {
    match ema {
        Some(ema) => ema.with_shadow_weights(vars, f),
        None => f(),
    }
}

fn micro_step_seed(seed: u64, micro_step: u64) -> i64 {
    (seed as i64).wrapping_mul(1_000_003).wrapping_add(micro_step as i64)
}

fn named(vars: &BTreeMap<String, Tensor>) -> Vec<(String, Tensor)> {
    vars.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
}

/// Every rank's loader position into `st`, then rank 0 writes the checkpoint; no rank goes on
/// before it is complete.
#[allow(clippy::too_many_arguments)]
fn checkpoint(
    out: &Path,
    task: &impl Task,
    vars: &BTreeMap<String, Tensor>,
    ema: Option<&Ema>,
    opt: &AdamW,
    st: &mut TrainerState,
    stream: &dyn BatchStream,
    dist: Option<&Dist>,
    keep_last: u64,
    log: &RunLog,
) -> Result<()> {
    st.loader = stream.state();
    let Some(d) = dist else { return save_checkpoint(out, task, vars, ema, opt, st, keep_last, log) };
    let step = st.global_step;
    let mine = serde_json::to_vec(&st.loader)?;
    if let Some(all) = d.gather_on_main(&format!("loader/{step}"), &mine)? {
        st.rank_loaders = all.iter().map(|b| serde_json::from_slice(b)).collect::<Result<_, _>>()?;
        save_checkpoint(out, task, vars, ema, opt, st, keep_last, log)?;
    }
    d.barrier(&format!("waiting for rank 0's checkpoint of step {step}"))
}

/// `checkpoint-{step}/`: model, EMA, optimiser moments, the task's extra state, counters + loader.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    out: &Path,
    task: &impl Task,
    vars: &BTreeMap<String, Tensor>,
    ema: Option<&Ema>,
    opt: &AdamW,
    st: &TrainerState,
    keep_last: u64,
    log: &RunLog,
) -> Result<()> {
    let dir = state::save_checkpoint(out, st.global_step, keep_last, |tmp| {
        task.save_weights(named(vars), &tmp.join("model"))?;
        if let Some(ema) = ema {
            task.save_weights(ema.named(), &tmp.join("ema_model"))?;
        }
        crate::checkpoint::save_tensors(opt.state_tensors(), &tmp.join("optimizer.safetensors"))?;
        task.save_extra(tmp)?;
        state::write_state(tmp, st)
    })?;
    log.line(&format!("checkpoint {}", dir.display()));
    Ok(())
}

/// Model, EMA, optimiser and the task's extra state of a checkpoint whose counters `st` were read.
fn restore(ckpt: &Path, st: TrainerState, task: &mut impl Task, ema: Option<&mut Ema>, opt: &mut AdamW) -> Result<TrainerState> {
    if st.stage != task.name() {
        bail!("{} is a {} checkpoint; this run is {}", ckpt.display(), st.stage, task.name());
    }
    crate::checkpoint::load_into(task.var_store(), &crate::checkpoint::read(&ckpt.join("model/model.safetensors"))?, true)?;
    if let Some(ema) = ema {
        let path = ckpt.join("ema_model/model.safetensors");
        if !path.is_file() {
            bail!("{} has no EMA weights (saved with training.use_ema = False); resume with training.use_ema=False", ckpt.display());
        }
        for (n, t) in &crate::checkpoint::read(&path)?.tensors {
            if let Some(s) = ema.shadow.get_mut(n) {
                tch::no_grad(|| s.copy_(t));
            }
        }
        ema.optimization_step = st.ema_step;
    }
    let moments = crate::checkpoint::read(&ckpt.join("optimizer.safetensors"))?;
    opt.load_state_tensors(&moments.tensors, st.global_step)?;
    task.load_extra(ckpt)?;
    Ok(st)
}

/// Test hook: wait after the checkpoint of step `SFTOK_TEST_PAUSE_AFTER_CHECKPOINT` so a test can
/// kill -9 the run right there (`STEP` on every rank, `STEP@RANK` on one: a hung rank).
fn pause_after_checkpoint_for_tests(step: u64, rank: usize) {
    let Ok(p) = std::env::var("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT") else { return };
    let (at, who) = match p.split_once('@') {
        Some((s, r)) => (s.parse::<u64>().ok(), r.parse::<usize>().ok()),
        None => (p.parse::<u64>().ok(), Some(rank)),
    };
    if at == Some(step) && who == Some(rank) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
