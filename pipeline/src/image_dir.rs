//! A folder of PNG/JPEG images as evaluation input (`sftok-eval fid DIR …`): the sorted file list
//! and parallel decoding to RGB8, with per-file errors so the caller can stop or skip.

use crate::transform::{RgbImage, decode_rgb};
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    matches!(ext.as_str(), "png" | "jpg" | "jpeg")
}

/// `.png`, `.jpg`, `.jpeg` files directly in `dir` (not recursive, as pytorch-fid), in byte order
/// of their names so runs are reproducible.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.is_file() && is_image(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Decodes one file (format from its content) to RGB8; grey and RGBA are converted. JPEGs go
/// through libjpeg-turbo with PIL's settings, so features match pytorch-fid's PIL input.
pub fn decode_rgb8(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decodes `paths` in parallel, keeping their order and each file's own result.
pub fn decode_all(paths: &[PathBuf]) -> Vec<Result<RgbImage>> {
    paths.par_iter().map(|p| decode_rgb8(p)).collect()
}
