//! `sftok-train stage3` end to end on the tiny config with real shards and random-weight LPIPS /
//! DINO: 6 steps straight vs 3 steps + kill -9 + `--resume auto`, after `discriminator_start` →
//! identical model, EMA, both optimisers, discriminator + LeCam + spectral-norm state, its step
//! count, trainer state and loss log.

mod common;

use common::{bin, metric_rows as losses, run_ok, shards};
use std::path::Path;

fn stage3(dir: &Path, out: &str) -> std::process::Command {
    let mut c = bin("sftok-train");
    let config = common::repo().join("configs/tiny/sftok_tiny_stage3.yaml");
    c.current_dir(dir).args([
        "stage3", "--config", config.to_str().unwrap(), "--device", "cpu", "--workers", "1",
        "--vgg16-weights", "random:1", "--lpips-weights", "random:2", "--dino-weights", "random:3",
        &format!("experiment.output_dir={out}"),
        "experiment.init_weight=",
        "training.max_train_steps=6",
        "losses.discriminator_start=2",
        "experiment.save_every=3",
        "experiment.generate_every=0",
        "training.per_gpu_batch_size=2",
        "experiment.log_every=1",
    ]);
    c
}

#[test]
fn stage3_resume_after_kill_past_discriminator_start_continues_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    shards(dir, 2, 8, 4);

    run_ok(&mut stage3(dir, "a"));
    let child = stage3(dir, "b").env("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT", "3").spawn().unwrap();
    common::kill_when_exists(child, &dir.join("b/checkpoint-3/trainer_state.json"), 600);
    assert!(!dir.join("b/checkpoint-6").exists());
    let text = run_ok(&mut stage3(dir, "b"));
    assert!(text.contains("resumed from") && text.contains("at step 3"), "{text}");

    for file in [
        "model/model.safetensors",
        "ema_model/model.safetensors",
        "optimizer.safetensors",
        "model_1.safetensors",
        "optimizer_1.safetensors",
        "scheduler_1.json",
        "trainer_state.json",
    ] {
        let (a, b) = (dir.join("a/checkpoint-6").join(file), dir.join("b/checkpoint-6").join(file));
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{file} differs after resume");
    }
    // The discriminator trained: 4 steps from step 2 on; its state holds the heads, their
    // spectral-norm vectors and the LeCam EMA.
    let sched: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("a/checkpoint-6/scheduler_1.json")).unwrap()).unwrap();
    assert_eq!(sched["discriminator_steps"], 4);
    let names: Vec<String> = safetensors_names(&dir.join("a/checkpoint-6/model_1.safetensors"));
    assert!(names.iter().any(|n| n.starts_with("discriminator.heads.") && n.ends_with("weight_u")));
    assert!(names.contains(&"ema_real_logits_mean".to_string()) && names.contains(&"ema_fake_logits_mean".to_string()));

    let (la, lb) = (losses(&dir.join("a/metrics.jsonl")), losses(&dir.join("b/metrics.jsonl")));
    assert_eq!(la.len(), 6);
    assert!(la[1].get("train/discriminator_loss").is_none() && la[2].get("train/discriminator_loss").is_some());
    assert_eq!(la, lb, "loss logs differ");
}

fn safetensors_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

#[test]
fn stage3_without_the_lpips_weights_is_an_error_naming_the_flag_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = common::repo().join("configs/tiny/sftok_tiny_stage3.yaml");
    let out = bin("sftok-train")
        .current_dir(tmp.path())
        .args(["stage3", "--config", config.to_str().unwrap(), "--device", "cpu", "--dino-weights", "random:3", "experiment.output_dir=o"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--vgg16-weights") && err.contains("vgg16-397923af.pth"), "{err}");
    assert!(!tmp.path().join("o").exists(), "a refused run wrote its output_dir");
}
