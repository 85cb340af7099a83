//! `sftok-prep proxy-codes`: the frozen MaskGIT-VQGAN teacher over every stored view of every
//! image, once, into one Parquet file per shard (../shared/spec/sftok-training.md §4).
//!
//! Views: `sftok_pipeline::view::views_for` (default 10 = five crop offsets along the long side ×
//! {no flip, flip}; 1 = the eval center crop). Pixels are cut with `resize_view_into`, the same
//! function the loader uses, so a stored view and the loader's pixels for it are identical.
//! The teacher's quantizer is a plain nearest-neighbour search per cell: codes do not depend on
//! the batch composition (unlike SFTok's own Sinkhorn quantizer).

use crate::vqgan::{MaskgitVqgan, load_teacher};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use sftok_pipeline::codes::{CodeMeta, CodeWriter, ProxyCodeStore, code_file_name};
use sftok_pipeline::fsutil::sha256_file;
use sftok_pipeline::loader::sources::{Shard, resolve};
use sftok_pipeline::loader::tar_samples::{TarSample, for_each_sample};
use sftok_pipeline::part::Part;
use sftok_pipeline::transform::{decode_rgb, resize_view_into, resized_size};
use sftok_pipeline::view::{View, views_for};
use std::path::{Path, PathBuf};
use tch::Device;

pub struct ProxyCodesRequest {
    /// Teacher checkpoint, or `random:SEED` (smoke tests: meaningless codes).
    pub teacher: String,
    /// Shard directory, manifest or brace pattern.
    pub shards: String,
    pub out: PathBuf,
    pub views: usize,
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    pub device: Device,
    /// Views per teacher forward pass.
    pub batch: usize,
    /// The shards this process handles.
    pub part: Part,
}

#[derive(Debug, Default)]
pub struct ProxyCodesSummary {
    pub shards_written: usize,
    pub shards_kept: usize,
    pub images: u64,
    pub views: u64,
    /// (shard, key, reason) of samples that could not be decoded.
    pub skipped: Vec<(String, String, String)>,
    /// How often each teacher code was assigned in this run.
    pub code_histogram: Vec<u64>,
}

impl ProxyCodesSummary {
    pub fn codes_used(&self) -> usize {
        self.code_histogram.iter().filter(|&&c| c > 0).count()
    }
}

fn teacher_fingerprint(spec: &str) -> Result<String> {
    if spec.starts_with("random:") {
        return Ok(spec.to_string());
    }
    let (sha, _) = sha256_file(Path::new(spec)).context("hashing the teacher checkpoint")?;
    Ok(sha)
}

/// One image cut into its stored views.
struct Viewed {
    key: String,
    views: Vec<(u8, View, Vec<u8>)>,
}

fn cut_views(s: &TarSample, req: &ProxyCodesRequest) -> Result<Viewed, String> {
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

/// Teacher codes [N, L] (u16) for N crops of `size`² RGB8 pixels.
fn encode(teacher: &MaskgitVqgan, pixels: &[&[u8]], size: u32, device: Device) -> Result<Vec<Vec<u16>>> {
    let s = size as i64;
    let flat: Vec<u8> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
    let x = crate::handoff::nhwc_u8_to_float(&flat, [pixels.len() as i64, s, s], device);
    let codes = teacher.encode(&x).to_device(Device::Cpu);
    let l = codes.size()[1] as usize;
    let all = Vec::<i64>::try_from(codes.flatten(0, -1))?;
    Ok(all.chunks(l).map(|c| c.iter().map(|&v| v as u16).collect()).collect())
}

/// Runs the teacher over one shard into `dest` (temp file, renamed when complete).
fn code_shard(shard: &Shard, dest: &Path, meta: &CodeMeta, teacher: &MaskgitVqgan, req: &ProxyCodesRequest, sum: &mut ProxyCodesSummary, on_views: &dyn Fn(u64)) -> Result<()> {
    let mut writer = CodeWriter::create(dest, meta)?;
    let mut pending: Vec<TarSample> = Vec::new();
    // Images per decode round: enough to fill a few teacher batches.
    let chunk = (req.batch / req.views).max(1) * 4;
    let flush = |pending: &mut Vec<TarSample>, writer: &mut CodeWriter, sum: &mut ProxyCodesSummary| -> Result<()> {
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
            let codes = encode(teacher, &pixels, req.crop_size, req.device)?;
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
pub fn plan(req: &ProxyCodesRequest) -> Result<Vec<(Shard, PathBuf)>> {
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

pub fn run(req: &ProxyCodesRequest, on_views: &dyn Fn(u64)) -> Result<ProxyCodesSummary> {
    if req.crop_size % 16 != 0 {
        bail!("crop size {} is not a multiple of 16 (the teacher's grid)", req.crop_size);
    }
    let work = plan(req)?;
    std::fs::create_dir_all(&req.out).with_context(|| format!("creating {}", req.out.display()))?;
    let grid = (req.crop_size / 16) as usize;
    let meta = CodeMeta {
        teacher_sha256: teacher_fingerprint(&req.teacher)?,
        image_size: req.crop_size,
        resize: format!("shorter-edge {}, bicubic+antialias (PIL semantics), long side truncated", req.resize_shorter_edge),
        views_per_image: req.views,
        tool_version: format!("sftok {}", env!("CARGO_PKG_VERSION")),
        codes_per_image: grid * grid,
    };
    // Files from an earlier run must have been made the same way, or the store would mix codes.
    if work.iter().any(|(_, d)| d.is_file()) {
        let existing = ProxyCodeStore::open(&req.out)?;
        if existing.meta() != &meta {
            bail!(
                "{} already holds proxy codes made differently ({:?}); this run would make {:?}. Use another --out",
                req.out.display(),
                existing.meta(),
                meta
            );
        }
    }
    let (_vs, teacher) = load_teacher(&req.teacher, req.device)?;
    let mut sum = ProxyCodesSummary { code_histogram: vec![0; 1024], ..Default::default() };
    for (shard, dest) in &work {
        if dest.is_file() {
            sum.shards_kept += 1; // finished earlier (files appear only complete: temp + rename)
            continue;
        }
        code_shard(shard, dest, &meta, &teacher, req, &mut sum, on_views).with_context(|| format!("computing codes for {}", shard.path.display()))?;
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
