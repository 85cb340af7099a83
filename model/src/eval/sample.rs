//! Generated tokens → images (../shared/spec/generator-maskgit.md §7) and the frozen tokenizer as
//! the generator sees it: `tokenize` for training targets, `decode` for samples.
//!
//! Decoding: the SFTok tokenizer's `decode_tokens` (its multi-step decoder with the settings of its
//! `model.generator` section — spec §11: randomize_temperature 1.0, no softmax annealing, 8 steps
//! unless its config says otherwise) → the soft path → its pixel decoder (stage-3 models) or the
//! teacher's decoder (stage-1/2 models with `--teacher`) → clamp to [0, 1]. Samples become uint8 by
//! **truncation** (`uint8(x·255)`, TiTok's `sample_fn`), not by the rounding `recon` uses.

use crate::eval::recon::ModelSpec;
use crate::image_bert::ImageBertConfig;
use crate::sftok::LoadedSFTok;
use crate::vqgan::MaskgitVqgan;
use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor, nn};

pub struct TokenDecoder {
    pub tokenizer: LoadedSFTok,
    teacher: Option<(nn::VarStore, MaskgitVqgan)>,
    /// What the tokenizer was loaded from (for error messages and sample fingerprints).
    pub source: String,
}

impl TokenDecoder {
    /// The tokenizer of `spec` (its config from `--config` or config.json beside it), eval mode.
    pub fn load(spec: &ModelSpec, device: Device) -> Result<TokenDecoder> {
        let (tokenizer, teacher) = spec.load(spec.config()?, device)?;
        Ok(TokenDecoder { tokenizer, teacher, source: spec.checkpoint.display().to_string() })
    }

    /// Tokens per image and vocabulary must be the generator's.
    pub fn check_pairs_with(&self, g: &ImageBertConfig) -> Result<()> {
        let t = &self.tokenizer.model.cfg;
        if t.quantizer.codebook_size != g.codebook_size {
            bail!(
                "tokenizer {} has a codebook of {} tokens, the generator's model.vq_model.codebook_size is {}: use the tokenizer the generator was configured for, or set model.vq_model.codebook_size={}",
                self.source, t.quantizer.codebook_size, g.codebook_size, t.quantizer.codebook_size
            );
        }
        if t.encoder.num_latent_tokens != g.seq_len {
            bail!(
                "tokenizer {} produces {} tokens per image, the generator's model.img_generator.image_seq_len is {}",
                self.source, t.encoder.num_latent_tokens, g.seq_len
            );
        }
        Ok(())
    }

    /// Images [B, 3, H, W] in [0, 1] → token ids [B, N], one encoder call (the Sinkhorn assignment
    /// spans the whole batch), float32, no gradient.
    pub fn tokenize(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let (_, q) = tch::autocast(false, || self.tokenizer.model.encode(&x.to_kind(Kind::Float)));
            q.min_encoding_indices.flatten(1, -1)
        })
    }

    /// Token ids [B, N] → images [B, 3, H, W] clamped to [0, 1]. Draws the tokenizer decoder's
    /// Gumbel noise from libtorch's generator.
    pub fn decode(&self, ids: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let k = self.tokenizer.model.cfg.quantizer.codebook_size;
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= k {
                bail!("token ids in [{lo}, {hi}] but the tokenizer {} has {k} codes", self.source);
            }
            let out = self.tokenizer.model.decode_tokens(ids);
            let image = match (out.image, &self.teacher) {
                (Some(img), _) => img,
                (None, Some((_, t))) => {
                    let (b, l) = out.generated.ids.size2()?;
                    let g = (l as f64).sqrt() as i64;
                    t.decode_raw(&out.generated.ids.reshape([b, g, g]))?
                }
                (None, None) => bail!(
                    "tokenizer {} is a stage-1/2 model (no pixel decoder): pass --teacher maskgit-vqgan-imagenet-f16-256.bin to decode its proxy codes, or use a stage-3 tokenizer",
                    self.source
                ),
            };
            Ok(image.clamp(0.0, 1.0))
        })
    }
}

/// [B, 3, H, W] in [0, 1] → uint8 [B, H, W, 3] on the CPU by truncation (`uint8(x·255)`).
pub fn to_uint8_nhwc(images: &Tensor) -> Tensor {
    (images.clamp(0.0, 1.0) * 255.0).to_kind(Kind::Uint8).permute([0, 2, 3, 1]).contiguous().to_device(Device::Cpu)
}

/// uint8 [B, H, W, 3] (CPU) → RGB8 images.
pub fn rgb_images(nhwc: &Tensor) -> Result<Vec<sftok_pipeline::transform::RgbImage>> {
    let (b, h, w, _) = nhwc.size4()?;
    let flat = Vec::<u8>::try_from(nhwc.reshape([-1]))?;
    let per = (h * w * 3) as usize;
    (0..b as usize).map(|i| sftok_pipeline::transform::RgbImage::new(w as u32, h as u32, flat[i * per..(i + 1) * per].to_vec())).collect()
}
