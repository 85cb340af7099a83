//! Streaming feature statistics in float64: mean and unbiased covariance (divisor N − 1, as
//! `numpy.cov` and both evaluators), without ever holding all features.
//!
//! Moments are accumulated about a fixed shift `c` (the first batch's mean): `t = Σ(x − c)`,
//! `S = Σ(x − c)(x − c)ᵀ`. Covariance is shift-invariant, and centring first avoids the
//! cancellation of the raw `S − t tᵀ/N` formula when means are large against the spread.

use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor};

/// Mean `[d]` and covariance `[d, d]`, float64 on the CPU.
pub struct Stats {
    pub mu: Tensor,
    pub sigma: Tensor,
}

impl Stats {
    pub fn dim(&self) -> i64 {
        self.mu.size()[0]
    }
}

pub struct RunningStats {
    n: u64,
    /// `[d]`, `None` until the first batch.
    shift: Option<Tensor>,
    /// `[d]` Σ(x − c).
    sum: Tensor,
    /// `[d, d]` Σ(x − c)(x − c)ᵀ.
    sum_outer: Tensor,
}

impl RunningStats {
    pub fn new(dim: i64) -> Self {
        let opts = (Kind::Double, Device::Cpu);
        RunningStats { n: 0, shift: None, sum: Tensor::zeros([dim], opts), sum_outer: Tensor::zeros([dim, dim], opts) }
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn dim(&self) -> i64 {
        self.sum.size()[0]
    }

    /// Adds a batch `[B, d]` (any float dtype or device; converted exactly to float64).
    pub fn update(&mut self, feats: &Tensor) -> Result<()> {
        let _guard = tch::no_grad_guard();
        ensure!(
            feats.dim() == 2 && feats.size()[1] == self.dim(),
            "statistics of {}-d features got a batch of shape {:?}",
            self.dim(),
            feats.size()
        );
        let b = feats.size()[0];
        if b == 0 {
            return Ok(());
        }
        let x = feats.to_device(Device::Cpu).to_kind(Kind::Double);
        let shift = self.shift.get_or_insert_with(|| x.mean_dim(0, false, Kind::Double));
        let centred = x - &*shift;
        self.sum += centred.sum_dim_intlist(0, false, Kind::Double);
        self.sum_outer += centred.tr().matmul(&centred);
        self.n += b as u64;
        Ok(())
    }

    /// Adds another accumulator's samples (e.g. from another process or shard).
    pub fn merge(&mut self, other: &RunningStats) -> Result<()> {
        ensure!(self.dim() == other.dim(), "cannot merge {}-d and {}-d statistics", self.dim(), other.dim());
        let Some(other_shift) = &other.shift else { return Ok(()) };
        let Some(shift) = &self.shift else {
            self.n = other.n;
            self.shift = Some(other_shift.copy());
            self.sum = other.sum.copy();
            self.sum_outer = other.sum_outer.copy();
            return Ok(());
        };
        // Re-centre the other's moments on our shift: x − c = (x − c') + δ with δ = c' − c.
        let delta = other_shift - shift;
        let n2 = other.n as f64;
        let t2 = &other.sum;
        self.sum_outer += &other.sum_outer
            + t2.outer(&delta)
            + delta.outer(t2)
            + delta.outer(&delta) * n2;
        self.sum += t2 + &delta * n2;
        self.n += other.n;
        Ok(())
    }

    /// μ = c + t/N, Σ = (S − t tᵀ/N)/(N − 1). Needs N ≥ 2.
    pub fn finish(&self) -> Result<Stats> {
        ensure!(self.n >= 2, "a covariance needs at least 2 samples, got {}", self.n);
        let shift = self.shift.as_ref().expect("n ≥ 2 implies a first batch");
        let n = self.n as f64;
        let mu = shift + &self.sum / n;
        let sigma = (&self.sum_outer - self.sum.outer(&self.sum) / n) / (n - 1.0);
        Ok(Stats { mu, sigma })
    }
}
