//! One step of MaskGIT's confidence-based parallel decoding, shared by SFTok's multi-step decoder
//! (proxy codes, ../shared/spec/sftok-model.md §6.4) and the ImageBert generator (image tokens,
//! ../shared/spec/generator-maskgit.md §6.1): Gumbel-max pick at every still-masked position, then
//! the least confident picks are masked again for the next step.

use std::f64::consts::FRAC_PI_2;
use tch::{Kind, Tensor};

/// `g(u) = −log(max(−log(max(u, 1e-20)), 1e-20))`.
pub fn gumbel(u: &Tensor) -> Tensor {
    -(-u.clamp_min(1e-20).log()).clamp_min(1e-20).log()
}

/// Ids [B, L] after step `step` of `steps`, given this step's (guided, annealed) `logits`
/// [B, L, V] and the pick noise `u1` (uniform, the logits' shape; the caller draws it in the
/// layout its reference uses). Draws the confidence noise uniform [B, L] itself, after `u1`.
/// `temp` is the Gumbel temperature `randomize_temperature · (1 − r)`, `r = (step + 1) / steps`.
pub fn reveal(logits: &Tensor, u1: &Tensor, ids: &Tensor, mask_id: i64, step: i64, steps: i64, temp: f64) -> Tensor {
    let (b, l) = ids.size2().expect("ids [B, L]");
    let ratio = (step + 1) as f64 / steps as f64;
    let is_mask = ids.eq(mask_id);
    let sampled = (logits + gumbel(u1) * temp).argmax(-1, false);
    let sampled_logits = logits.gather(-1, &sampled.unsqueeze(-1), false).squeeze_dim(-1);
    let sampled = sampled.where_self(&is_mask, ids);
    // Fixed positions can never be masked again.
    let sampled_logits = sampled_logits.where_scalarother(&is_mask, f64::INFINITY);
    // The count comes from the first row: every row has the same number of masked positions.
    let still_masked = is_mask.get(0).sum(Kind::Int64).int64_value(&[]);
    let mask_len = ((l as f64) * (ratio.acos() / FRAC_PI_2)).floor() as i64;
    let mask_len = (still_masked - 1).min(mask_len).max(1);
    let u2 = Tensor::zeros([b, l], (Kind::Float, ids.device())).uniform_(0.0, 1.0);
    let confidence = sampled_logits + gumbel(&u2) * temp;
    if step == steps - 1 {
        return sampled;
    }
    let (sorted, _) = confidence.sort(-1, false);
    let cut = sorted.narrow(1, mask_len - 1, 1);
    sampled.masked_fill(&confidence.le_tensor(&cut), mask_id)
}
