//! Hidden benchmark commands of `sftok-eval`, printing `RESULT …` lines in the format of
//! `shared/bench/run_bench.py`, so tools/bench-fid.sh can time them next to bench_fid_py.py.

use sftok_pipeline::procstat;
use anyhow::{Result, ensure};
use crate::inception::{FidInception, FidInceptionConfig, InputPipeline};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct FeatureBench {
    pub batch: i64,
    pub batches: usize,
    pub warmup: usize,
    pub size: i64,
    pub threads: Option<usize>,
    pub float64: bool,
    pub pipeline: InputPipeline,
    pub seed: i64,
}

/// Feature throughput of the FID Inception with random weights on random uint8 images, the
/// uint8 → float conversion and resize included (as bench_fid_py.py).
pub fn features(b: &FeatureBench) -> Result<()> {
    ensure!(b.batch > 0 && b.batches > 0, "--batch and --batches must be positive");
    if let Some(n) = b.threads {
        tch::set_num_threads(n as i32);
    }
    let kind = if b.float64 { Kind::Double } else { Kind::Float };
    let mut net = FidInception::new(FidInceptionConfig::default(), Device::Cpu, kind)?;
    net.randomize(b.seed);
    let images = Tensor::randint(256, [b.batch, b.size, b.size, 3], (Kind::Uint8, Device::Cpu));
    for _ in 0..b.warmup {
        net.features(&images, b.pipeline);
    }
    let (t0, c0) = (Instant::now(), procstat::cpu_seconds());
    let mut pool3 = None;
    for _ in 0..b.batches {
        pool3 = Some(net.features(&images, b.pipeline).pool3);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds() - c0; // NaN where /proc is missing
    let pool3 = pool3.expect("at least one batch");
    ensure!(pool3.isfinite().all().int64_value(&[]) == 1, "non-finite features");
    let n = (b.batch as usize * b.batches) as f64;
    println!(
        "RESULT fid_rs dtype={} batch={} size={} threads={} images={} seconds={seconds:.3} images_per_s={:.2} \
         cpu_s={cpu:.3} images_per_cpu_s={:.2} load1={:.2}",
        if b.float64 { "float64" } else { "float32" },
        b.batch,
        b.size,
        tch::get_num_threads(),
        n,
        n / seconds,
        n / cpu,
        procstat::load_average()
    );
    Ok(())
}

/// Fréchet distance of two `mu`/`sigma` files, like bench_fid_py.py's `--stats-a/--stats-b`.
pub fn frechet(a: &Path, b: &Path, threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        tch::set_num_threads(n as i32);
    }
    let (sa, sb) = (super::fid::stats_file(a)?, super::fid::stats_file(b)?);
    let (f, seconds) = super::fid::timed_frechet(&sa, &sb)?;
    println!("RESULT fid_distance_rs value={:?} seconds={seconds:.3} threads={}", f.value, tch::get_num_threads());
    Ok(())
}
