//! Evaluation: the commands `sftok-eval recon`, `rfid` and `fid` (+ the hidden benchmarks), the
//! reconstruction evaluator the trainer calls periodically, and the ADM-compatible metrics on
//! Inception features underneath (evaluation.md §1–2): streaming float64 statistics, Fréchet
//! distance, Inception Score, improved precision/recall, and native `.npz` I/O for ADM's
//! sample/reference batches.

pub mod bench;
pub mod features;
pub mod fid;
pub mod frechet;
pub mod inception_score;
pub mod npz;
pub mod prdc;
pub mod recon;
pub mod recon_eval;
pub mod rfid;
pub mod sample;
mod source;
pub mod stats;
