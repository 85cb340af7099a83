//! [`sftok_testkit`] (re-exported whole) plus the parts that need libtorch: fixture tensors
//! ([`Fixture`], [`load_tensors`]) and comparisons against the sidecar's tolerances. For the test
//! folders of the packages that link libtorch (`model/tests`, `tests/`).

pub use sftok_testkit::*;

use std::collections::HashMap;
use tch::{Kind, Tensor};

/// All tensors of `<fixtures>/<name>/<name>.safetensors`, by name.
pub fn load_tensors(name: &str) -> HashMap<String, Tensor> {
    let path = safetensors_path(name);
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// `max |a − b|` in float64 (shapes must agree).
#[track_caller]
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// `max |t|` in float64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// A 0-d (or one-element) tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).reshape([-1]).double_value(&[0])
}

/// Asserts `max |got − expect| ≤ atol`, printing the error against the tolerance; returns the error.
#[track_caller]
pub fn assert_close_atol(name: &str, got: &Tensor, expect: &Tensor, atol: f64) -> f64 {
    let err = max_abs_diff(got, expect);
    println!("{name:<50} max abs err {err:.3e}  (tolerance {atol:.1e})");
    assert!(err <= atol, "{name}: max abs err {err:e} > tolerance {atol:e}");
    err
}

/// Asserts `got` matches `expect` within the sidecar's `bound` for `key` (shapes must agree).
#[track_caller]
pub fn assert_within(side: &Sidecar, key: &str, bound: Bound, got: &Tensor, expect: &Tensor) -> f64 {
    side.tolerance(key).check(bound, max_abs_diff(got, expect), max_abs(expect))
}

/// Asserts `got` is within the sidecar's `suggested_atol` for `key`.
#[track_caller]
pub fn assert_close(side: &Sidecar, key: &str, got: &Tensor, expect: &Tensor) -> f64 {
    assert_within(side, key, Bound::Atol, got, expect)
}

/// Asserts exact equality (shape, and values after converting `got` to `expect`'s dtype).
#[track_caller]
pub fn assert_exact(key: &str, got: &Tensor, expect: &Tensor) {
    assert_eq!(got.size(), expect.size(), "{key}: shape");
    assert!(got.to_kind(expect.kind()).equal(expect), "{key}: differs from the reference\n got {got}\n expected {expect}");
}

/// A fixture: its sidecar and all its tensors.
pub struct Fixture {
    pub side: Sidecar,
    pub t: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        Fixture { side: Sidecar::load(name), t: load_tensors(name) }
    }

    pub fn name(&self) -> &str {
        self.side.name()
    }

    /// The tensor `key`; panics naming the fixture if it has none.
    pub fn get(&self, key: &str) -> &Tensor {
        self.t.get(key).unwrap_or_else(|| panic!("fixture {} has no tensor {key}", self.side.name()))
    }

    /// The tensors under `prefix` (e.g. `"weights."`) with the prefix removed, sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.t.iter().filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.shallow_clone()))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Within `bound` of the sidecar's tolerances for `key`.
    #[track_caller]
    pub fn assert_within(&self, key: &str, bound: Bound, got: &Tensor) -> f64 {
        assert_within(&self.side, key, bound, got, self.get(key))
    }

    /// Within `suggested_atol`.
    #[track_caller]
    pub fn assert_close(&self, key: &str, got: &Tensor) -> f64 {
        self.assert_within(key, Bound::Atol, got)
    }

    /// Within `suggested_rel` (normwise: max |Δ| / max |expect|).
    #[track_caller]
    pub fn assert_close_rel(&self, key: &str, got: &Tensor) -> f64 {
        self.assert_within(key, Bound::Rel, got)
    }

    /// Within `same_branch_suggested_atol` (stage-3 fixtures).
    #[track_caller]
    pub fn assert_close_same_branch(&self, key: &str, got: &Tensor) -> f64 {
        self.assert_within(key, Bound::SameBranchAtol, got)
    }

    /// Exactly equal.
    #[track_caller]
    pub fn assert_exact(&self, key: &str, got: &Tensor) {
        assert_exact(key, got, self.get(key))
    }

    /// As the sidecar says for `key`: exact equality where it says `exact`, else `suggested_atol`.
    #[track_caller]
    pub fn assert_matches(&self, key: &str, got: &Tensor) {
        if self.side.tolerance(key).exact {
            self.assert_exact(key, got);
        } else {
            self.assert_close(key, got);
        }
    }
}
