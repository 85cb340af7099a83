//! Helpers shared by the model crate's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use tch::{Kind, Tensor};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("../shared/fixtures")
}

/// The project venv's Python (tools/setup.sh), used as a test oracle.
pub fn python() -> Command {
    Command::new(python_path())
}

pub fn run_python(script: &str, args: &[&str]) {
    let out = python().arg("-c").arg(script).args(args).output().expect("spawn python");
    assert!(out.status.success(), "python oracle failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Loads a fixture file: all tensors by name.
pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name).join(format!("{name}.safetensors"));
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// The sidecar JSON of a fixture.
pub fn sidecar(name: &str) -> serde_json::Value {
    let path = fixtures().join(name).join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// max |a − b| in float64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs().max().double_value(&[])
}

/// Asserts `got` is within the sidecar's suggested_atol for `expect.<key>`.
pub fn assert_close(sidecar: &serde_json::Value, key: &str, got: &Tensor, expect: &Tensor) {
    let tol = sidecar["tolerances"][key]["suggested_atol"].as_f64().unwrap_or_else(|| panic!("no tolerance for {key}"));
    let d = max_abs_diff(got, expect);
    assert!(d <= tol, "{key}: max abs diff {d:e} > tolerance {tol:e}");
    eprintln!("{key}: max abs diff {d:.3e} (tolerance {tol:.0e})");
}

/// libtorch's default generator is global: tests that seed it must not interleave.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// --- Fixture access by key and explicit tolerances (metric and Inception tests).


/// `suggested_atol` of `key` in the fixture's sidecar.
pub fn tolerance(name: &str, key: &str) -> f64 {
    let path = fixtures().join(name).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("sidecar json");
    json["tolerances"][key]["suggested_atol"].as_f64().unwrap_or_else(|| panic!("{name}.json: no suggested_atol for {key}"))
}

pub fn get<'a>(fx: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    fx.get(key).unwrap_or_else(|| panic!("fixture has no {key}"))
}

/// The venv's Python (numpy/scipy/torch oracle); a missing venv is a failure, not a skip.
pub fn python_path() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run tools/setup.sh first (it creates the Python oracle venv)", py.display());
    py
}


/// Asserts `max |got − expect| ≤ atol`, printing the error against the tolerance.
pub fn assert_close_atol(name: &str, got: &Tensor, expect: &Tensor, atol: f64) -> f64 {
    let err = max_abs_diff(got, expect);
    println!("{name:<40} max abs err {err:.3e}  (tolerance {atol:.1e})");
    assert!(err <= atol, "{name}: max abs err {err:e} > tolerance {atol:e}");
    err
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}
