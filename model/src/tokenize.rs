//! `sftok-prep tokenize`: a frozen SFTok tokenizer's 64 token ids for every stored view of every
//! image, once, for generator training (../shared/spec/generator-maskgit.md §4.1), through the
//! shared pass of [`crate::view_codes`]. The generator's view rule is the centre crop with a random
//! flip, so the default is 2 views per image: centre, centre mirrored.
//!
//! **Batching.** OptVQ's Sinkhorn assignment balances the codebook over every token of one
//! encoder call, so an image's ids depend on the images encoded with it. `tokenize` encodes
//! `--batch` consecutive views in shard order (image by image, each image's views in view order)
//! per call and records that rule in the files' `sftok.batching`. On-the-fly training encodes each
//! training micro-batch in one call, as the reference does. The two give identical ids for the
//! same views in the same call (tested); for other groupings they are draws of the same balanced
//! assignment, not the same ids. The default `--batch 128` is the generator's per-GPU batch
//! (8,192 tokens = the codebook size, the scale of a training step).

use crate::eval::recon::ModelSpec;
use crate::eval::sample::TokenDecoder;
use crate::proxy_codes::checkpoint_fingerprint;
use crate::view_codes::{ViewCodesRequest, ViewCodesSummary, ViewEncoder};
use anyhow::{Result, bail};
use sftok_pipeline::codes::{CodeContent, CodeMeta, ProxyCodeStore};
use std::path::Path;
use tch::Tensor;

impl ViewEncoder for TokenDecoder {
    fn encode(&self, x: &Tensor) -> Tensor {
        self.tokenize(x)
    }

    fn vocabulary(&self) -> usize {
        self.tokenizer.model.cfg.quantizer.codebook_size as usize
    }
}

/// The `sftok.batching` rule of a request.
pub fn batching_rule(batch: usize) -> String {
    format!("{batch} consecutive views per encoder call, shard order (images in order, each image's views in view order)")
}

/// Tokens of every view of `req`'s shards with the tokenizer of `spec`.
pub fn run(spec: &ModelSpec, req: &ViewCodesRequest, on_views: &dyn Fn(u64)) -> Result<ViewCodesSummary> {
    let tokenizer = TokenDecoder::load(spec, req.device)?;
    let crop = tokenizer.tokenizer.config.dataset.preprocessing.crop_size;
    if crop != req.crop_size {
        bail!("the tokenizer {} was trained on {crop}px crops (its dataset.preprocessing.crop_size), --crop is {}", spec.checkpoint.display(), req.crop_size);
    }
    let meta = CodeMeta {
        content: CodeContent::Tokens,
        encoder_sha256: checkpoint_fingerprint(&spec.checkpoint.display().to_string())?,
        image_size: req.crop_size,
        resize: crate::view_codes::resize_rule(req),
        views_per_image: req.views,
        tool_version: format!("sftok {}", env!("CARGO_PKG_VERSION")),
        codes_per_image: tokenizer.tokenizer.model.cfg.encoder.num_latent_tokens as usize,
        batching: batching_rule(req.batch),
    };
    crate::view_codes::run(req, &tokenizer, &meta, on_views)
}

/// A generator run's stored tokens must be tokens (not proxy codes) of this tokenizer.
pub fn check_store_matches(dir: &Path, tokenizer: &TokenDecoder) -> Result<()> {
    let store = ProxyCodeStore::open(dir)?;
    let m = store.meta();
    if m.content != CodeContent::Tokens {
        bail!("dataset.params.pretokenization = {} holds {} output, not tokens: run `sftok-prep tokenize` for the generator", dir.display(), m.content.command());
    }
    let sha = checkpoint_fingerprint(&tokenizer.source)?;
    if m.encoder_sha256 != sha {
        bail!(
            "the tokens in {} were made by a tokenizer with sha256 {}, but --tokenizer {} has {sha}: re-tokenize, or pass the tokenizer they came from",
            dir.display(),
            m.encoder_sha256,
            tokenizer.source
        );
    }
    Ok(())
}
