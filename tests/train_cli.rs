//! `sftok-train` end to end on the tiny config with real shards and precomputed proxy codes:
//! 6 steps straight vs 3 steps + kill -9 + `--resume auto` → identical weights, EMA, optimizer
//! state, trainer state and loss log.

mod common;

use common::{bin, metric_rows as losses, run_ok, shards};
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

#[test]
fn a_config_written_for_another_stage_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |stage: u32| common::repo().join(format!("configs/tiny/sftok_tiny_stage{stage}.yaml"));
    for (sub, cfg, extra, key) in [
        ("stage1", config(2), None, "training.single_step_generation"),
        ("stage2", config(1), None, "training.single_step_generation"),
        ("stage1", config(1), Some("training.guided_mask=True"), "training.guided_mask"),
    ] {
        let mut cmd = bin("sftok-train");
        cmd.current_dir(tmp.path()).args([sub, "--config", cfg.to_str().unwrap(), "--device", "cpu"]);
        cmd.args(extra);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub} accepted {}: {err}", cfg.display());
        assert!(err.contains(key) && err.contains(&format!("sftok-train {sub}")), "{sub} {}: {err}", cfg.display());
    }
}

const PY_EMA_EVAL: &str = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0}); ea.Reload()
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"] if t.startswith("ema_eval/")}))
"#;

#[test]
fn eval_every_logs_ema_evaluation_that_tensorboard_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("fake");
    run_ok(bin("sftok-prep").args(["synth", "--out", data.to_str().unwrap(), "--classes", "2", "--per-class", "4", "--val", "4", "--seed", "1"]));
    run_ok(bin("sftok-prep").args(["shard", data.to_str().unwrap(), "--out", dir.join("shards").to_str().unwrap(), "--split", "all", "--shard-size", "4"]));
    let weights = dir.join("inception.safetensors");
    common::write_fid_fixture_weights(&weights);
    let mut cmd = tiny_stage1(dir);
    cmd.args(["--teacher", "random:0", "--fid-weights", weights.to_str().unwrap(), "--eval-max-images", "4",
              "dataset.params.train_proxy_codes_path=", "dataset.params.train_shards_path_or_url=shards/train",
              "dataset.params.eval_shards_path_or_url=shards/val", "experiment.output_dir=run", "training.max_train_steps=4",
              "experiment.eval_every=2", "training.per_gpu_batch_size=4"]);
    let text = run_ok(&mut cmd);
    assert!(text.contains("step 2: evaluation") && text.contains("step 4: evaluation"), "{text}");
    let out = sftok_testkit_tch::python().arg("-c").arg(PY_EMA_EVAL).arg(dir.join("run/logs")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|r| r.get("ema_eval/PSNR").is_some()).collect();
    assert_eq!(rows.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
    for key in ["ema_eval/PSNR", "ema_eval/CodebookUsage", "ema_eval/CodebookEntropy", "ema_eval/rFID", "ema_eval/InceptionScore"] {
        let series = tb[key].as_array().unwrap_or_else(|| panic!("TensorBoard has no {key}: {tb}"));
        assert_eq!(series.iter().map(|p| p[0].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4], "{key}");
        for (point, row) in series.iter().zip(&rows) {
            let (v, j) = (point[1].as_f64().unwrap(), row[key].as_f64().unwrap());
            assert!((v - j).abs() <= 1e-5 * j.abs().max(1.0), "{key}: TensorBoard {v} vs metrics.jsonl {j}");
            assert!(v.is_finite(), "{key} = {v}");
        }
    }
    let usage = rows[0]["ema_eval/CodebookUsage"].as_f64().unwrap();
    let entropy = rows[0]["ema_eval/CodebookEntropy"].as_f64().unwrap();
    let psnr = rows[0]["ema_eval/PSNR"].as_f64().unwrap();
    assert!(usage > 0.0 && usage <= 1.0, "usage {usage}");
    assert!(entropy >= 0.0, "entropy {entropy}");
    assert!(psnr > 0.0 && psnr < 60.0, "PSNR {psnr}");
    assert!(rows[0]["ema_eval/rFID"].as_f64().unwrap() >= 0.0);
    assert!(dir.join("run/loss.png").is_file());
}
