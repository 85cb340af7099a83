//! Inception Score, streamed over class-probability batches, in both definitions:
//! * ADM (evaluation.md §2.5): consecutive chunks of `split_size` rows (5,000 for published
//!   numbers), per chunk `exp(mean_rows Σ_c p (log p − log q))` with `q` the chunk's mean, then
//!   the mean over chunks. No epsilon; `0·log 0` is taken as 0 (numpy would give NaN, which
//!   needs a float32 probability to underflow to exactly 0).
//! * the reference evaluator (§1.6): one split of all N, ε = 1e-16 inside both logs.
//!
//! Per chunk only `Σ_rows Σ_c p log p` and the column sums are needed, because
//! `Σ_rows Σ_c p log q = Σ_c P_c log q_c`; nothing of size N is kept.

use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor};

/// ADM's split size.
pub const ADM_SPLIT_SIZE: usize = 5000;
/// The reference evaluator's epsilon.
pub const REFERENCE_EPS: f64 = 1e-16;

/// Σ p log p and column sums of one group of rows.
struct Moments {
    n: usize,
    plogp: f64,
    col_sum: Tensor,
}

impl Moments {
    fn new(classes: i64) -> Self {
        Moments { n: 0, plogp: 0.0, col_sum: Tensor::zeros([classes], (Kind::Double, Device::Cpu)) }
    }

    /// `exp((Σ p log p − Σ_c P_c log(P_c/n + eps)) / n)`.
    fn score(&self, eps: f64) -> f64 {
        let n = self.n as f64;
        let cross = self.col_sum.xlogy(&(&self.col_sum / n + eps)).sum(Kind::Double).double_value(&[]);
        ((self.plogp - cross) / n).exp()
    }
}

pub struct InceptionScore {
    split_size: usize,
    classes: i64,
    /// ADM chunk in progress.
    chunk: Moments,
    /// Scores of the completed ADM chunks.
    chunk_scores: Vec<f64>,
    /// All rows, for the reference evaluator's single split (ε inside the log of p).
    all: Moments,
}

impl InceptionScore {
    pub fn new(classes: i64, split_size: usize) -> Self {
        assert!(split_size > 0, "split size must be positive");
        InceptionScore {
            split_size,
            classes,
            chunk: Moments::new(classes),
            chunk_scores: Vec::new(),
            all: Moments::new(classes),
        }
    }

    pub fn count(&self) -> usize {
        self.all.n
    }

    /// Adds class probabilities `[B, classes]` (rows sum to 1), in sample order.
    pub fn update(&mut self, probs: &Tensor) -> Result<()> {
        let _guard = tch::no_grad_guard();
        ensure!(
            probs.dim() == 2 && probs.size()[1] == self.classes,
            "Inception Score over {} classes got probabilities of shape {:?}",
            self.classes,
            probs.size()
        );
        let p = probs.to_device(Device::Cpu).to_kind(Kind::Double);
        let rows = p.size()[0] as usize;
        self.all.n += rows;
        self.all.plogp += p.xlogy(&(&p + REFERENCE_EPS)).sum(Kind::Double).double_value(&[]);
        self.all.col_sum += p.sum_dim_intlist(0, false, Kind::Double);
        let mut start = 0;
        while start < rows {
            let take = (self.split_size - self.chunk.n).min(rows - start);
            let part = p.narrow(0, start as i64, take as i64);
            self.chunk.n += take;
            self.chunk.plogp += part.xlogy(&part).sum(Kind::Double).double_value(&[]);
            self.chunk.col_sum += part.sum_dim_intlist(0, false, Kind::Double);
            if self.chunk.n == self.split_size {
                self.chunk_scores.push(self.chunk.score(0.0));
                self.chunk = Moments::new(self.classes);
            }
            start += take;
        }
        Ok(())
    }

    /// ADM's IS: mean over the chunks (the last one may be shorter).
    pub fn adm(&self) -> Result<f64> {
        ensure!(self.all.n > 0, "Inception Score of no samples");
        let mut scores = self.chunk_scores.clone();
        if self.chunk.n > 0 {
            scores.push(self.chunk.score(0.0));
        }
        Ok(scores.iter().sum::<f64>() / scores.len() as f64)
    }

    /// The reference evaluator's IS: one split over all samples, ε = 1e-16.
    pub fn reference(&self) -> Result<f64> {
        ensure!(self.all.n > 0, "Inception Score of no samples");
        Ok(self.all.score(REFERENCE_EPS))
    }
}
