//! The stage-3 loss module, the reference's `ReconstructionLoss_Stage2`
//! (../shared/spec/sftok-training.md §7.3, §7.4): the generator loss (MSE + LPIPS + the frozen
//! quantizer's constant + a weighted GAN term from `losses.discriminator_start`) and the
//! discriminator loss (hinge + LeCam). Both run in float32, outside autocast, as in the reference.
//!
//! Its state — the discriminator's trainable parameters and buffers and the LeCam EMA — lives in
//! one `VarStore` under the reference's names (`discriminator.heads.*`, `ema_real_logits_mean`,
//! `ema_fake_logits_mean`), the state dict accelerate saves as `model_1`. The frozen LPIPS network
//! and DINO backbone are held beside it (they are weights files the user has, not training state).

use crate::config::Losses;
use crate::diff_aug::DiffAug;
use crate::dino_discriminator::{DinoBackbone, DinoDiscriminator};
use crate::disc_loss::{Discriminator, LeCam, discriminator_loss};
use crate::lpips::Lpips;
use crate::optvq::QuantizerOutput;
use crate::patchgan::NLayerDiscriminator;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use tch::{Kind, Tensor, nn};

/// `losses.discriminator_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscriminatorType {
    /// The configured one: frozen DINO ViT-S/16 + five trainable heads.
    DinoDisc,
    /// The YAML's commented alternative: `NLayerDiscriminator`.
    PatchGan,
}

impl DiscriminatorType {
    pub fn from_config(l: &Losses) -> Result<DiscriminatorType> {
        match l.discriminator_type.as_str() {
            "dinodisc" => Ok(DiscriminatorType::DinoDisc),
            "patchgan" => Ok(DiscriminatorType::PatchGan),
            other => bail!("losses.discriminator_type = {other:?}: expected \"dinodisc\" (the reference's) or \"patchgan\""),
        }
    }
}

/// The frozen networks the loss needs, loaded by the caller (files or `random:SEED`).
pub struct FrozenNets {
    pub lpips: (nn::VarStore, Lpips),
    /// Only for `dinodisc`.
    pub dino: Option<(nn::VarStore, DinoBackbone)>,
}

pub struct Stage3Loss {
    cfg: Losses,
    lpips: Lpips,
    discriminator: Box<dyn Discriminator>,
    /// DiffAug of every discriminator input (`dinodisc` only).
    aug: Option<DiffAug>,
    lecam: LeCam,
    /// The discriminator's trainable parameters (frozen during the generator pass unless
    /// `losses.reference_discriminator_grad_leak`).
    trainable: BTreeMap<String, Tensor>,
    // Keep the frozen networks' variables alive.
    _frozen: Vec<nn::VarStore>,
}

impl Stage3Loss {
    /// Builds the loss module's state in `vs` (empty, fresh) and takes the frozen networks.
    pub fn new(vs: &nn::VarStore, cfg: &Losses, frozen: FrozenNets) -> Result<Stage3Loss> {
        if cfg.reconstruction_loss != "l2" {
            bail!("losses.reconstruction_loss = {:?}: only \"l2\" (the reference's stage-3 setting) is implemented", cfg.reconstruction_loss);
        }
        if cfg.perceptual_loss != "lpips" {
            bail!("losses.perceptual_loss = {:?}: only \"lpips\" (VGG16 LPIPS, the reference's stage-3 setting) is implemented", cfg.perceptual_loss);
        }
        let root = vs.root();
        let (lpips_vs, lpips) = frozen.lpips;
        let mut frozen_vs = vec![lpips_vs];
        let kind = DiscriminatorType::from_config(cfg)?;
        let discriminator: Box<dyn Discriminator> = match (kind, frozen.dino) {
            (DiscriminatorType::DinoDisc, Some((dvs, backbone))) => {
                frozen_vs.push(dvs);
                Box::new(DinoDiscriminator::new(backbone, &root / "discriminator" / "heads"))
            }
            (DiscriminatorType::DinoDisc, None) => bail!("losses.discriminator_type = \"dinodisc\" needs the DINO ViT-S/16 backbone (--dino-weights)"),
            (DiscriminatorType::PatchGan, _) => Box::new(NLayerDiscriminator::new(&root / "discriminator")),
        };
        let ema_real = root.zeros_no_train("ema_real_logits_mean", &[1]);
        let ema_fake = root.zeros_no_train("ema_fake_logits_mean", &[1]);
        let trainable = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        Ok(Stage3Loss {
            cfg: cfg.clone(),
            lpips,
            discriminator,
            // The reference augments the DINO discriminator's inputs only (`DiffAug(prob=1.0, cutout=0.2)`).
            aug: (kind == DiscriminatorType::DinoDisc).then(DiffAug::reference),
            lecam: LeCam { ema_real, ema_fake },
            trainable,
            _frozen: frozen_vs,
        })
    }

    /// The discriminator's trainable parameters by name (its optimiser's groups are built from these).
    pub fn trainable(&self) -> &BTreeMap<String, Tensor> {
        &self.trainable
    }

    /// The reference's `should_discriminator_be_trained`: `global_step ≥ discriminator_start`.
    pub fn trains_discriminator(&self, global_step: u64) -> bool {
        global_step >= self.cfg.discriminator_start
    }

    /// `discriminator_factor` from `discriminator_start` on, else 0 (and no discriminator).
    pub fn discriminator_factor(&self, global_step: u64) -> f64 {
        if self.trains_discriminator(global_step) { self.cfg.discriminator_factor } else { 0.0 }
    }

    /// §7.3: `L_G` of real images `x` and the soft-path reconstruction `x_hat` (not clamped), with
    /// the frozen quantizer's terms; the sum in the reference's order. Float32, no autocast.
    pub fn generator_loss(&self, x: &Tensor, x_hat: &Tensor, quant: &QuantizerOutput, global_step: u64) -> (Tensor, BTreeMap<String, f64>) {
        crate::autocast::float32(|| {
            let x_hat = x_hat.to_kind(Kind::Float);
            let l = &self.cfg;
            let rec = (x - &x_hat).square().mean(Kind::Float) * l.reconstruction_weight;
            let lpips = self.lpips.forward(x, &x_hat).mean(Kind::Float);
            let quantizer = &quant.quantizer_loss * l.quantizer_weight;
            let factor = self.discriminator_factor(global_step);
            let gan = if factor > 0.0 {
                let leak = l.reference_discriminator_grad_leak;
                with_requires_grad(&self.trainable, leak, || {
                    let input = match &self.aug {
                        Some(aug) => aug.aug(&x_hat),
                        None => x_hat.shallow_clone(),
                    };
                    -self.discriminator.logits(&input).mean(Kind::Float)
                })
            } else {
                Tensor::zeros([], (Kind::Float, x.device()))
            };
            let weighted_gan = &gan * (l.discriminator_weight * factor);
            let total = &rec + &lpips * l.perceptual_weight + &quantizer + &weighted_gan;
            let v = |t: &Tensor| t.to_kind(Kind::Double).double_value(&[]);
            let metrics = BTreeMap::from([
                ("train/total_loss".to_string(), v(&total)),
                ("train/reconstruction_loss".into(), v(&rec)),
                ("train/perceptual_loss".into(), v(&(&lpips * l.perceptual_weight))),
                ("train/quantizer_loss".into(), v(&quantizer)),
                ("train/weighted_gan_loss".into(), v(&weighted_gan)),
                ("train/discriminator_factor".into(), factor),
                ("train/commitment_loss".into(), v(&quant.commitment_loss)),
                ("train/codebook_loss".into(), v(&quant.codebook_loss)),
                ("train/semantic_loss".into(), 0.0),
                ("train/d_weight".into(), l.discriminator_weight),
                ("train/gan_loss".into(), v(&gan)),
            ]);
            (total, metrics)
        })
    }

    /// §7.4: `L_D` on `x` and the detached reconstruction; updates the LeCam EMA. Only called from
    /// `discriminator_start` on.
    pub fn discriminator_loss(&self, x: &Tensor, x_hat: &Tensor, global_step: u64) -> (Tensor, BTreeMap<String, f64>) {
        crate::autocast::float32(|| {
            let factor = self.discriminator_factor(global_step);
            let out = discriminator_loss(
                self.discriminator.as_ref(),
                self.aug.as_ref(),
                &self.lecam,
                x,
                &x_hat.detach().to_kind(Kind::Float),
                factor,
                self.cfg.lecam_regularization_weight,
            );
            let metrics = BTreeMap::from([
                ("train/discriminator_loss".to_string(), out.discriminator_loss),
                ("train/logits_real".into(), out.logits_real),
                ("train/logits_fake".into(), out.logits_fake),
                ("train/lecam_loss".into(), out.lecam_loss),
            ]);
            (out.loss, metrics)
        })
    }
}

/// Runs `f` with the discriminator's parameters requiring grad (`on`) or not, then restores them.
/// With them off, the generator's backward writes nothing into the discriminator (TiTok's fix of
/// the reference's leak, spec §13 item 18): autograd records at op time.
fn with_requires_grad<T>(params: &BTreeMap<String, Tensor>, on: bool, f: impl FnOnce() -> T) -> T {
    if on {
        return f();
    }
    for p in params.values() {
        let _ = p.shallow_clone().set_requires_grad(false);
    }
    let out = f();
    for p in params.values() {
        let _ = p.shallow_clone().set_requires_grad(true);
    }
    out
}
