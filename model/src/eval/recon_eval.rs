//! Reconstruction quality of a tokenizer on val shards as the reference's evaluator measures it
//! (evaluation.md §1): rFID, IS of the reconstructions, PSNR, codebook usage and entropy. Both
//! `sftok-eval rfid` and the trainer's periodic evaluation (EMA weights, every
//! `experiment.eval_every` steps) run [`evaluate_reconstruction`].

use super::features::FeatureSet;
use super::frechet::frechet_distance;
use super::recon::{psnr, reconstruct, to_images, to_u8_tensor};
use crate::inception::{FidInception, InputPipeline};
use crate::sftok::SFTok;
use crate::vqgan::MaskgitVqgan;
use anyhow::{Context, Result, bail, ensure};
use sftok_pipeline::batch::BatchStream;
use sftok_pipeline::loader::{Loader, LoaderConfig};
use sftok_pipeline::progress::Progress;
use std::path::PathBuf;
use tch::Device;

pub struct ReconEvalOptions {
    /// Val shards: a directory, manifest.json, a .tar or a brace pattern.
    pub shards: String,
    /// The eval transform, Resize(resize_shorter_edge) + CenterCrop(crop_size): the model
    /// config's `dataset.preprocessing`.
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    /// Images per batch. Tokens depend on it (OptVQ's Sinkhorn assignment is batch-wide).
    pub batch: usize,
    /// Only the first `num` images (None: all).
    pub num: Option<usize>,
    /// Each batch is decoded after `manual_seed(seed + images before it)`: the decoder samples
    /// Gumbel noise, and this makes every batch's draw independent of the batches before it.
    pub seed: i64,
    /// Progress bar (or periodic lines) on stderr.
    pub progress: bool,
    /// Also write `originals/` and `reconstructions/` PNGs (8-bit, the evaluated pixels) here.
    pub save_images: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ReconEvalReport {
    pub images: u64,
    /// Mean PSNR in dB over all images (exact reconstructions, PSNR = ∞, add 0 to the sum).
    pub psnr: f64,
    /// rFID and the reference evaluator's Inception Score (one split) of the reconstructions,
    /// when an Inception was given.
    pub rfid: Option<f64>,
    pub inception_score: Option<f64>,
    /// |distinct token ids seen| / codebook size.
    pub codebook_usage: f64,
    /// Shannon entropy (bits) of the token-id histogram.
    pub codebook_entropy_bits: f64,
}

/// Counts of each token id over an evaluation: codebook usage and entropy (evaluation.md §1.7).
pub struct TokenHistogram {
    counts: Vec<u64>,
}

impl TokenHistogram {
    pub fn new(codebook_size: usize) -> TokenHistogram {
        TokenHistogram { counts: vec![0; codebook_size] }
    }

    pub fn add(&mut self, ids: &[i64]) -> Result<()> {
        for &id in ids {
            let slot = usize::try_from(id).ok().and_then(|i| self.counts.get_mut(i));
            let Some(count) = slot else { bail!("token id {id} outside the codebook of {} entries", self.counts.len()) };
            *count += 1;
        }
        Ok(())
    }

    /// |distinct ids seen| / codebook size.
    pub fn usage(&self) -> f64 {
        self.counts.iter().filter(|&&c| c > 0).count() as f64 / self.counts.len() as f64
    }

    /// `-Σ p log2(p + 1e-8)` over the histogram, as the reference's evaluator computes it (the
    /// 1e-8 lowers the exact entropy by about 1.44e-8 bits per code in use).
    pub fn entropy_bits(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        self.counts
            .iter()
            .map(|&c| c as f64 / total as f64)
            .map(|p| -p * (p + 1e-8).log2())
            .sum()
    }
}

/// Reconstructs the val shards with `model` (stage-1/2 models decode proxy ids with `teacher`;
/// stage-3 models use their pixel path) and reports PSNR, codebook usage/entropy of the tokens
/// and — when `inception` is given — rFID and IS, exactly as `sftok-eval rfid` does:
/// reconstructions clamped and rounded to 8 bits, TF1-resize Inception features of originals
/// and reconstructions into float64 statistics.
pub fn evaluate_reconstruction(
    model: &SFTok,
    teacher: Option<&MaskgitVqgan>,
    inception: Option<&FidInception>,
    o: &ReconEvalOptions,
    device: Device,
) -> Result<ReconEvalReport> {
    let mut lc = LoaderConfig::eval(vec![o.shards.clone()]);
    lc.batch_size = o.batch.max(1);
    lc.resize_shorter_edge = o.resize_shorter_edge;
    lc.crop_size = o.crop_size;
    let mut loader = Loader::new(lc).with_context(|| format!("reading the val shards {}", o.shards))?;
    let (mut real, mut fake) = (FeatureSet::default(), FeatureSet::default());
    let mut histogram = TokenHistogram::new(model.cfg.quantizer.codebook_size as usize);
    let mut psnrs = Vec::new();
    let progress = o.progress.then(|| Progress::new("rfid", o.num.unwrap_or(0) as u64, "images"));
    let mut seen = 0usize;
    while let Some(mut batch) = loader.next_batch()? {
        if let Some(n) = o.num {
            if seen >= n {
                break;
            }
            if seen + batch.len() > n {
                let keep = n - seen;
                let s = batch.size as usize;
                batch.images.truncate(keep * s * s * 3);
                batch.keys.truncate(keep);
                batch.labels.truncate(keep);
            }
        }
        let x = crate::handoff::images(&batch, device);
        tch::manual_seed(o.seed.wrapping_add(seen as i64)); // the decoder samples with Gumbel noise
        let (y, tokens) = reconstruct(model, teacher, &x)?;
        histogram.add(&Vec::<i64>::try_from(tokens.reshape([-1]).to_device(Device::Cpu))?)?;
        if inception.is_some() || o.save_images.is_some() {
            let recon = to_images(&y)?; // clamped, rounded to 8 bits
            if let Some(net) = inception {
                // The originals are the batch's own 8-bit pixels: no round trip through floats.
                let s = batch.size as i64;
                let originals = crate::handoff::nhwc_u8_to_device(&batch.images, [batch.len() as i64, s, s], device);
                real.add_images(net, &originals, InputPipeline::Tf1)?;
                fake.add_images(net, &to_u8_tensor(&recon, device), InputPipeline::Tf1)?;
            }
            if let Some(dir) = &o.save_images {
                let originals = to_images(&x)?;
                for (sub, imgs) in [("originals", &originals), ("reconstructions", &recon)] {
                    let d = dir.join(sub);
                    std::fs::create_dir_all(&d)?;
                    for (i, img) in imgs.iter().enumerate() {
                        std::fs::write(d.join(format!("{:06}.png", seen + i)), sftok_pipeline::transform::encode_png(img)?)?;
                    }
                }
            }
        }
        psnrs.extend(psnr(&x, &y));
        seen += batch.len();
        if let Some(p) = &progress {
            p.inc(batch.len() as u64);
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    ensure!(seen > 0, "no images in {}", o.shards);
    let (rfid, inception_score) = match inception {
        Some(_) => (Some(frechet_distance(&real.pool3.finish()?, &fake.pool3.finish()?)?.value), Some(fake.inception_score.reference()?)),
        None => (None, None),
    };
    Ok(ReconEvalReport {
        images: seen as u64,
        psnr: psnrs.iter().filter(|p| p.is_finite()).sum::<f64>() / psnrs.len() as f64,
        rfid,
        inception_score,
        codebook_usage: histogram.usage(),
        codebook_entropy_bits: histogram.entropy_bits(),
    })
}

#[cfg(test)]
mod tests {
    use super::TokenHistogram;

    #[test]
    fn usage_and_entropy_of_a_hand_counted_histogram() {
        // ids [0, 0, 1, 3] over 8 codes: 3 distinct → usage 3/8; p = (1/2, 1/4, 1/4) → entropy
        // 1/2·1 + 1/4·2 + 1/4·2 = 1.5 bits.
        let mut h = TokenHistogram::new(8);
        h.add(&[0, 0]).unwrap();
        h.add(&[1, 3]).unwrap();
        assert_eq!(h.usage(), 0.375);
        assert!((h.entropy_bits() - 1.5).abs() < 1e-6, "{}", h.entropy_bits());
        // A uniform histogram over all 4 codes: usage 1, entropy log2(4) = 2 bits.
        let mut u = TokenHistogram::new(4);
        u.add(&[3, 2, 1, 0, 0, 1, 2, 3]).unwrap();
        assert_eq!(u.usage(), 1.0);
        assert!((u.entropy_bits() - 2.0).abs() < 1e-6, "{}", u.entropy_bits());
        // One code only: entropy 0.
        let mut one = TokenHistogram::new(4);
        one.add(&[2, 2, 2]).unwrap();
        assert_eq!(one.usage(), 0.25);
        assert!(one.entropy_bits().abs() < 1e-6);
    }

    #[test]
    fn ids_outside_the_codebook_are_errors() {
        let mut h = TokenHistogram::new(8);
        assert!(h.add(&[8]).unwrap_err().to_string().contains("token id 8"));
        assert!(h.add(&[-1]).is_err());
        assert_eq!(h.usage(), 0.0);
        assert_eq!(h.entropy_bits(), 0.0);
    }
}
