//! The model tests' shared helpers live in `sftok-testkit-tch` (testkit/tch): fixtures, sidecars,
//! tolerances, the Python oracle. This module only keeps the names `train.rs` uses.
#![allow(unused_imports)]

pub use sftok_testkit_tch::{max_abs_diff, python, repo_root, rng_lock};
