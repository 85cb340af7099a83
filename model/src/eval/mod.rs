//! Evaluation metrics on Inception features, ADM-compatible (evaluation.md §1–2):
//! streaming float64 statistics, Fréchet distance, Inception Score, improved precision/recall,
//! and native `.npz` I/O for ADM's sample/reference batches.

pub mod features;
pub mod frechet;
pub mod inception_score;
pub mod npz;
pub mod prdc;
pub mod stats;
