//! `sftok-train` end to end on the tiny config with real shards and precomputed proxy codes:
//! 6 steps straight vs 3 steps + kill -9 + `--resume auto` → identical weights, EMA, optimizer
//! state, trainer state and loss log.

mod common;

use common::{bin, run_ok, shards};
use std::path::Path;

/// `sftok-train stage1` of the tiny config on the CPU, run in `dir`.
fn tiny_stage1(dir: &Path) -> std::process::Command {
    let mut c = bin("sftok-train");
    let config = common::repo().join("configs/tiny/sftok_tiny_stage1.yaml");
    c.current_dir(dir).args(["stage1", "--config", config.to_str().unwrap(), "--device", "cpu", "--workers", "1"]);
    c
}

fn stage1(dir: &Path, out: &str) -> std::process::Command {
    let mut c = tiny_stage1(dir);
    c.args([
        &format!("experiment.output_dir={out}"),
        "training.max_train_steps=6",
        "experiment.save_every=3",
        "training.per_gpu_batch_size=4",
        "experiment.log_every=1",
    ]);
    c
}

/// Metric rows without the wall-clock throughput.
fn losses(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("samples/sec");
            v
        })
        .collect()
}

#[test]
fn resume_after_kill_continues_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    shards(dir, 2, 8, 4);
    run_ok(bin("sftok-prep").current_dir(dir).args(["proxy-codes", "--teacher", "random:0", "--shards", "shards/train", "--out",
        "codes/train", "--views", "2", "--resize-shorter", "64", "--crop", "64", "--device", "cpu"]));

    run_ok(&mut stage1(dir, "a"));
    let child = stage1(dir, "b").env("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT", "3").spawn().unwrap();
    common::kill_when_exists(child, &dir.join("b/checkpoint-3/trainer_state.json"), 300);
    assert!(!dir.join("b/checkpoint-6").exists());
    let text = run_ok(&mut stage1(dir, "b"));
    assert!(text.contains("resumed from") && text.contains("at step 3"), "{text}");

    for file in ["model/model.safetensors", "ema_model/model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (dir.join("a/checkpoint-6").join(file), dir.join("b/checkpoint-6").join(file));
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{file} differs after resume");
    }
    let state = |p: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap() };
    assert_eq!(state("a/checkpoint-6/trainer_state.json"), state("b/checkpoint-6/trainer_state.json"));
    let (la, lb) = (losses(&dir.join("a/metrics.jsonl")), losses(&dir.join("b/metrics.jsonl")));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "loss logs differ");
    assert!(std::fs::read(dir.join("a/ema_model/model.safetensors")).unwrap() == std::fs::read(dir.join("b/ema_model/model.safetensors")).unwrap());
}

#[test]
fn missing_codes_and_teacher_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin("sftok-train")
        .current_dir(tmp.path())
        .args(["stage1", "--config", common::repo().join("configs/tiny/sftok_tiny_stage1.yaml").to_str().unwrap(), "--device", "cpu",
               "dataset.params.train_proxy_codes_path="])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train_proxy_codes_path") && err.contains("--teacher"), "{err}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resume_continues_from() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    shards(dir, 2, 8, 4);
    let mut cmd = tiny_stage1(dir);
    cmd.args([
        "--teacher",
        "random:0",
        "dataset.params.train_proxy_codes_path=",
        "experiment.output_dir=run",
        "training.max_train_steps=100000",
        "experiment.save_every=100000",
        "training.per_gpu_batch_size=4",
    ]);
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    let metrics = dir.join("run/metrics.jsonl");
    while std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0) < 3 {
        assert!(t0.elapsed().as_secs() < 300, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ok = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    let ckpts: Vec<String> = std::fs::read_dir(dir.join("run")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-")).collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let step: u64 = ckpts[0]["checkpoint-".len()..].parse().unwrap();
    assert!(step >= 3);
    // The next run picks it up.
    let text = run_ok(cmd.args(["training.max_train_steps=".to_string() + &(step + 2).to_string()]).stdout(std::process::Stdio::piped()));
    assert!(text.contains(&format!("resumed from run/checkpoint-{step} at step {step}")), "{text}");
}
