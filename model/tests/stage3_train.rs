//! Stage 3 on the tiny config (../shared/spec/sftok-training.md §6b, §9): the loop trains the
//! pixel path and runs the discriminator from `losses.discriminator_start` on.

mod common;

use common::{data, fixed_batch, losses};
use sftok_model::config::Config;
use sftok_model::stage3_loss::FrozenNets;
use sftok_model::train::fit::{FitOptions, fit};
use sftok_model::train::stage3::{Stage3Options, Stage3Task};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::Device;

fn config(out: &std::path::Path, extra: &[&str]) -> Config {
    let mut ov: Vec<String> = vec![format!("experiment.output_dir={}", out.display()), "experiment.init_weight=".into()];
    ov.extend(extra.iter().map(|s| s.to_string()));
    Config::load(&common::repo_root().join("configs/tiny/sftok_tiny_stage3.yaml"), &ov).unwrap()
}

/// Random-weight LPIPS and, for `dinodisc`, a random DINO backbone (tests only).
fn frozen(cfg: &Config) -> FrozenNets {
    let lpips = sftok_model::lpips::load_lpips("random:1", "random:2", Device::Cpu).unwrap();
    let dino = (cfg.losses.discriminator_type == "dinodisc").then(|| sftok_model::dino_discriminator::load_dino_backbone("random:3", Device::Cpu).unwrap());
    FrozenNets { lpips, dino }
}

fn task(cfg: &Config) -> Stage3Task {
    Stage3Task::new(Stage3Options { config: cfg.clone(), device: Device::Cpu, init: None, teacher: None, frozen: frozen(cfg), eval: None }).unwrap()
}

#[test]
fn stage3_trains_the_pixel_path_and_starts_the_discriminator_at_discriminator_start() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let batch = fixed_batch(4);
    let cfg = config(
        dir.path(),
        &[
            "losses.discriminator_type=patchgan",
            "losses.discriminator_start=40",
            "training.max_train_steps=60",
            "training.gradient_accumulation_steps=1",
            "training.per_gpu_batch_size=4",
            "optimizer.params.learning_rate=2e-3",
            "experiment.save_every=1000",
            "experiment.generate_every=0",
        ],
    );
    let mut t = task(&cfg);
    let fit_opts = FitOptions { config: cfg.clone(), device: Device::Cpu, resume: None, max_nonfinite_in_a_row: 3, stop: Arc::new(AtomicBool::new(false)) };
    let summary = fit(&mut t, fit_opts, data(batch.clone())).unwrap();
    assert_eq!(summary.global_step, 60);
    let mse = losses(dir.path(), "train/reconstruction_loss");
    let d = losses(dir.path(), "train/discriminator_loss");
    eprintln!("stage-3 MSE: first {:.4}, last {:.4}; discriminator loss last {:.4}", mse[0], mse[mse.len() - 1], d[d.len() - 1]);
    // The discriminator runs from discriminator_start on: its loss is logged from then.
    assert!(std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap().lines().nth(40).unwrap().contains("discriminator_loss"));
    assert!(!std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap().lines().nth(38).unwrap().contains("discriminator_loss"));

    // The reconstruction loss falls by far: from the random pixel decoder's output to about the
    // batch's mean colours (the tiny model at this step count gets no further; see the README).
    assert!(mse[mse.len() - 1] < 0.2 * mse[0], "MSE {:.4} → {:.4}", mse[0], mse[mse.len() - 1]);
}
