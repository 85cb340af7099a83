//! All-reduce bandwidth through the trainer's own gradient path ([`Dist::average_gradients`]:
//! ~25 MB flattened buckets, sum, divide), the number `tools/bench-ddp.sh` and the GPU check report.

use super::Dist;
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Parameter tensors of at most this many values stand in for a model's (the bucketing then
/// packs several per bucket, as for real gradients).
const PARAM_VALUES: usize = 1 << 20;

pub struct AllreduceRate {
    pub numel: usize,
    pub seconds: f64,
    /// Gradient bytes averaged per second.
    pub algbw_gb_s: f64,
    /// nccl-tests' bus bandwidth: algbw · 2(n−1)/n, the per-link rate of a ring all-reduce.
    pub busbw_gb_s: f64,
}

/// `numel` float32 gradient values on `device`, averaged `iters` times after one warm-up.
pub fn allreduce_rate(dist: &Dist, numel: usize, iters: usize, device: Device) -> Result<AllreduceRate> {
    let mut params = Vec::new();
    let mut left = numel;
    while left > 0 {
        let n = left.min(PARAM_VALUES);
        let p = Tensor::zeros([n as i64], (Kind::Float, device)).set_requires_grad(true);
        p.sum(Kind::Float).backward(); // gradient: ones
        params.push(p);
        left -= n;
    }
    dist.average_gradients(&params, 0)?;
    let t0 = Instant::now();
    for i in 0..iters {
        dist.average_gradients(&params, i as u64 + 1)?;
    }
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let seconds = t0.elapsed().as_secs_f64() / iters.max(1) as f64;
    let gb = (numel * 4) as f64 / 1e9;
    let n = dist.world_size as f64;
    Ok(AllreduceRate { numel, seconds, algbw_gb_s: gb / seconds, busbw_gb_s: gb / seconds * 2.0 * (n - 1.0) / n })
}
