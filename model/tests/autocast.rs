//! bf16 autocast through the shim (model/csrc/sftok_autocast.cpp), on the CPU: scopes nest and
//! restore, float32 islands stay float32, and a tiny stage-1 run in bf16 trains like the same run
//! in float32 and saves float32 weights.

mod common;

use common::{data, fixed_batch, losses};
use sftok_model::autocast::{AutocastDtype, autocast, current_dtype, float32, is_enabled};
use sftok_model::config::Config;
use sftok_model::train::fit::FitOptions;
use sftok_model::train::launch::{TrainJob, run_job};
use sftok_model::train::token_task::TokenTaskOptions;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};

#[test]
fn autocast_scopes_cast_matmuls_to_bf16_and_float32_islands_stay_float32() {
    let cpu = Device::Cpu;
    let (a, b) = (Tensor::randn([4, 8], (Kind::Float, cpu)), Tensor::randn([8, 3], (Kind::Float, cpu)));
    assert_eq!(a.matmul(&b).kind(), Kind::Float, "no autocast outside a scope");
    assert!(!is_enabled(cpu), "off outside a scope (while a dtype is still set: {:?})", current_dtype(cpu));
    let (inside, island, nested, after_nested) = autocast(cpu, AutocastDtype::BFloat16, || {
        assert_eq!(current_dtype(cpu), Some(AutocastDtype::BFloat16));
        assert!(is_enabled(cpu) && !float32(|| is_enabled(cpu)), "on in the scope, off in its float32 island");
        let inside = a.matmul(&b).kind();
        let island = float32(|| a.matmul(&b).kind());
        let nested = autocast(cpu, AutocastDtype::BFloat16, || a.matmul(&b).kind());
        (inside, island, nested, a.matmul(&b).kind())
    });
    assert_eq!((inside, island, nested, after_nested), (Kind::BFloat16, Kind::Float, Kind::BFloat16, Kind::BFloat16));
    assert_eq!(a.matmul(&b).kind(), Kind::Float, "the scope's end restores float32");
    assert!(!is_enabled(cpu));
    // A transformer block (linear, SDPA, GELU, LayerNorm) computes in bf16 under the scope: the
    // residual sum with the float32 input comes out float32, with bf16's rounding in it.
    let vs = tch::nn::VarStore::new(cpu);
    let block = sftok_model::transformer::ResidualAttentionBlock::new(vs.root(), 64, 4, "test");
    let x = Tensor::randn([2, 5, 64], (Kind::Float, cpu));
    use tch::nn::Module;
    let (full, low) = (block.forward(&x), autocast(cpu, AutocastDtype::BFloat16, || block.forward(&x)));
    let rel = (&full - &low).abs().max().double_value(&[]) / full.abs().max().double_value(&[]);
    println!("transformer block, bf16 autocast vs float32: max relative difference {rel:.2e}");
    assert!(rel > 1e-4 && rel < 5e-2, "{rel}: bf16 rounding (2^-9 per op) should show, and nothing more");
    // Gradients reach the float32 leaves through bf16 ops, in float32.
    let w = Tensor::randn([8, 3], (Kind::Float, cpu)).set_requires_grad(true);
    let loss = autocast(cpu, AutocastDtype::BFloat16, || a.matmul(&w).to_kind(Kind::Float).sum(Kind::Float));
    loss.backward();
    assert_eq!(w.grad().kind(), Kind::Float);
}

fn stage1(out: &std::path::Path, precision: &str) -> Vec<f64> {
    let ov = [
        format!("experiment.output_dir={}", out.display()),
        "experiment.init_weight=".into(),
        format!("training.mixed_precision={precision}"),
        "training.max_train_steps=60".into(),
        "experiment.save_every=60".into(),
        "experiment.generate_every=0".into(),
        "experiment.eval_every=0".into(),
        "optimizer.params.learning_rate=1e-3".into(),
    ];
    let config = Config::load(&common::repo_root().join("configs/tiny/sftok_tiny_stage1.yaml"), &ov).unwrap();
    let fit = FitOptions { config: config.clone(), device: Device::Cpu, resume: Some("never".into()), max_nonfinite_in_a_row: 3, stop: Arc::new(AtomicBool::new(false)), dist: None };
    let task = TokenTaskOptions { config, device: Device::Cpu, init: None, teacher: None, eval: None };
    let summary = run_job(TrainJob::Stage1, task, fit, data(fixed_batch(4))).unwrap();
    assert_eq!(summary.global_step, 60);
    losses(out, "train/reconstruction_loss")
}

#[test]
fn a_bf16_stage1_run_trains_like_float32_and_saves_float32_weights() {
    let _rng = sftok_testkit_tch::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let f32_run = stage1(&dir.path().join("f32"), "no");
    let bf16_run = stage1(&dir.path().join("bf16"), "bf16");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (start, f32_end, bf16_end) = (mean(&f32_run[..5]), mean(&f32_run[50..]), mean(&bf16_run[50..]));
    let max_step_diff = f32_run.iter().zip(&bf16_run).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("reconstruction loss: start {start:.4}; last 10 steps float32 {f32_end:.4}, bf16 {bf16_end:.4}; largest per-step difference {max_step_diff:.4}");
    assert_ne!(f32_run, bf16_run, "the bf16 run computed exactly the float32 numbers: autocast did nothing");
    // bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op); over 60 steps the runs drift
    // apart, but training must make the same progress: the bf16 run ends within 10 % of the
    // float32 run's drop in loss.
    let drop = start - f32_end;
    assert!(drop > 0.5, "the float32 run barely trained ({start} → {f32_end})");
    assert!((bf16_end - f32_end).abs() < 0.1 * drop, "bf16 {bf16_end} vs float32 {f32_end} (drop {drop})");
    // Master weights (and so checkpoints) stay float32.
    let sd = sftok_model::checkpoint::read(&dir.path().join("bf16/checkpoint-60/model/model.safetensors")).unwrap();
    assert!(sd.tensors.iter().filter(|(_, t)| t.is_floating_point()).all(|(_, t)| t.kind() == Kind::Float));
}
