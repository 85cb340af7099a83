//! Stage 3 on the tiny config (../shared/spec/sftok-training.md §6b, §9): the loop trains the
//! pixel path and runs the discriminator from `losses.discriminator_start` on, and accumulating two
//! micro-batches gives the gradients of one batch of both, for the generator and the discriminator.

mod common;

use common::{data, fixed_batch, losses};
use sftok_model::config::Config;
use sftok_model::stage3_loss::FrozenNets;
use sftok_model::train::fit::{FitOptions, fit};
use sftok_model::train::stage3::{Stage3Options, Stage3Task};
use sftok_model::train::task::{Precision, StepContext, Task};
use sftok_pipeline::batch::Batch;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::{Device, Tensor};

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
    let fit_opts = FitOptions { config: cfg.clone(), device: Device::Cpu, resume: None, max_nonfinite_in_a_row: 3, stop: Arc::new(AtomicBool::new(false)), dist: None };
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

/// Gradients of the generator (model parameters) and of the discriminator after one batch.
fn grads(t: &Stage3Task) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let model = t.param_groups().into_iter().flat_map(|g| g.params).map(|(n, p)| (n, p.grad().copy())).collect();
    let disc = t.discriminator_parameters().iter().map(|(n, p)| (n.clone(), p.grad().copy())).collect();
    (model, disc)
}

/// `batch` twice over, as one batch.
fn doubled(batch: &Batch) -> Batch {
    let mut b = batch.clone();
    b.images.extend_from_slice(&batch.images);
    b.labels.extend_from_slice(&batch.labels);
    b.keys.extend(batch.keys.iter().map(|k| format!("{k}-again")));
    b
}

#[test]
fn accumulating_two_micro_batches_gives_the_gradients_of_one_batch_of_both() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let micro = fixed_batch(2);
    // No masking (the decoder input is then the guidance prediction everywhere: no random draw
    // matters), the discriminator from step 0, PatchGAN (per-sample; no DiffAug): the loss of a
    // batch is the mean of its samples' losses. The two micro-batches are the same images, so that
    // OptVQ's batch-dependent assignment is that of the doubled batch too (spec §13 item 17).
    let common_ov = ["losses.discriminator_type=patchgan", "losses.discriminator_start=0", "training.max_mask_ratio=0"];
    let cfg = |accum: &str| {
        let mut ov = common_ov.to_vec();
        ov.push(accum);
        config(dir.path(), &ov)
    };
    let run = |cfg: &Config, batches: &[&Batch]| {
        let mut t = task(cfg);
        t.init_fresh(&mut |_| {}).unwrap();
        let n = batches.len() as f64;
        for (i, b) in batches.iter().enumerate() {
            let ctx = StepContext { device: Device::Cpu, precision: Precision::Float32, global_step: 0, micro_step: i as u64, dist: None };
            tch::manual_seed(7);
            let out = t.step(b, &ctx).unwrap();
            (out.loss / n).backward(); // as the loop: each micro-batch's loss over the accumulation steps
            t.after_micro_step(&ctx, false).unwrap(); // no optimiser step: read the accumulated gradients
        }
        grads(&t)
    };
    let (gm_acc, gd_acc) = run(&cfg("training.gradient_accumulation_steps=2"), &[&micro, &micro]);
    let (gm_one, gd_one) = run(&cfg("training.gradient_accumulation_steps=1"), &[&doubled(&micro)]);
    // Tolerance: the two differ by float32 summation order only. Reductions run over at most
    // 4·3·64·64 ≈ 5·10⁴ terms, so the round-off is ≲ √n·ε ≈ 220 · 6e-8 ≈ 1.3e-5 of the summed
    // terms' magnitude. A tensor's largest gradient bounds that magnitude unless the terms cancel
    // (biases before a normalisation, the logit bias of a hinge loss): allow 1e-4 of the tensor's
    // largest gradient or 1e-5 of the module's, whichever is larger (the fixtures' rule, README §12,
    // uses 1e-6 of the module's largest gradient for float32 vs float64).
    for (what, a, b) in [("generator", &gm_acc, &gm_one), ("discriminator", &gd_acc, &gd_one)] {
        assert_eq!(a.len(), b.len());
        assert!(!a.is_empty());
        let mut worst = 0f64;
        let module_max = b.values().map(|g| g.abs().max().double_value(&[])).fold(0.0, f64::max);
        for (n, ga) in a {
            let gb = &b[n];
            assert!(ga.defined() && gb.defined(), "{what} {n}: no gradient");
            let scale = gb.abs().max().double_value(&[]);
            let diff = (ga - gb).abs().max().double_value(&[]);
            let tol = (1e-4 * scale).max(1e-5 * module_max);
            worst = worst.max(diff / tol);
            assert!(diff <= tol, "{what} {n}: accumulated vs one batch differ by {diff:e} > {tol:e} (max |g| {scale:e}, module {module_max:e})");
        }
        eprintln!("{what}: {} tensors, worst difference {worst:.2} of its tolerance", a.len());
    }
}

#[test]
fn init_weights_missing_tokenizer_tensors_are_refused_naming_the_file() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["losses.discriminator_type=patchgan"]);
    // A file with one of the stage-2 tensors only (no teacher: the pixel modules may be absent, nothing else).
    let partial = dir.path().join("partial.safetensors");
    sftok_model::checkpoint::save_tensors([("latent_tokens".to_string(), Tensor::zeros([8, 64], (tch::Kind::Float, Device::Cpu)))], &partial).unwrap();
    let mut t = Stage3Task::new(Stage3Options { config: cfg.clone(), device: Device::Cpu, init: Some(partial.clone()), teacher: None, frozen: frozen(&cfg), eval: None }).unwrap();
    let err = t.init_fresh(&mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("partial.safetensors") && err.contains("lacks"), "{err}");
}
