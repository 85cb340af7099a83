//! The stage-3 discriminator loss (`ReconstructionLoss_Stage2._forward_discriminator`,
//! ../shared/spec/sftok-training.md §7.4): hinge on DiffAug'ed real / reconstructed images plus the
//! LeCam regulariser on batch means, with the LeCam EMA buffers updated after the loss.
//!
//! ```text
//! lr = D(aug(x)); lf = D(aug(sg(x̂)))                             fresh draws per call
//! L  = f · ½(mean relu(1 − lr) + mean relu(1 + lf))
//!    + w · [relu(mean lr − ema_fake)² + relu(ema_real − mean lf)²]
//! ema_real ← 0.999·ema_real + 0.001·mean lr;  ema_fake likewise     (after the loss)
//! ```

use crate::diff_aug::{AugParams, DiffAug};
use crate::dino_discriminator::DinoDiscriminator;
use tch::{Kind, Tensor};

/// Decay of the LeCam EMA buffers.
pub const LECAM_EMA_DECAY: f64 = 0.999;

/// A discriminator: images [B, 3, H, W] in [0, 1] → logits (any shape; the losses take means).
pub trait Discriminator {
    fn logits(&self, x: &Tensor) -> Tensor;
}

impl Discriminator for DinoDiscriminator {
    fn logits(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }
}

/// `0.5·(mean(relu(1 − logits_real)) + mean(relu(1 + logits_fake)))` (0-d).
pub fn hinge_d_loss(logits_real: &Tensor, logits_fake: &Tensor) -> Tensor {
    let loss_real = (1.0f64 - logits_real).relu().mean(None::<Kind>);
    let loss_fake = (logits_fake + 1.0).relu().mean(None::<Kind>);
    (loss_real + loss_fake) * 0.5
}

/// The loss module's LeCam buffers `ema_real_logits_mean` / `ema_fake_logits_mean` (float32 [1],
/// starting at 0): the caller owns them (non-trainable variables of its VarStore, so they are
/// checkpointed) and hands them in; [`LeCam::update`] writes them in place.
#[derive(Debug)]
pub struct LeCam {
    pub ema_real: Tensor,
    pub ema_fake: Tensor,
}

impl LeCam {
    /// `mean(relu(mean_real − ema_fake)²) + mean(relu(ema_real − mean_fake)²)` (0-d, unweighted),
    /// from the batch means of the logits (0-d tensors).
    pub fn lecam_loss(&self, logits_real_mean: &Tensor, logits_fake_mean: &Tensor) -> Tensor {
        let a = (logits_real_mean - &self.ema_fake).relu().pow_tensor_scalar(2).mean(None::<Kind>);
        let b = (&self.ema_real - logits_fake_mean).relu().pow_tensor_scalar(2).mean(None::<Kind>);
        a + b
    }

    /// `ema ← ema·0.999 + mean·(1 − 0.999)` for both buffers (in place, no gradient).
    pub fn update(&self, logits_real_mean: &Tensor, logits_fake_mean: &Tensor) {
        tch::no_grad(|| {
            for (ema, m) in [(&self.ema_real, logits_real_mean), (&self.ema_fake, logits_fake_mean)] {
                let new = ema * LECAM_EMA_DECAY + m.detach() * (1.0 - LECAM_EMA_DECAY);
                ema.shallow_clone().copy_(&new);
            }
        });
    }
}

/// What [`discriminator_loss`] saw along the way (all detached).
#[derive(Debug)]
pub struct DiscriminatorTrace {
    pub aug_real: Tensor,
    pub real_aug: AugParams,
    pub aug_fake: Tensor,
    pub fake_aug: AugParams,
    pub logits_real: Tensor,
    pub logits_fake: Tensor,
}

/// The loss (with its graph to the discriminator's trainable parameters) and the logged scalars.
#[derive(Debug)]
pub struct DiscriminatorOutput {
    pub loss: Tensor,
    /// The logged values (`discriminator_loss`, `logits_real`, `logits_fake`, `lecam_loss`) and the
    /// factor-weighted hinge term.
    pub discriminator_loss: f64,
    pub logits_real: f64,
    pub logits_fake: f64,
    /// Weighted LeCam term (as logged).
    pub lecam_loss: f64,
    pub hinge: f64,
    /// None without augmentation (`patchgan`).
    pub trace: Option<DiscriminatorTrace>,
}

/// One discriminator loss evaluation, exactly the reference's sequence: `aug(real)`, D, `aug(fake.detach())`,
/// D, `factor·hinge + lecam_weight·LeCam`, then the EMA update of `lecam` (only when `lecam_weight > 0`).
/// `aug` is None for `patchgan`, which the reference feeds without DiffAug.
/// The real images are not made `requires_grad` (the reference does, for an input gradient nobody
/// uses; results are the same).
pub fn discriminator_loss(
    disc: &dyn Discriminator,
    aug: Option<&DiffAug>,
    lecam: &LeCam,
    real: &Tensor,
    fake: &Tensor,
    factor: f64,
    lecam_weight: f64,
) -> DiscriminatorOutput {
    let augment = |x: &Tensor| match aug {
        Some(a) => {
            let (y, p) = a.aug_with_params(&x.detach());
            (y, Some(p))
        }
        None => (x.detach(), None),
    };
    // The reference's draw order: aug(real), D(real) (its crop coin above 224 px), aug(fake), D(fake).
    let (aug_real, real_aug) = augment(real);
    let logits_real = disc.logits(&aug_real);
    let (aug_fake, fake_aug) = augment(fake);
    let logits_fake = disc.logits(&aug_fake);
    let params = real_aug.zip(fake_aug);

    let hinge = hinge_d_loss(&logits_real, &logits_fake) * factor;
    let real_mean = logits_real.mean(None::<Kind>);
    let fake_mean = logits_fake.mean(None::<Kind>);
    let lecam_loss = if lecam_weight > 0.0 {
        let l = lecam.lecam_loss(&real_mean, &fake_mean) * lecam_weight;
        lecam.update(&real_mean, &fake_mean);
        l
    } else {
        Tensor::zeros([], (Kind::Float, real.device()))
    };
    let loss = &hinge + &lecam_loss;
    let f = |t: &Tensor| t.double_value(&[]);
    DiscriminatorOutput {
        discriminator_loss: f(&loss),
        logits_real: f(&real_mean),
        logits_fake: f(&fake_mean),
        lecam_loss: f(&lecam_loss),
        hinge: f(&hinge),
        loss,
        trace: params.map(|(real_aug, fake_aug)| DiscriminatorTrace {
            aug_real: aug_real.detach(),
            real_aug,
            aug_fake: aug_fake.detach(),
            fake_aug,
            logits_real: logits_real.detach(),
            logits_fake: logits_fake.detach(),
        }),
    }
}
