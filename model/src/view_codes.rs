//! The shared pass behind `sftok-prep proxy-codes` and `sftok-prep tokenize`: a frozen encoder
//! over every stored view of every image, once, into one Parquet file per shard (the layout of
//! `sftok_pipeline::codes`), resumable per shard and splittable with `--part K/N`.
//!
//! Views: `sftok_pipeline::view::views_for` (1 = the eval center crop; an even V = V/2 crop offsets
//! along the long side × {no flip, flip}). Pixels are cut with `resize_view_into`, the same
//! function the loader uses, so a stored view and the loader's pixels for it are identical.
//! Views are encoded in groups of `batch` consecutive views in shard order (image by image, each
//! image's views in order): what the stored ids depend on when the encoder is batch-dependent.

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use sftok_pipeline::codes::{CodeMeta, CodeWriter, ProxyCodeStore, code_file_name};
use sftok_pipeline::loader::sources::{Shard, resolve};
use sftok_pipeline::loader::tar_samples::{TarSample, for_each_sample};
use sftok_pipeline::part::Part;
use sftok_pipeline::transform::{decode_rgb, resize_view_into, resized_size};
use sftok_pipeline::view::{View, views_for};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// A frozen network that turns images into discrete ids.
pub trait ViewEncoder {
    /// Images [N, 3, S, S] in [0, 1] → ids [N, L] (int64).
    fn encode(&self, x: &Tensor) -> Tensor;
    /// How many distinct ids exist (histogram size).
    fn vocabulary(&self) -> usize;
}

pub struct ViewCodesRequest {
    /// Shard directory, manifest or brace pattern.
    pub shards: String,
    pub out: PathBuf,
    pub views: usize,
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    pub device: Device,
    /// Views per encoder call.
    pub batch: usize,
    /// The shards this process handles.
    pub part: Part,
}

#[derive(Debug, Default)]
pub struct ViewCodesSummary {
    pub shards_written: usize,
    pub shards_kept: usize,
    pub images: u64,
    pub views: u64,
    /// (shard, key, reason) of samples that could not be decoded.
    pub skipped: Vec<(String, String, String)>,
    /// How often each id was assigned in this run.
    pub code_histogram: Vec<u64>,
}

impl ViewCodesSummary {
    /// Entropy (nats) of the ids written, each probability mixed with `smoothing` of the uniform
    /// distribution: H(0.9·q + 0.1/K) is the smallest label-smoothed (0.1) cross-entropy a
    /// predictor that knows only the id frequencies can reach. None when nothing was written.
    pub fn unigram_entropy(&self, smoothing: f64) -> Option<f64> {
        let total: u64 = self.code_histogram.iter().sum();
        let k = self.code_histogram.len() as f64;
        (total > 0).then(|| {
            self.code_histogram
                .iter()
                .map(|&c| (1.0 - smoothing) * c as f64 / total as f64 + smoothing / k)
                .filter(|&p| p > 0.0)
                .map(|p| -p * p.ln())
                .sum()
        })
    }

    pub fn codes_used(&self) -> usize {
        self.code_histogram.iter().filter(|&&c| c > 0).count()
    }
}

/// One image cut into its stored views.
struct Viewed {
    key: String,
    views: Vec<(u8, View, Vec<u8>)>,
}

fn cut_views(s: &TarSample, req: &ViewCodesRequest) -> Result<Viewed, String> {
    let bytes = s.image.as_ref().ok_or("no image member")?;
    let img = decode_rgb(bytes).map_err(|e| format!("{e:#}"))?;
    let (rw, rh) = resized_size(img.width, img.height, req.resize_shorter_edge);
    let views = views_for(rw, rh, req.crop_size, req.views).map_err(|e| format!("{e:#}"))?;
    let n = (req.crop_size * req.crop_size * 3) as usize;
    let views = views
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let mut px = vec![0u8; n];
            resize_view_into(&img, (rw, rh), req.crop_size, v, &mut px).map_err(|e| format!("{e:#}"))?;
            Ok((i as u8, v, px))
        })
        .collect::<Result<_, String>>()?;
    Ok(Viewed { key: s.key.clone(), views })
}

/// Ids [N, L] (u16) for N crops of `size`² RGB8 pixels, one encoder call.
fn encode(encoder: &dyn ViewEncoder, pixels: &[&[u8]], size: u32, device: Device) -> Result<Vec<Vec<u16>>> {
    let s = size as i64;
    let flat: Vec<u8> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
    let x = crate::handoff::nhwc_u8_to_float(&flat, [pixels.len() as i64, s, s], device);
    let codes = encoder.encode(&x).to_device(Device::Cpu);
    let l = codes.size()[1] as usize;
    let all = Vec::<i64>::try_from(codes.flatten(0, -1))?;
    Ok(all.chunks(l).map(|c| c.iter().map(|&v| v as u16).collect()).collect())
}

/// Runs the encoder over one shard into `dest` (temp file, renamed when complete).
fn code_shard(shard: &Shard, dest: &Path, meta: &CodeMeta, encoder: &dyn ViewEncoder, req: &ViewCodesRequest, sum: &mut ViewCodesSummary, on_views: &dyn Fn(u64)) -> Result<()> {
    let mut writer = CodeWriter::create(dest, meta)?;
    let mut pending: Vec<TarSample> = Vec::new();
    // Images per decode round: enough to fill a few encoder batches.
    let chunk = (req.batch / req.views).max(1) * 4;
    let flush = |pending: &mut Vec<TarSample>, writer: &mut CodeWriter, sum: &mut ViewCodesSummary| -> Result<()> {
        let viewed: Vec<Result<Viewed, String>> = pending.par_iter().map(|s| cut_views(s, req)).collect();
        let mut rows: Vec<(String, u8, View, Vec<u8>)> = Vec::new();
        for (s, v) in pending.iter().zip(viewed) {
            match v {
                Ok(v) => {
                    sum.images += 1;
                    rows.extend(v.views.into_iter().map(|(i, view, px)| (v.key.clone(), i, view, px)));
                }
                Err(reason) => {
                    eprintln!("warning: {} / {}: skipped: {reason}", shard.name, s.key);
                    sum.skipped.push((shard.name.clone(), s.key.clone(), reason));
                }
            }
        }
        for group in rows.chunks(req.batch.max(1)) {
            let pixels: Vec<&[u8]> = group.iter().map(|r| r.3.as_slice()).collect();
            let codes = encode(encoder, &pixels, req.crop_size, req.device)?;
            for (r, c) in group.iter().zip(&codes) {
                for &code in c {
                    sum.code_histogram[code as usize] += 1;
                }
                writer.push(&r.0, r.1, r.2, c)?;
            }
            sum.views += group.len() as u64;
            on_views(group.len() as u64);
        }
        pending.clear();
        Ok(())
    };
    for_each_sample(&shard.path, |s| {
        pending.push(s);
        if pending.len() >= chunk {
            flush(&mut pending, &mut writer, sum)?;
        }
        Ok(())
    })?;
    flush(&mut pending, &mut writer, sum)?;
    writer.finish()?;
    Ok(())
}

/// Shards of this part, the per-shard output files, and whether each is already complete.
pub fn plan(req: &ViewCodesRequest) -> Result<Vec<(Shard, PathBuf)>> {
    let shards = resolve(std::slice::from_ref(&req.shards))?;
    Ok(shards
        .into_iter()
        .enumerate()
        .filter(|(i, _)| req.part.contains(*i))
        .map(|(_, s)| {
            let dest = req.out.join(code_file_name(&s.name));
            (s, dest)
        })
        .collect())
}

/// Encodes every view of the part's shards into `req.out`, keeping files finished earlier (they
/// must have been made with the same `meta`).
pub fn run(req: &ViewCodesRequest, encoder: &dyn ViewEncoder, meta: &CodeMeta, on_views: &dyn Fn(u64)) -> Result<ViewCodesSummary> {
    let work = plan(req)?;
    std::fs::create_dir_all(&req.out).with_context(|| format!("creating {}", req.out.display()))?;
    // Files from an earlier run must have been made the same way, or the store would mix codes.
    if work.iter().any(|(_, d)| d.is_file()) {
        let existing = ProxyCodeStore::open(&req.out)?;
        if existing.meta() != meta {
            bail!(
                "{} already holds codes made differently ({:?}); this run would make {:?}. Use another --out",
                req.out.display(),
                existing.meta(),
                meta
            );
        }
    }
    let mut sum = ViewCodesSummary { code_histogram: vec![0; encoder.vocabulary()], ..Default::default() };
    for (shard, dest) in &work {
        if dest.is_file() {
            sum.shards_kept += 1; // finished earlier (files appear only complete: temp + rename)
            continue;
        }
        code_shard(shard, dest, meta, encoder, req, &mut sum, on_views).with_context(|| format!("encoding {}", shard.path.display()))?;
        sum.shards_written += 1;
        if std::env::var("SFTOK_TEST_PAUSE_AFTER_SHARDS").ok().and_then(|v| v.parse().ok()) == Some(sum.shards_written) {
            // Test hook: wait here so a test can kill -9 the run between two shards' files.
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
    Ok(sum)
}

/// The `sftok.resize` metadata of a request.
pub fn resize_rule(req: &ViewCodesRequest) -> String {
    format!("shorter-edge {}, bicubic+antialias (PIL semantics), long side truncated", req.resize_shorter_edge)
}
