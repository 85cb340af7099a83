//! `sftok-prep bench-load`: the loader's throughput next to the decoder's raw rate on the same
//! shards, in `RESULT name key=value` lines like ../shared/bench/bench_load_py.py prints.

use super::sources;
use super::tar_samples::for_each_sample;
use super::{Loader, LoaderConfig};
use crate::batch::BatchStream;
use crate::jpeg::JpegDecoder;
use crate::procstat::{cpu_seconds, peak_rss_mb};
use crate::transform::{decode_rgb, decode_view_into};
use crate::view::View;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub loader: LoaderConfig,
    pub warmup: usize,
    pub batches: usize,
    /// Images for the in-memory decode-only and decode+transform rates (0: skip).
    pub decode_images: usize,
}

/// One measurement: images, wall seconds, process CPU seconds.
#[derive(Clone, Debug)]
pub struct Rate {
    pub images: usize,
    pub seconds: f64,
    pub cpu_s: f64,
}

impl Rate {
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.seconds
    }

    pub fn images_per_cpu_s(&self) -> f64 {
        self.images as f64 / self.cpu_s
    }
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub loader: Rate,
    /// JPEG entropy decoding only (no IDCT, upsampling, colour conversion): the floor under any
    /// decoder built on libjpeg-turbo — PIL's included. Same pool and input as `decode`.
    pub entropy: Option<Rate>,
    /// Bytes → RGB only, on a pool of the loader's worker count, input in memory.
    pub decode: Option<Rate>,
    /// Decode + resize + crop, same pool, input in memory.
    pub transform: Option<Rate>,
    /// `procstat::peak_rss_mb` after the run.
    pub peak_rss_mb: f64,
}

pub fn bench_load(opts: &BenchOptions) -> Result<BenchReport> {
    let mut loader = Loader::new(opts.loader.clone())?;
    for _ in 0..opts.warmup {
        let batch = loader.next_batch()?.context("the shards ran out during warm-up: use fewer --warmup batches or more epochs")?;
        loader.recycle(batch);
    }
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut images = 0;
    for _ in 0..opts.batches {
        let batch = loader.next_batch()?.context("the shards ran out: use fewer --batches")?;
        images += batch.len();
        loader.recycle(batch);
    }
    let rate = Rate { images, seconds: t0.elapsed().as_secs_f64(), cpu_s: cpu_seconds() - c0 };
    drop(loader);
    let [entropy, decode, transform] = if opts.decode_images > 0 { decode_rates(opts)?.map(Some) } else { [None, None, None] };
    Ok(BenchReport { loader: rate, entropy, decode, transform, peak_rss_mb: peak_rss_mb() })
}

/// Entropy-only, decode-only and decode+transform rates on the same in-memory images.
fn decode_rates(opts: &BenchOptions) -> Result<[Rate; 3]> {
    let mut blobs = Vec::new();
    'shards: for shard in sources::resolve(&opts.loader.sources)? {
        let mut full = false;
        for_each_sample(&shard.path, |s| {
            if let Some(img) = s.image.filter(|_| !full) {
                blobs.push(img);
                full = blobs.len() == opts.decode_images;
            }
            Ok(())
        })?;
        if full {
            break 'shards;
        }
    }
    if blobs.is_empty() {
        bail!("no images in the shards");
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.loader.workers).build()?;
    let cfg = &opts.loader;
    let time = |f: &(dyn Fn(&Vec<u8>) -> Result<()> + Sync)| -> Result<Rate> {
        // An untimed pass first: the allocator's first big buffers are fresh mmap'd pages, whose
        // faults would otherwise be charged to whichever rate is measured first.
        pool.install(|| blobs.par_iter().take(64).try_for_each(f))?;
        let (t0, c0) = (Instant::now(), cpu_seconds());
        pool.install(|| blobs.par_iter().try_for_each(f))?;
        Ok(Rate { images: blobs.len(), seconds: t0.elapsed().as_secs_f64(), cpu_s: cpu_seconds() - c0 })
    };
    let entropy = time(&|b| match JpegDecoder::open(b)? {
        Some(jpeg) => jpeg.entropy_decode_only(),
        None => bail!("the entropy-only rate needs baseline/progressive 8-bit YCbCr, RGB or grey JPEGs"),
    })?;
    let decode = time(&|b| decode_rgb(b).map(drop))?;
    let transform = time(&|b| {
        let mut out = vec![0; (cfg.crop_size as usize).pow(2) * 3];
        decode_view_into(b, cfg.resize_shorter_edge, cfg.crop_size, |w, h| View::center(w, h, cfg.crop_size), &mut out).map(drop)
    })?;
    Ok([entropy, decode, transform])
}
