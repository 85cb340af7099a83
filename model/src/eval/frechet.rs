//! Fréchet distance between two Gaussians in float64 (evaluation.md §1.5, §2.4):
//! `|μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr sqrt(Σ1 Σ2)`.
//!
//! Only the trace of the matrix square root is needed, and it equals `Σ sqrt(λ_i)` over the
//! eigenvalues of `Σ1 Σ2`, which are those of the symmetric `Fᵀ Σ2 F` for any factor
//! `Σ1 = F Fᵀ`. So no `sqrtm` (Schur decomposition) is computed:
//! * `F` = Cholesky factor of Σ1 when Σ1 is positive definite (the usual 50k-sample case), then one
//!   eigenvalues-only symmetric decomposition — several times faster than scipy's `sqrtm`;
//! * otherwise (singular Σ1, e.g. fewer samples than dimensions) `F = Σ1^½` from a symmetric
//!   eigendecomposition with negative round-off eigenvalues clamped to 0.
//!
//! Negative eigenvalues of `Fᵀ Σ2 F` are round-off of zero eigenvalues and contribute 0 — what
//! taking `real(sqrtm(…))` amounts to in scipy. No ε·I is added up front (it would shift a
//! singular case's value, see the frechet fixture); ADM's ε retry is kept for non-finite results.

use super::stats::Stats;
use anyhow::{Result, bail, ensure};
use tch::{Kind, Tensor};

/// ADM's / pytorch-fid's regulariser for the retry after a non-finite result.
pub const RETRY_EPS: f64 = 1e-6;

/// The distance and its parts, for reports.
#[derive(Debug, Clone, Copy)]
pub struct Frechet {
    pub value: f64,
    /// `tr sqrt(Σ1 Σ2)`.
    pub trace_sqrt_product: f64,
    /// Whether Σ1 was singular (eigendecomposition route instead of Cholesky).
    pub singular: bool,
    /// Whether the ε·I retry was needed (a warning condition).
    pub eps_retry: bool,
}

/// `tr sqrt(s1 s2)` for symmetric positive semi-definite float64 `[d, d]` matrices; also says
/// whether `s1` was singular.
pub fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> (f64, bool) {
    let _guard = tch::no_grad_guard();
    let (chol, info) = s1.linalg_cholesky_ex(false, false);
    let singular = info.int64_value(&[]) != 0;
    let factor = if singular {
        let (lambda, v) = s1.linalg_eigh("L");
        v * lambda.clamp_min(0.0).sqrt().unsqueeze(0) // V diag(√λ): F Fᵀ = Σ1
    } else {
        chol
    };
    let m = factor.tr().matmul(s2).matmul(&factor);
    let m = (&m + m.tr()) / 2.0; // exact symmetry for the symmetric solver
    let lambda = m.linalg_eigvalsh("L");
    (lambda.clamp_min(0.0).sqrt().sum(Kind::Double).double_value(&[]), singular)
}

/// Fréchet distance of two statistics (any dimension, float64 on the CPU).
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<Frechet> {
    ensure!(
        a.mu.size() == b.mu.size() && a.sigma.size() == b.sigma.size(),
        "statistics of different dimensions: mu {:?} vs {:?}, sigma {:?} vs {:?}",
        a.mu.size(),
        b.mu.size(),
        a.sigma.size(),
        b.sigma.size()
    );
    let (mu1, mu2) = (a.mu.to_kind(Kind::Double), b.mu.to_kind(Kind::Double));
    let (s1, s2) = (a.sigma.to_kind(Kind::Double), b.sigma.to_kind(Kind::Double));
    let diff = &mu1 - &mu2;
    let mean_term = diff.dot(&diff).double_value(&[]);
    let traces = s1.trace().double_value(&[]) + s2.trace().double_value(&[]);
    let (mut tr_covmean, singular) = trace_sqrt_product(&s1, &s2);
    let mut eps_retry = false;
    if !tr_covmean.is_finite() {
        eps_retry = true;
        let off = Tensor::eye(s1.size()[0], (Kind::Double, s1.device())) * RETRY_EPS;
        tr_covmean = trace_sqrt_product(&(&s1 + &off), &(&s2 + &off)).0;
        if !tr_covmean.is_finite() {
            bail!("Fréchet distance is not finite even with ε = {RETRY_EPS} added to the covariances (NaN/Inf statistics?)");
        }
    }
    Ok(Frechet { value: mean_term + traces - 2.0 * tr_covmean, trace_sqrt_product: tr_covmean, singular, eps_retry })
}
