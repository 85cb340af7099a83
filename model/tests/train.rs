//! The trainer's parts against oracles (AdamW vs PyTorch, TensorBoard files read by the
//! `tensorboard` package) and its behaviour on the tiny config: stage 1 overfits a fixed batch,
//! stage 2 starts from stage 1's EMA weights and improves, NaN losses stop the run cleanly.

mod common;

use sftok_model::config::Config;
use common::{data, fixed_batch, losses};
use sftok_model::train::fit::{FitOptions, FitSummary};
use sftok_model::train::launch::{TrainJob, run_job};
use sftok_model::train::optim::{AdamW, AdamWConfig, ParamGroup, cosine_lr, uses_weight_decay};
use sftok_model::train::token_task::TokenTaskOptions;
use sftok_pipeline::batch::Batch;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};

// PyTorch's AdamW twice over the same gradients: `fused=True` (the kernel sftok calls) and the
// single-tensor loop (PyTorch's default on a CPU, the reference's arithmetic).
const PY_ADAMW: &str = r#"
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
out = {}
for tag, fused in (("fused", True), ("loop", False)):
    a = torch.nn.Parameter(t["a"].clone()); b = torch.nn.Parameter(t["b"].clone())
    opt = torch.optim.AdamW([{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                            lr=1.0, betas=(0.9, 0.99), eps=1e-8, fused=fused, foreach=False if not fused else None)
    for k in range(3):
        for g in opt.param_groups:
            g["lr"] = float(sys.argv[3 + k])
        a.grad = t[f"ga{k}"].clone(); b.grad = t[f"gb{k}"].clone()
        opt.step()
    out.update({f"a.{tag}": a.detach(), f"b.{tag}": b.detach(),
                f"ma.{tag}": opt.state[a]["exp_avg"], f"va.{tag}": opt.state[a]["exp_avg_sq"]})
save_file(out, sys.argv[2])
"#;

#[test]
fn adamw_matches_pytorch_with_the_reference_groups_and_schedule() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    // Sizes that are not a multiple of a vector width, so the fused kernel's tail is exercised.
    let a = Tensor::randn([37, 5], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([5], (Kind::Float, Device::Cpu));
    let mut named = vec![("a".to_string(), a.copy()), ("b".to_string(), b.copy())];
    let grads: Vec<(Tensor, Tensor)> = (0..3).map(|_| (Tensor::randn([37, 5], (Kind::Float, Device::Cpu)), Tensor::randn([5], (Kind::Float, Device::Cpu)))).collect();
    for (k, (ga, gb)) in grads.iter().enumerate() {
        named.push((format!("ga{k}"), ga.copy()));
        named.push((format!("gb{k}"), gb.copy()));
    }
    Tensor::write_safetensors(&named, dir.path().join("in.safetensors")).unwrap();
    let lrs: Vec<f64> = (0..3).map(|k| cosine_lr(k + 1, 1e-2, 1e-3, 2, 10)).collect();

    // Ours: names chosen so that "w" decays and "bias" does not (the reference's rule).
    assert!(uses_weight_decay("w", 2) && !uses_weight_decay("bias", 1));
    let pa = a.copy().set_requires_grad(true);
    let pb = b.copy().set_requires_grad(true);
    let params = BTreeMap::from([("w".to_string(), pa.shallow_clone()), ("bias".to_string(), pb.shallow_clone())]);
    let groups = sftok_model::train::optim::reference_param_groups(params, 0.1);
    assert_eq!(groups.iter().map(|g: &ParamGroup| (g.name.as_str(), g.params.len(), g.weight_decay)).collect::<Vec<_>>(),
               [("decay", 1, 0.1), ("no_decay", 1, 0.0)]);
    let mut opt = AdamW::new(&groups, AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8 });
    for (k, (ga, gb)) in grads.iter().enumerate() {
        let (la, lb) = ((&pa * ga).sum(Kind::Float), (&pb * gb).sum(Kind::Float)); // d/dp = the given grad
        (la + lb).backward();
        opt.step(lrs[k]).unwrap();
        opt.zero_grad();
    }
    let args: Vec<String> = lrs.iter().map(|l| format!("{l:.17e}")).collect();
    let out = dir.path().join("out.safetensors");
    let mut cmd = common::python();
    cmd.arg("-c").arg(PY_ADAMW).arg(dir.path().join("in.safetensors")).arg(&out).args(&args);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: BTreeMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let state: BTreeMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let ours = [("a", &pa), ("b", &pb), ("ma", &state["exp_avg.w"]), ("va", &state["exp_avg_sq.w"])];
    // PyTorch's fused kernel: bit for bit.
    for (key, got) in ours {
        assert!(got.equal(&want[&format!("{key}.fused")]), "{key} differs from torch.optim.AdamW(fused=True)");
    }
    // The single-tensor loop: the same update up to float32 rounding.
    let d: Vec<f64> = ours.iter().map(|(key, got)| common::max_abs_diff(got, &want[&format!("{key}.loop")])).collect();
    eprintln!("AdamW vs PyTorch's single-tensor loop after 3 steps: max |Δ| a {:e}, b {:e}, exp_avg {:e}, exp_avg_sq {:e}", d[0], d[1], d[2], d[3]);
    assert!(d[0] <= 1e-7 && d[1] <= 1e-7 && d[2] <= 1e-8 && d[3] <= 1e-8, "{d:?}");
}

#[test]
fn ema_follows_the_reference_update_and_copies_frozen_variables() {
    use sftok_model::train::ema::Ema;
    tch::manual_seed(5);
    let w = Tensor::randn([1001], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let frozen = Tensor::randn([7], (Kind::Float, Device::Cpu));
    let vars = BTreeMap::from([("w".to_string(), w.shallow_clone()), ("frozen".to_string(), frozen.shallow_clone())]);
    let mut ema = Ema::new(&vars, 0.999);
    // The reference (diffusers' EMAModel.step): shadow -= (1 - decay) * (shadow - param), with
    // decay = min(0.999, (1 + s) / (10 + s)) and s = step - 1 (decay 0 at the first step).
    let mut want = w.detach().copy();
    for k in 1..=4u32 {
        tch::no_grad(|| {
            let _ = w.shallow_clone().g_add_(&(Tensor::randn([1001], (Kind::Float, Device::Cpu)) * 0.1));
            let _ = frozen.shallow_clone().g_add_scalar_(1.0);
        });
        let s = k as f64 - 1.0;
        let decay = if s <= 0.0 { 0.0 } else { 0.999f64.min((1.0 + s) / (10.0 + s)) };
        want = &want - (&want - w.detach()) * (1.0 - decay);
        ema.update(&vars).unwrap();
        assert_eq!(ema.optimization_step, k as u64);
    }
    let shadow: BTreeMap<String, Tensor> = ema.named().into_iter().collect();
    // lerp's rounding differs from the reference's expression in the last bit of a few values: a
    // few float32 ulps of the values' scale (a wrong decay schedule is off by ~1e-2).
    let d = common::max_abs_diff(&shadow["w"], &want);
    let scale = want.abs().max().double_value(&[]);
    assert!(d <= 4.0 * f32::EPSILON as f64 * scale, "EMA off the reference update by {d:e} (values up to {scale})");
    assert!(!shadow["w"].equal(&w.detach()), "after 4 steps the EMA lags the weights");
    assert!(shadow["frozen"].equal(&frozen), "a variable without grad is copied, not averaged");
}

fn tiny_config(stage: u32, out: &std::path::Path, extra: &[&str]) -> Config {
    let mut ov: Vec<String> = vec![format!("experiment.output_dir={}", out.display()), "experiment.init_weight=".into()];
    ov.extend(extra.iter().map(|s| s.to_string()));
    Config::load(&common::repo_root().join(format!("configs/tiny/sftok_tiny_stage{stage}.yaml")), &ov).unwrap()
}

/// Trains `job` on `batch`; `teacher` only for the reconstruction previews (codes come with the batch).
fn train(job: TrainJob, config: Config, init: Option<std::path::PathBuf>, teacher: bool, batch: Batch) -> anyhow::Result<FitSummary> {
    let fit_opts = FitOptions { config: config.clone(), device: Device::Cpu, resume: None, max_nonfinite_in_a_row: 3, stop: Arc::new(AtomicBool::new(false)), dist: None };
    let teacher = teacher.then(|| sftok_model::vqgan::load_teacher("random:0", Device::Cpu).unwrap());
    run_job(job, TokenTaskOptions { config, device: Device::Cpu, init, teacher, eval: None }, fit_opts, data(batch))
}


#[test]
fn stage1_overfits_a_fixed_batch_then_stage2_starts_from_its_ema_and_improves() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
    let batch = fixed_batch(8);
    // Targets: 8 images × 16 proxy positions of a seeded random teacher. Knowing nothing gives
    // ln(1024) ≈ 6.93 nats; a model that ignores the image can at best predict, per position,
    // the empirical code distribution of the 8 images (the bound H computed below from the data).
    // Falling well below H — and below 1.0 — means the tokens carry which image is which.
    let codes = batch.codes.clone().unwrap();
    let h_bound: f64 = (0..16)
        .map(|p| {
            let mut counts = BTreeMap::<u16, f64>::new();
            (0..8).for_each(|i| *counts.entry(codes[i * 16 + p]).or_default() += 1.0);
            -counts.values().map(|c| (c / 8.0) * (c / 8.0).ln()).sum::<f64>()
        })
        .sum::<f64>()
        / 16.0;
    // A constant LR after a short warm-up and no clipping: the fastest way to memorise one batch.
    let cfg = tiny_config(1, &s1, &["training.max_train_steps=400", "optimizer.params.learning_rate=3e-3", "training.max_grad_norm=100",
                                    "lr_scheduler.params.warmup_steps=10", "lr_scheduler.params.end_lr=3e-3", "experiment.save_every=400"]);
    let t0 = std::time::Instant::now();
    let sum = train(TrainJob::Stage1, cfg, None, false, batch.clone()).unwrap();
    let ce = losses(&s1, "train/reconstruction_loss");
    eprintln!("stage 1: CE {:.3} → {:.3} in {} steps, {:.1} s", ce[0], ce[ce.len() - 1], ce.len(), t0.elapsed().as_secs_f64());
    assert_eq!(sum.global_step, 400);
    assert!(ce[0] > 6.0, "initial CE {} should be ≈ ln(1024)", ce[0]);
    let final_ce = ce[ce.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!("image-agnostic bound H = {h_bound:.3}");
    assert!(final_ce < 1.0 && final_ce < 0.6 * h_bound, "stage 1 did not overfit: final CE {final_ce}, bound {h_bound}");
    assert!(s1.join("ema_model/model.safetensors").is_file() && s1.join("loss.png").is_file());

    let cfg2 = tiny_config(2, &s2, &["training.max_train_steps=40", "optimizer.params.learning_rate=1e-3", "lr_scheduler.params.warmup_steps=5"]);
    train(TrainJob::Stage2, cfg2, Some(s1.join("ema_model")), false, batch).unwrap();
    let log = std::fs::read_to_string(s2.join("log.txt")).unwrap();
    assert!(log.contains("initialised from") && log.contains("ema_model"), "{log}");
    // The first step names the attention kernels of both networks (attention::probe).
    let kernels = log.lines().find(|l| l.contains("attention kernels (first step's forward): ")).unwrap_or_else(|| panic!("{log}"));
    assert!(kernels.contains("sftok decoder: ") && kernels.contains("sftok encoder: ") && kernels.contains("(Float)"), "{kernels}");
    let l2 = losses(&s2, "train/total_loss");
    let (first, last) = (l2[..5].iter().sum::<f64>() / 5.0, l2[l2.len() - 5..].iter().sum::<f64>() / 5.0);
    eprintln!("stage 2: loss {first:.3} → {last:.3}");
    assert!(first < 3.0, "stage 2 should start from the trained EMA weights, first losses {first}");
    assert!(last < first, "stage 2 loss did not decrease: {first} → {last}");
}

#[test]
fn nonfinite_losses_stop_the_run_and_keep_the_last_good_checkpoint() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nan");
    let batch = fixed_batch(2);
    let cfg = tiny_config(1, &out, &["training.max_train_steps=4", "experiment.save_every=2"]);
    train(TrainJob::Stage1, cfg, None, false, batch.clone()).unwrap();
    let good = std::fs::read(out.join("checkpoint-4/model/model.safetensors")).unwrap();
    // Continue the run with a loss term forced to NaN: every step is skipped, then the run stops.
    let cfg = tiny_config(1, &out, &["training.max_train_steps=8", "experiment.save_every=2", "losses.quantizer_weight=.nan"]);
    let err = format!("{:#}", train(TrainJob::Stage1, cfg, None, false, batch).unwrap_err());
    assert!(err.contains("3 non-finite losses in a row") && err.contains("untouched"), "{err}");
    assert_eq!(std::fs::read(out.join("checkpoint-4/model/model.safetensors")).unwrap(), good);
    let ckpts = sftok_model::train::state::list_checkpoints(&out).unwrap();
    assert!(!ckpts.is_empty(), "a checkpoint from before the blow-up must exist");
    let (_, last) = ckpts.last().unwrap();
    let sd = sftok_model::checkpoint::read(&last.join("model/model.safetensors")).unwrap();
    for (n, t) in &sd.tensors {
        if t.is_floating_point() {
            assert!(t.isfinite().all().int64_value(&[]) == 1, "{n} in the kept checkpoint is not finite");
        }
    }
}

const PY_TB: &str = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"images": 0, "scalars": 0}); ea.Reload()
tags = ea.Tags()
print("SCALARS", sorted(tags["scalars"]))
print("IMAGES", tags["images"])
ev = ea.Scalars("train/total_loss"); print("STEPS", [e.step for e in ev][:3], len(ev))
img = ea.Images("Train Reconstruction")[0]; print("IMG", img.width, img.height)
"#;

#[test]
fn tensorboard_files_read_back_with_the_expected_tags() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tb");
    let cfg = tiny_config(1, &out, &["training.max_train_steps=4", "experiment.generate_every=2", "training.num_generated_images=2"]);
    train(TrainJob::Stage1, cfg, None, true, fixed_batch(3)).unwrap();
    let o = common::python().arg("-c").arg(PY_TB).arg(out.join("logs")).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    for tag in ["train/total_loss", "train/reconstruction_loss", "train/quantizer_loss", "train/masked_token_accuracy",
                "train/index_unique_ratio", "train/codebook_perplexity", "train/latent_spread", "lr", "grad_norm", "samples/sec"] {
        assert!(text.contains(&format!("'{tag}'")), "missing {tag}: {text}");
    }
    assert!(text.contains("STEPS [1, 2, 3] 4"), "{text}");
    // 2 rows of [original | reconstruction | difference], 64 px each with 2 px gaps.
    assert!(text.contains("IMG 196 130"), "{text}");
    assert!(out.join("train_images/00000002.png").is_file());
}

fn rows(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn use_ema_false_trains_without_an_ema_and_exports_the_raw_weights() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no_ema");
    let cfg = tiny_config(1, &out, &["training.max_train_steps=2", "experiment.save_every=2", "training.use_ema=False"]);
    let sum = train(TrainJob::Stage1, cfg, None, false, fixed_batch(2)).unwrap();
    assert_eq!(sum.weights_dir, out.join("model"));
    assert!(!out.join("ema_model").exists() && !out.join("checkpoint-2/ema_model").exists());
    // The export is the trained weights themselves.
    let (a, b) = (std::fs::read(out.join("model/model.safetensors")).unwrap(), std::fs::read(out.join("checkpoint-2/model/model.safetensors")).unwrap());
    assert!(a == b, "exported weights differ from the checkpoint's raw weights");
    // With the EMA on, the export is the EMA, which differs from the raw weights after 2 steps.
    let out2 = dir.path().join("ema");
    let cfg = tiny_config(1, &out2, &["training.max_train_steps=2", "experiment.save_every=2"]);
    let sum = train(TrainJob::Stage1, cfg, None, false, fixed_batch(2)).unwrap();
    assert_eq!(sum.weights_dir, out2.join("ema_model"));
    assert!(std::fs::read(out2.join("ema_model/model.safetensors")).unwrap() != std::fs::read(out2.join("checkpoint-2/model/model.safetensors")).unwrap());
}

#[test]
fn experiment_resume_false_starts_afresh_and_keeps_the_earlier_metrics() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let batch = fixed_batch(2);
    train(TrainJob::Stage1, tiny_config(1, &out, &["training.max_train_steps=2", "experiment.save_every=2"]), None, false, batch.clone()).unwrap();
    // experiment.resume: True (the reference's default) continues from checkpoint-2.
    train(TrainJob::Stage1, tiny_config(1, &out, &["training.max_train_steps=3", "experiment.save_every=3"]), None, false, batch.clone()).unwrap();
    let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    assert!(log.contains("at step 2"), "{log}");
    assert_eq!(rows(&out).iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    // False: a new run from step 0; the earlier rows are moved aside, not lost.
    let cfg = tiny_config(1, &out, &["training.max_train_steps=1", "experiment.save_every=1", "experiment.resume=False"]);
    train(TrainJob::Stage1, cfg, None, false, batch).unwrap();
    assert_eq!(rows(&out).iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1]);
    let aside: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with("metrics.before-")).collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(out.join(&aside[0])).unwrap().lines().count(), 3);
}

#[test]
fn lr_scheduler_scheduler_selects_the_schedule_and_refuses_unknown_ones() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let sched = |name: &str, out: &std::path::Path| {
        tiny_config(1, out, &["training.max_train_steps=5", "experiment.save_every=5", "lr_scheduler.params.warmup_steps=2",
                              "optimizer.params.learning_rate=1e-3", "lr_scheduler.params.end_lr=1e-4", &format!("lr_scheduler.scheduler={name}")])
    };
    let lrs = |out: &std::path::Path| rows(out).iter().map(|r| r["lr"].as_f64().unwrap()).collect::<Vec<_>>();
    let (c, k) = (dir.path().join("constant"), dir.path().join("cosine"));
    train(TrainJob::Stage1, sched("constant", &c), None, false, fixed_batch(2)).unwrap();
    assert_eq!(lrs(&c), [0.0, 5e-4, 1e-3, 1e-3, 1e-3]);
    train(TrainJob::Stage1, sched("cosine", &k), None, false, fixed_batch(2)).unwrap();
    // Warm-up, then cosine from 1e-3 towards 1e-4 over the 3 remaining steps: k = 2, 3, 4 of max 5.
    let want = [0.0, 5e-4, 1e-3, 1e-4 + 9e-4 * 0.5 * (1.0 + (std::f64::consts::PI / 3.0).cos()), 1e-4 + 9e-4 * 0.5 * (1.0 + (2.0 * std::f64::consts::PI / 3.0).cos())];
    for (got, want) in lrs(&k).iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "cosine lr {got} vs {want}");
    }
    let err = format!("{:#}", train(TrainJob::Stage1, sched("linear", &dir.path().join("bad")), None, false, fixed_batch(2)).unwrap_err());
    assert!(err.contains("lr_scheduler.scheduler") && err.contains("\"linear\""), "{err}");
}

#[test]
fn log_grad_norm_every_logs_per_group_norms_on_those_steps() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gn");
    // No clipping (max norm 1e6): the group norms must then make up the total norm.
    let cfg = tiny_config(1, &out, &["training.max_train_steps=4", "experiment.save_every=4", "experiment.log_grad_norm_every=2",
                                     "training.max_grad_norm=1e6"]);
    train(TrainJob::Stage1, cfg, None, false, fixed_batch(2)).unwrap();
    for r in rows(&out) {
        let step = r["step"].as_u64().unwrap();
        let (d, n) = (r.get("grad_norm_group/decay").and_then(|v| v.as_f64()), r.get("grad_norm_group/no_decay").and_then(|v| v.as_f64()));
        if step % 2 == 1 {
            assert!(d.is_none() && n.is_none(), "step {step} has group norms: {r}");
            continue;
        }
        let (d, n) = (d.expect("decay group norm"), n.expect("no_decay group norm"));
        let total = r["grad_norm"].as_f64().unwrap();
        assert!(d > 0.0 && n > 0.0);
        assert!(((d * d + n * n).sqrt() - total).abs() <= 1e-4 * total, "step {step}: groups {d}, {n} vs total {total}");
    }
}

#[test]
fn stage2_guided_mask_false_is_the_vanilla_ablation_with_other_inputs() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let batch = fixed_batch(4);
    let first_loss = |guided: &str| {
        let out = dir.path().join(format!("g{guided}"));
        let cfg = tiny_config(2, &out, &["training.max_train_steps=1", "experiment.save_every=1", &format!("training.guided_mask={guided}")]);
        train(TrainJob::Stage2, cfg, None, false, batch.clone()).unwrap();
        rows(&out)[0]["train/total_loss"].as_f64().unwrap()
    };
    let (sfvr, vanilla, sfvr_again) = (first_loss("True"), first_loss("False"), first_loss("True"));
    assert_eq!(sfvr, sfvr_again, "seeded runs must repeat");
    assert!(sfvr != vanilla, "guided_mask had no effect: {sfvr} == {vanilla}");
    // Stage 1 refuses a stage-2 config, naming the key.
    let err = format!("{:#}", train(TrainJob::Stage1, tiny_config(2, &dir.path().join("x"), &[]), None, false, batch).unwrap_err());
    assert!(err.contains("training.single_step_generation"), "{err}");
}

#[test]
fn keys_asking_for_what_stages_1_2_do_not_do_are_refused_by_name() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    for (set, key) in [("training.enable_wandb=True", "training.enable_wandb"), ("training.use_mlmloss=False", "training.use_mlmloss"),
                       ("training.use_soft_proxycodes=True", "training.use_soft_proxycodes"),
                       ("dataset.params.pretokenization=tokens/", "dataset.params.pretokenization")] {
        let cfg = tiny_config(1, &dir.path().join("r"), &["training.max_train_steps=1", set]);
        let err = format!("{:#}", train(TrainJob::Stage1, cfg, None, false, fixed_batch(1)).unwrap_err());
        assert!(err.contains(key), "{set}: {err}");
        assert!(!dir.path().join("r").exists(), "{set}: a refused config must write nothing");
    }
}
