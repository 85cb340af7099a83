//! Test support shared by the three test folders (`model/tests`, `pipeline/tests`, `tests/`):
//!
//! * paths: the repository root, the shared spec, the fixture directory (`SFTOK_FIXTURES=DIR` when
//!   set, else `<repo>/../shared/fixtures`; a missing fixture file is a panic naming the path and
//!   the variable);
//! * fixture sidecars ([`Sidecar`]): seeds, config, tensor shapes and names, and the per-key
//!   [`Tolerance`] (`suggested_atol` / `suggested_rel` / `exact`, the stage-3 `same_branch_*`);
//! * the Python oracle: the venv's `.venv/bin/python` running snippets ([`python`], [`run_python`]);
//! * [`rng_lock`] for tests that seed libtorch's global generator.
//!
//! No libtorch here (the pipeline's tests use this crate); fixture tensors and tensor comparisons
//! are in `sftok-testkit-tch` (`testkit/tch`), which re-exports everything of this crate.
//!
//! Fixture tests take every seed, shape, count and split size from the sidecar (or from the loaded
//! tensors), never from constants copied from one fixture set: another set with other numbers is
//! run against the same tests through `SFTOK_FIXTURES`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable that points the fixture tests at another fixture directory.
pub const FIXTURES_ENV: &str = "SFTOK_FIXTURES";

// ---------------------------------------------------------------------------------------------
// Paths

/// The workspace root (the directory of the top-level `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent").to_path_buf()
}

/// `<repo>/../shared/spec` (key lists, toolchain notes).
pub fn spec_dir() -> PathBuf {
    repo_root().join("../shared/spec")
}

/// The fixture directory: `$SFTOK_FIXTURES` when set and non-empty, else `<repo>/../shared/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os(FIXTURES_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("../shared/fixtures"),
    }
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "fixture file {} is missing (fixture directory {}; {FIXTURES_ENV}={} — set {FIXTURES_ENV}=DIR to use another \
         fixture set, default <repo>/../shared/fixtures)",
        path.display(),
        fixtures_dir().display(),
        std::env::var(FIXTURES_ENV).unwrap_or_else(|_| "(unset)".into()),
    );
    path
}

/// `<fixtures>/<name>/` (must exist).
pub fn fixture_dir(name: &str) -> PathBuf {
    require(fixtures_dir().join(name))
}

/// `<fixtures>/<name>/<name>.safetensors` (must exist).
pub fn safetensors_path(name: &str) -> PathBuf {
    require(fixtures_dir().join(name).join(format!("{name}.safetensors")))
}

/// `<fixtures>/<name>/<name>.json` (must exist).
pub fn sidecar_path(name: &str) -> PathBuf {
    require(fixtures_dir().join(name).join(format!("{name}.json")))
}

// ---------------------------------------------------------------------------------------------
// Sidecars

/// A fixture's sidecar JSON. Every accessor panics with the fixture name and the JSON path when a
/// value is missing or of the wrong type; `side["key"]` indexes the top level like a
/// `serde_json::Value` (`Null` when absent).
#[derive(Clone, Debug)]
pub struct Sidecar {
    name: String,
    path: PathBuf,
    json: Value,
}

impl Sidecar {
    /// Reads `<fixtures>/<name>/<name>.json`.
    pub fn load(name: &str) -> Sidecar {
        let path = sidecar_path(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        Sidecar { name: name.to_string(), path, json }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole JSON document.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The value at a JSON pointer (`"/config/model/vq_model/codebook_size"`); panics if absent.
    pub fn at(&self, pointer: &str) -> &Value {
        self.json.pointer(pointer).unwrap_or_else(|| panic!("{}: no {pointer}", self.path.display()))
    }

    pub fn i64_at(&self, pointer: &str) -> i64 {
        self.at(pointer).as_i64().unwrap_or_else(|| panic!("{}: {pointer} is not an integer", self.path.display()))
    }

    pub fn usize_at(&self, pointer: &str) -> usize {
        usize::try_from(self.i64_at(pointer)).unwrap_or_else(|_| panic!("{}: {pointer} is negative", self.path.display()))
    }

    pub fn f64_at(&self, pointer: &str) -> f64 {
        self.at(pointer).as_f64().unwrap_or_else(|| panic!("{}: {pointer} is not a number", self.path.display()))
    }

    /// The `config` section (the reference's configuration at the fixture's size).
    pub fn config(&self) -> &Value {
        self.at("/config")
    }

    /// `seeds[name]`: the seed set immediately before a stochastic call.
    pub fn seed(&self, name: &str) -> i64 {
        self.i64_at(&format!("/seeds/{name}"))
    }

    /// Names of the tensors in the file (`tensors` section) that start with `prefix`, sorted.
    pub fn tensor_names(&self, prefix: &str) -> Vec<String> {
        let tensors = self.at("/tensors").as_object().unwrap_or_else(|| panic!("{}: tensors is not a map", self.path.display()));
        let mut names: Vec<String> = tensors.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        names.sort();
        names
    }

    /// `tensors[key].shape`.
    pub fn shape(&self, key: &str) -> Vec<i64> {
        let shape = self
            .json
            .get("tensors")
            .and_then(|t| t.get(key))
            .and_then(|t| t.get("shape"))
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{}: no tensors[{key:?}].shape", self.path.display()));
        shape.iter().map(|d| d.as_i64().expect("shape entries are integers")).collect()
    }

    /// `tensors[key].shape[axis]`.
    pub fn dim(&self, key: &str, axis: usize) -> i64 {
        let shape = self.shape(key);
        *shape.get(axis).unwrap_or_else(|| panic!("{}: {key} has shape {shape:?}, no axis {axis}", self.path.display()))
    }

    /// The tolerance entry of an expected key (`tolerances[key]`).
    pub fn tolerance(&self, key: &str) -> Tolerance {
        let entry = self
            .json
            .get("tolerances")
            .and_then(|t| t.get(key))
            .unwrap_or_else(|| panic!("{}: no tolerances[{key:?}]", self.path.display()));
        Tolerance::from_entry(&format!("{}: {key}", self.name), entry)
    }
}

impl std::ops::Index<&str> for Sidecar {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        &self.json[key]
    }
}

// ---------------------------------------------------------------------------------------------
// Tolerances

/// Which of a key's tolerances a comparison uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `max |got − expect| ≤ suggested_atol`.
    Atol,
    /// `max |got − expect| / max |expect| ≤ suggested_rel` (normwise).
    Rel,
    /// `same_branch_suggested_atol` (stage-3 fixtures: same ReLU / max-pool decisions as the reference).
    SameBranchAtol,
    /// `same_branch_suggested_rel`.
    SameBranchRel,
}

/// One `tolerances[key]` entry of a sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct Tolerance {
    /// `"<fixture>: <key>"`, for messages.
    pub what: String,
    /// Integer / bool outputs: exact equality.
    pub exact: bool,
    pub atol: Option<f64>,
    pub rel: Option<f64>,
    pub same_branch_atol: Option<f64>,
    pub same_branch_rel: Option<f64>,
    /// Zero in exact arithmetic (stored values are round-off): compare with the atol only.
    pub zero_in_exact_arithmetic: bool,
}

impl Tolerance {
    fn from_entry(what: &str, entry: &Value) -> Tolerance {
        let f = |k: &str| entry.get(k).and_then(Value::as_f64);
        Tolerance {
            what: what.to_string(),
            exact: entry.get("exact").and_then(Value::as_bool).unwrap_or(false),
            atol: f("suggested_atol"),
            rel: f("suggested_rel"),
            same_branch_atol: f("same_branch_suggested_atol"),
            same_branch_rel: f("same_branch_suggested_rel"),
            zero_in_exact_arithmetic: entry.get("zero_in_exact_arithmetic").and_then(Value::as_bool).unwrap_or(false),
        }
    }

    /// The value of one bound; panics if the sidecar has none for this key.
    #[track_caller]
    pub fn bound(&self, bound: Bound) -> f64 {
        let (v, field) = match bound {
            Bound::Atol => (self.atol, "suggested_atol"),
            Bound::Rel => (self.rel, "suggested_rel"),
            Bound::SameBranchAtol => (self.same_branch_atol, "same_branch_suggested_atol"),
            Bound::SameBranchRel => (self.same_branch_rel, "same_branch_suggested_rel"),
        };
        v.unwrap_or_else(|| panic!("{}: the sidecar gives no {field}", self.what))
    }

    /// `suggested_atol`.
    #[track_caller]
    pub fn atol(&self) -> f64 {
        self.bound(Bound::Atol)
    }

    /// `suggested_rel`.
    #[track_caller]
    pub fn rel(&self) -> f64 {
        self.bound(Bound::Rel)
    }

    /// Asserts an observed error against a bound: `max_abs_diff` itself for the atol bounds,
    /// `max_abs_diff / max_abs_expect` for the relative ones. Returns the error it compared.
    #[track_caller]
    pub fn check(&self, bound: Bound, max_abs_diff: f64, max_abs_expect: f64) -> f64 {
        assert!(
            !(self.zero_in_exact_arithmetic && matches!(bound, Bound::Rel | Bound::SameBranchRel)),
            "{}: zero in exact arithmetic, compare with an atol bound only",
            self.what
        );
        let tol = self.bound(bound);
        let err = match bound {
            Bound::Atol | Bound::SameBranchAtol => max_abs_diff,
            Bound::Rel | Bound::SameBranchRel => max_abs_diff / max_abs_expect,
        };
        println!("{:<50} {bound:?} error {err:.3e} (tolerance {tol:.1e})", self.what);
        assert!(err <= tol, "{}: {bound:?} error {err:e} > tolerance {tol:e} (max abs diff {max_abs_diff:e})", self.what);
        err
    }
}

// ---------------------------------------------------------------------------------------------
// Python oracle

/// The project venv's Python (tools/setup.sh makes it): `<repo>/.venv/bin/python`. A missing venv
/// is a failure, not a skip.
pub fn python_path() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(py.exists(), "{} is missing: run tools/setup.sh first (it creates the Python oracle venv; make test does)", py.display());
    py
}

/// A `Command` running the venv's Python.
pub fn python() -> Command {
    Command::new(python_path())
}

/// Runs a Python snippet (`python -c SCRIPT ARGS…`); panics with its stderr on failure; returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = python().arg("-c").arg(script).args(args).output().expect("spawn python");
    assert!(
        out.status.success(),
        "python oracle failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python stdout is UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Misc

/// libtorch's default generator is global: tests of one binary that seed it must not interleave.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_entries_parse_and_check() {
        let entry = serde_json::json!({"suggested_atol": 1e-5, "suggested_rel": 1e-3, "same_branch_suggested_atol": 1e-6});
        let t = Tolerance::from_entry("fx: expect.a", &entry);
        assert!(!t.exact);
        assert_eq!(t.check(Bound::Atol, 5e-6, 1.0), 5e-6);
        assert_eq!(t.check(Bound::Rel, 2e-3, 4.0), 5e-4);
        assert_eq!(t.bound(Bound::SameBranchAtol), 1e-6);
        let exact = Tolerance::from_entry("fx: expect.ids", &serde_json::json!({"exact": true, "note": "ids"}));
        assert!(exact.exact && exact.atol.is_none());
    }

    #[test]
    #[should_panic(expected = "tolerance")]
    fn a_too_large_error_fails() {
        Tolerance::from_entry("fx: k", &serde_json::json!({"suggested_atol": 1e-5})).check(Bound::Atol, 2e-5, 1.0);
    }

    #[test]
    #[should_panic(expected = "same_branch_suggested_rel")]
    fn a_missing_bound_fails() {
        Tolerance::from_entry("fx: k", &serde_json::json!({"suggested_atol": 1e-5})).bound(Bound::SameBranchRel);
    }

    #[test]
    fn sidecar_accessors_name_what_is_missing() {
        let side = Sidecar {
            name: "fx".into(),
            path: "fx.json".into(),
            json: serde_json::json!({"seeds": {"a": 7}, "tensors": {"expect.b": {"shape": [3, 4]}, "grad.w": {"shape": [2]}}}),
        };
        assert_eq!(side.seed("a"), 7);
        assert_eq!(side.shape("expect.b"), [3, 4]);
        assert_eq!(side.dim("expect.b", 1), 4);
        assert_eq!(side.tensor_names("grad."), ["grad.w"]);
        let err = std::panic::catch_unwind(|| side.seed("b")).unwrap_err();
        assert!(err.downcast_ref::<String>().unwrap().contains("/seeds/b"));
    }
}
