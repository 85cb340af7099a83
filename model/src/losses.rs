//! Training losses (../shared/spec/sftok-training.md §7).

use tch::{Kind, Reduction, Tensor};

/// `ReconstructionLoss_MLMStage1` (stages 1–2): per-position cross-entropy against the proxy codes,
/// weight 1 on masked and `unmasked_weight` on visible positions, `Σ w·ce / (Σ w + 1e-8)` over the
/// micro-batch. logits [B, L, V], targets [B, L] int64, masks [B, L] bool.
pub fn masked_token_ce(logits: &Tensor, targets: &Tensor, masks: &Tensor, label_smoothing: f64, unmasked_weight: f64) -> Tensor {
    weighted_mean(&token_ce(logits, targets, label_smoothing), masks, unmasked_weight)
}

/// Per-position cross-entropy [B·L] with PyTorch's label smoothing. logits [B, L, V], targets [B, L].
pub fn token_ce(logits: &Tensor, targets: &Tensor, label_smoothing: f64) -> Tensor {
    let v = logits.size()[2];
    logits.reshape([-1, v]).cross_entropy_loss(&targets.reshape([-1]), None::<Tensor>, Reduction::None, -100, label_smoothing)
}

/// `Σ w·ce / (Σ w + 1e-8)` with w = 1 on masked and `unmasked_weight` on visible positions.
pub fn weighted_mean(ce: &Tensor, masks: &Tensor, unmasked_weight: f64) -> Tensor {
    let m = masks.reshape([-1]).to_kind(Kind::Float);
    let w = &m + (m.neg() + 1.0) * unmasked_weight;
    (ce * &w).sum(Kind::Float) / (w.sum(Kind::Float) + 1e-8)
}

/// `MLMLoss`'s `correct_tokens`: per sample, the share of *masked* positions whose argmax is the
/// target (`Σ correct·mask / (Σ mask + 1e-8)`), averaged over the batch. logits [B, L, V].
pub fn masked_token_accuracy(logits: &Tensor, targets: &Tensor, masks: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let m = masks.to_kind(Kind::Float);
        let correct = logits.argmax(-1, false).eq_tensor(targets).to_kind(Kind::Float);
        ((correct * &m).sum_dim_intlist(1, false, Kind::Float) / (m.sum_dim_intlist(1, false, Kind::Float) + 1e-8)).mean(Kind::Float)
    })
}
