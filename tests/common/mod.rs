//! Helpers for the end-to-end tests of the binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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

pub fn python() -> Command {
    let py = repo().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run tools/setup.sh (make test does)", py.display());
    Command::new(py)
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

/// Waits until `path` exists (or panics after `secs`), then kills the child with SIGKILL.
pub fn kill_when_exists(mut child: Child, path: &Path, secs: u64) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process ended ({status}) before {} appeared", path.display());
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{} did not appear in {secs} s", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

/// The fixture's float16 weights renamed to the state-dict keys, plus a random float16 `fc`
/// (the fixture has none), as a converted pytorch-fid checkpoint would look.
pub fn write_fid_fixture_weights(path: &Path) {
    let fixture = repo().join("../shared/fixtures/fid-inception-f16/fid-inception-f16.safetensors");
    let tensors = tch::Tensor::read_safetensors(&fixture).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    let mut sd: Vec<(String, tch::Tensor)> =
        tensors.into_iter().filter_map(|(k, v)| k.strip_prefix("weights.").map(|n| (n.to_string(), v))).collect();
    assert!(sd.iter().all(|(_, t)| t.kind() == tch::Kind::Half));
    tch::manual_seed(1);
    sd.push(("fc.weight".into(), (tch::Tensor::randn([1008, 2048], (tch::Kind::Float, tch::Device::Cpu)) * 0.05).to_kind(tch::Kind::Half)));
    sd.push(("fc.bias".into(), tch::Tensor::zeros([1008], (tch::Kind::Half, tch::Device::Cpu))));
    tch::Tensor::write_safetensors(&sd, path).unwrap();
}
