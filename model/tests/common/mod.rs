//! Helpers shared by the parity tests: fixture lookup, the Python oracle, tolerance checks.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// `../shared/fixtures` next to the repository, or `$SFTOK_FIXTURES`.
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("SFTOK_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

pub fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_root().join(name).join(format!("{name}.safetensors"));
    assert!(path.exists(), "fixture {} not found (set SFTOK_FIXTURES to the shared fixtures folder)", path.display());
    Tensor::read_safetensors(&path).expect("read fixture").into_iter().collect()
}

/// `suggested_atol` of `key` in the fixture's sidecar.
pub fn tolerance(name: &str, key: &str) -> f64 {
    let path = fixtures_root().join(name).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("sidecar json");
    json["tolerances"][key]["suggested_atol"].as_f64().unwrap_or_else(|| panic!("{name}.json: no suggested_atol for {key}"))
}

pub fn get<'a>(fx: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    fx.get(key).unwrap_or_else(|| panic!("fixture has no {key}"))
}

/// The venv's Python (numpy/scipy/torch oracle); a missing venv is a failure, not a skip.
pub fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(py.exists(), "{} missing: run tools/setup.sh first (it creates the Python oracle venv)", py.display());
    py
}

/// max |got − expect| (both converted to float64 on the CPU).
pub fn max_abs_diff(got: &Tensor, expect: &Tensor) -> f64 {
    assert_eq!(got.size(), expect.size(), "shape mismatch");
    let d = got.to_device(tch::Device::Cpu).to_kind(Kind::Double) - expect.to_kind(Kind::Double);
    d.abs().max().double_value(&[])
}

/// Asserts `max |got − expect| ≤ atol`, printing the error against the tolerance.
pub fn assert_close(name: &str, got: &Tensor, expect: &Tensor, atol: f64) -> f64 {
    let err = max_abs_diff(got, expect);
    println!("{name:<40} max abs err {err:.3e}  (tolerance {atol:.1e})");
    assert!(err <= atol, "{name}: max abs err {err:e} > tolerance {atol:e}");
    err
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}
