//! Helpers for the end-to-end tests of the binaries (the binaries, fake ImageNet shards, process
//! control). Paths, fixtures, sidecars and the Python oracle are in `sftok-testkit-tch` (testkit/).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The repository root (kept under this name for `train_cli.rs`).
pub use sftok_testkit_tch::repo_root as repo;

pub fn bin(name: &str) -> Command {
    let path = match name {
        "sftok-prep" => env!("CARGO_BIN_EXE_sftok-prep"),
        "sftok-train" => env!("CARGO_BIN_EXE_sftok-train"),
        "sftok-eval" => env!("CARGO_BIN_EXE_sftok-eval"),
        _ => unreachable!(),
    };
    let mut cmd = Command::new(path);
    // The binaries must find libtorch through their rpath alone.
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

/// Runs the command, asserting success (both streams shown otherwise).
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// As [`run`], returning stdout and stderr together as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A fake ImageNet with train shards of `shard_size` images.
pub fn shards(dir: &Path, classes: usize, per_class: usize, shard_size: usize) -> PathBuf {
    let data = dir.join("fake");
    run_ok(bin("sftok-prep").args(["synth", "--out", data.to_str().unwrap(), "--classes", &classes.to_string(),
        "--per-class", &per_class.to_string(), "--val", "0", "--seed", "1"]));
    let out = dir.join("shards");
    run_ok(bin("sftok-prep").args(["shard", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--split", "train",
        "--shard-size", &shard_size.to_string()]));
    out.join("train")
}

/// Waits until `path` exists; panics if the child ends first or `secs` pass.
pub fn wait_until_exists(child: &mut Child, path: &Path, secs: u64) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process ended ({status}) before {} appeared", path.display());
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{} did not appear in {secs} s", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` exists (or panics after `secs`), then kills the child with SIGKILL.
pub fn kill_when_exists(mut child: Child, path: &Path, secs: u64) {
    wait_until_exists(&mut child, path, secs);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

/// The fid-inception-f16 fixture's float16 weights renamed to the state-dict keys, plus a random
/// float16 `fc` (the fixture has none) over the pool3 features, as a converted pytorch-fid
/// checkpoint would look.
pub fn write_fid_fixture_weights(path: &Path) {
    use sftok_testkit_tch::{self as tk, Sidecar};
    use tch::{Device, Kind, Tensor};
    const FX: &str = "fid-inception-f16";
    let mut sd: Vec<(String, Tensor)> =
        tk::load_tensors(FX).into_iter().filter_map(|(k, v)| k.strip_prefix("weights.").map(|n| (n.to_string(), v))).collect();
    assert!(sd.iter().all(|(_, t)| t.kind() == Kind::Half));
    let classes = sftok_model::inception::FidInceptionConfig::default().num_classes;
    let width = Sidecar::load(FX).dim("expect.pytorch_fid.pool3", 1);
    tch::manual_seed(1);
    sd.push(("fc.weight".into(), (Tensor::randn([classes, width], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::Half)));
    sd.push(("fc.bias".into(), Tensor::zeros([classes], (Kind::Half, Device::Cpu))));
    Tensor::write_safetensors(&sd, path).unwrap();
}

/// Metric rows without the wall-clock throughput.
pub fn metric_rows(path: &Path) -> Vec<serde_json::Value> {
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
