//! `sftok-prep proxy-codes`: the frozen MaskGIT-VQGAN teacher over every stored view of every
//! image, once (../shared/spec/sftok-training.md §4), through the shared pass of [`crate::view_codes`].
//! The teacher's quantizer is a plain nearest-neighbour search per cell: codes do not depend on
//! the batch composition (unlike SFTok's own Sinkhorn quantizer, see `tokenize`).

use crate::view_codes::{ViewCodesRequest, ViewCodesSummary, ViewEncoder};
use crate::vqgan::{MaskgitVqgan, load_teacher};
use anyhow::{Context, Result, bail};
use sftok_pipeline::codes::{CodeContent, CodeMeta};
use sftok_pipeline::fsutil::sha256_file;
use std::path::Path;
use tch::Tensor;

impl ViewEncoder for MaskgitVqgan {
    fn encode(&self, x: &Tensor) -> Tensor {
        MaskgitVqgan::encode(self, x)
    }

    fn vocabulary(&self) -> usize {
        1024
    }
}

/// sha256 of a checkpoint file, or the `random:SEED` spec itself.
pub fn checkpoint_fingerprint(spec: &str) -> Result<String> {
    if spec.starts_with("random:") {
        return Ok(spec.to_string());
    }
    let path = Path::new(spec);
    let file = if path.is_dir() { crate::checkpoint::hf_weights_file(path)? } else { path.to_path_buf() };
    let (sha, _) = sha256_file(&file).with_context(|| format!("hashing the checkpoint {}", file.display()))?;
    Ok(sha)
}

/// Proxy codes of every view of `req`'s shards with the teacher `teacher` (file or `random:SEED`).
pub fn run(teacher: &str, req: &ViewCodesRequest, on_views: &dyn Fn(u64)) -> Result<ViewCodesSummary> {
    if !req.crop_size.is_multiple_of(16) {
        bail!("crop size {} is not a multiple of 16 (the teacher's grid)", req.crop_size);
    }
    let grid = (req.crop_size / 16) as usize;
    let meta = CodeMeta {
        content: CodeContent::ProxyCodes,
        encoder_sha256: checkpoint_fingerprint(teacher)?,
        image_size: req.crop_size,
        resize: crate::view_codes::resize_rule(req),
        views_per_image: req.views,
        tool_version: format!("sftok {}", env!("CARGO_PKG_VERSION")),
        codes_per_image: grid * grid,
        batching: String::new(),
    };
    let (_vs, teacher) = load_teacher(teacher, req.device)?;
    crate::view_codes::run(req, &teacher, &meta, on_views)
}
