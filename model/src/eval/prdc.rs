//! Improved precision and recall (Kynkäänniemi et al.) as ADM computes them (evaluation.md §2.6):
//! squared Euclidean distances; a point's manifold radius is the (k+1)-th smallest distance to its
//! own set, itself included (k = 3); precision = share of samples inside some reference radius,
//! recall = share of references inside some sample radius.
//!
//! Distances are computed in float32 in row blocks (ADM tries float16 first and falls back to
//! float32; the memberships of its tests agree in both), so memory stays at one block × N.

use anyhow::{Result, ensure};
use tch::{Kind, Tensor};

/// ADM's neighbourhood size.
pub const ADM_K: i64 = 3;
/// Rows per distance block.
const BLOCK: i64 = 1024;

pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
    /// `[N_ref]` float32.
    pub radii_ref: Tensor,
    /// `[N_smp]` float32.
    pub radii_smp: Tensor,
    /// `[N_smp]` bool: sample inside some reference radius.
    pub smp_in_ref_manifold: Tensor,
    /// `[N_ref]` bool: reference inside some sample radius.
    pub ref_in_smp_manifold: Tensor,
}

/// `max(|u|² − 2 u·v + |v|², 0)` for rows `u` of `a` `[m, d]` and `v` of `b` `[n, d]` → `[m, n]`.
fn squared_distances(a: &Tensor, b: &Tensor) -> Tensor {
    let na = a.square().sum_dim_intlist(1, true, Kind::Float);
    let nb = b.square().sum_dim_intlist(1, true, Kind::Float).tr();
    (na - a.matmul(&b.tr()) * 2.0 + nb).clamp_min(0.0)
}

/// (k+1)-th smallest squared distance of every row of `x` to all rows of `x` (self included).
fn radii(x: &Tensor, k: i64) -> Tensor {
    let blocks: Vec<Tensor> = x
        .split(BLOCK, 0)
        .iter()
        .map(|rows| squared_distances(rows, x).topk(k + 1, 1, false, true).0.select(1, k))
        .collect();
    Tensor::cat(&blocks, 0)
}

/// For every row `u` of `points`: does some row `v` of `centres` have `D(u, v) ≤ radius(v)`?
fn inside_some_ball(points: &Tensor, centres: &Tensor, radius: &Tensor) -> Tensor {
    let r = radius.unsqueeze(0);
    let blocks: Vec<Tensor> =
        points.split(BLOCK, 0).iter().map(|rows| squared_distances(rows, centres).le_tensor(&r).any_dim(1, false)).collect();
    Tensor::cat(&blocks, 0)
}

/// ADM precision/recall of `samples` `[N_smp, d]` against `reference` `[N_ref, d]` features.
pub fn precision_recall(reference: &Tensor, samples: &Tensor, k: i64) -> Result<PrecisionRecall> {
    let _guard = tch::no_grad_guard();
    ensure!(
        reference.dim() == 2 && samples.dim() == 2 && reference.size()[1] == samples.size()[1],
        "precision/recall needs two [N, d] feature sets of the same d, got {:?} and {:?}",
        reference.size(),
        samples.size()
    );
    for (name, x) in [("reference", reference), ("sample", samples)] {
        ensure!(x.size()[0] > k, "precision/recall with k = {k} needs more than {k} {name} points, got {}", x.size()[0]);
    }
    let reference = reference.to_kind(Kind::Float);
    let samples = samples.to_kind(Kind::Float);
    let radii_ref = radii(&reference, k);
    let radii_smp = radii(&samples, k);
    let smp_in_ref_manifold = inside_some_ball(&samples, &reference, &radii_ref);
    let ref_in_smp_manifold = inside_some_ball(&reference, &samples, &radii_smp);
    let share = |t: &Tensor| t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    Ok(PrecisionRecall {
        precision: share(&smp_in_ref_manifold),
        recall: share(&ref_in_smp_manifold),
        radii_ref,
        radii_smp,
        smp_in_ref_manifold,
        ref_in_smp_manifold,
    })
}
