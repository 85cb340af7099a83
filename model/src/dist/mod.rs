//! Data-parallel training on libtorch's c10d (the engine behind `torch.distributed`): a TCPStore
//! rendezvous at `MASTER_ADDR:MASTER_PORT` (torchrun's agent serves it; otherwise rank 0 does),
//! ProcessGroupNCCL for CUDA tensors (`nccl` feature) and ProcessGroupGloo otherwise, and the
//! collectives the trainer needs: parameters broadcast from rank 0, gradients averaged in
//! flattened buckets once per optimiser step, scalars averaged for logging, loader positions
//! gathered for rank 0's checkpoint, barriers.
//!
//! Failure: every collective fails after the process group's timeout (`--dist-timeout`), and a
//! peer that exits makes it fail at once. The error then names the ranks at fault, from what each
//! rank leaves in the store: a heartbeat (every second, from a thread) and the micro-step it last
//! entered.

pub mod bench;
pub mod c10d;

use anyhow::{Context, Result, anyhow, bail};
use c10d::{ProcessGroup, ReduceOp, Store};
use sftok_pipeline::launch_env::{Launcher, ProcessEnv};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tch::{Device, Tensor};

/// PyTorch DDP's default bucket size.
pub const BUCKET_BYTES: usize = 25 << 20;
/// PyTorch's default process-group timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A heartbeat older than this marks its rank as gone.
const HEARTBEAT_STALE: Duration = Duration::from_secs(5);

/// One process of a data-parallel job.
pub struct Dist {
    pub rank: usize,
    pub world_size: usize,
    pg: ProcessGroup,
    /// Where this group's tensors live: the CUDA device for NCCL, the CPU for Gloo.
    device: Device,
    /// The gradient buckets' flat buffers, kept from one optimiser step to the next: allocating the
    /// gradients' size anew every step costs page faults on the CPU.
    grad_buffers: Mutex<Vec<Tensor>>,
    store: Arc<Store>,
    /// Where the store is, for messages.
    rendezvous: String,
    timeout: Duration,
    heartbeat_stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Dist {
    /// The job this process belongs to, from the launcher's environment; None for one process.
    /// `device` picks the backend: NCCL for CUDA (when built with it), Gloo otherwise.
    pub fn from_env(env: &ProcessEnv, device: Device, timeout: Duration) -> Result<Option<Arc<Dist>>> {
        if env.world_size == 1 {
            return Ok(None);
        }
        Dist::connect(env, device, timeout).map(|d| Some(Arc::new(d)))
    }

    /// As [`Dist::from_env`], but a process group even for one process (benchmarks, the GPU check):
    /// alone, it serves its own store on a free loopback port.
    pub fn connect(env: &ProcessEnv, device: Device, timeout: Duration) -> Result<Dist> {
        let addr = std::env::var("MASTER_ADDR").ok().filter(|a| !a.is_empty());
        let addr = match (addr, env.launcher) {
            (Some(a), _) => a,
            (None, _) if env.world_size == 1 => "127.0.0.1".into(),
            (None, Launcher::Slurm) => bail!(
                "{} processes under Slurm but MASTER_ADDR is not set: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1) \
                 and MASTER_PORT (e.g. 29500) before srun (README: multi-GPU training)",
                env.world_size
            ),
            (None, _) => bail!("RANK/WORLD_SIZE say {} processes but MASTER_ADDR is not set: launch with torchrun, or set MASTER_ADDR and MASTER_PORT", env.world_size),
        };
        let port: u16 = match std::env::var("MASTER_PORT") {
            Ok(p) => p.trim().parse().with_context(|| format!("MASTER_PORT={p} is not a port number"))?,
            Err(_) if env.world_size == 1 => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            Err(_) => 29500,
        };
        // Under torchrun the elastic agent already serves the store: every rank is a client.
        let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let is_server = env.rank == 0 && !agent_store;
        let rendezvous = format!("{addr}:{port}");
        let base = Store::tcp(&addr, port, is_server, env.world_size, timeout).map_err(|e| {
            anyhow!(
                "rank {}: connecting to the rendezvous store at {rendezvous} ({}) failed: {e}",
                env.rank,
                if is_server { "this rank serves it: is the port in use?" } else { "served by rank 0 or torchrun's agent" }
            )
        })?;
        // One namespace per (re)start of the job: a restarted torchrun job meets fresh keys.
        let attempt = std::env::var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|_| "0".into());
        let store = base.prefixed(&format!("sftok/attempt_{attempt}"))?;
        Dist::new(store, env.rank, env.world_size, device, timeout, rendezvous)
    }

    /// A process group over an existing store (a FileStore in tests).
    pub fn new(store: Store, rank: usize, world_size: usize, device: Device, timeout: Duration, rendezvous: String) -> Result<Dist> {
        let (pg, device) = match device {
            Device::Cuda(_) if cfg!(feature = "nccl") => (ProcessGroup::nccl(&store, rank, world_size, timeout), device),
            _ => {
                let ifnames = std::env::var("GLOO_SOCKET_IFNAME").ok();
                (ProcessGroup::gloo(&store, rank, world_size, timeout, ifnames.as_deref()), Device::Cpu)
            }
        };
        let pg = pg
        .map_err(|e| anyhow!("rank {rank}: creating the process group of {world_size} ranks (store {rendezvous}) failed: {e}"))?;
        let store = Arc::new(store);
        let heartbeat_stop = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (store, stop) = (store.clone(), heartbeat_stop.clone());
            std::thread::Builder::new().name("sftok-heartbeat".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A store that went away is reported by the next collective, not here.
                    let _ = store.set(&format!("alive/{rank}"), now_ms().to_string().as_bytes());
                    std::thread::sleep(HEARTBEAT_EVERY);
                }
            })?
        };
        Ok(Dist { rank, world_size, pg, device, grad_buffers: Mutex::new(Vec::new()), store, rendezvous, timeout, heartbeat_stop, heartbeat: Some(heartbeat) })
    }

    pub fn backend(&self) -> &'static str {
        self.pg.backend
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Records that this rank entered micro-step `n` (named in other ranks' errors if it stops there).
    pub fn mark_micro_step(&self, n: u64) {
        let _ = self.store.set(&format!("step/{}", self.rank), n.to_string().as_bytes());
    }

    /// `what` failed with `e`: an error naming this rank, the ranks that look at fault and the store.
    pub fn failure(&self, what: &str, e: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "rank {} of {}: {what} failed ({} backend): {e}. {}. Stop the other ranks, then rerun the same command: it continues from the last complete checkpoint",
            self.rank,
            self.world_size,
            self.pg.backend,
            self.diagnose()
        )
    }

    /// Which peers are gone (stale heartbeat) or behind (an earlier micro-step), from the store.
    fn diagnose(&self) -> String {
        let read = |key: &str| -> Result<Option<String>> {
            if !self.store.contains(key)? {
                return Ok(None);
            }
            Ok(Some(String::from_utf8_lossy(&self.store.get(key, Duration::from_secs(5))?).into_owned()))
        };
        // Let a dead peer's heartbeat go stale before judging it.
        std::thread::sleep(HEARTBEAT_STALE + HEARTBEAT_EVERY);
        let mine = read(&format!("step/{}", self.rank)).ok().flatten().and_then(|s| s.parse::<u64>().ok());
        let mut notes = Vec::new();
        for r in (0..self.world_size).filter(|&r| r != self.rank) {
            let (alive, step) = match (read(&format!("alive/{r}")), read(&format!("step/{r}"))) {
                (Ok(a), Ok(s)) => (a, s),
                (Err(e), _) | (_, Err(e)) => {
                    return format!(
                        "The rendezvous store at {} is unreachable ({e}): the process serving it (rank 0, or torchrun's agent) is gone",
                        self.rendezvous
                    );
                }
            };
            let age = alive.and_then(|t| t.parse::<u64>().ok()).map(|t| Duration::from_millis(now_ms().saturating_sub(t)));
            let step = step.and_then(|s| s.parse::<u64>().ok());
            match age {
                None => notes.push(format!("rank {r} never joined")),
                Some(a) if a > HEARTBEAT_STALE => notes.push(format!("rank {r} is gone (no heartbeat for {:.0} s{})", a.as_secs_f64(), at_step(step))),
                Some(_) if step < mine => notes.push(format!("rank {r} is alive but behind{} (stuck?)", at_step(step))),
                Some(_) => {}
            }
        }
        if notes.is_empty() {
            format!("Every peer looks alive and at this rank's step; see their output (store {})", self.rendezvous)
        } else {
            format!("{}; see its output", notes.join("; "))
        }
    }

    /// Copies rank 0's values into every rank's tensors (sorted by name, so all ranks agree on
    /// the order whatever map they came from), in flattened buckets.
    pub fn broadcast_named(&self, named: &BTreeMap<String, Tensor>) -> Result<()> {
        let tensors: Vec<&Tensor> = named.values().collect();
        tch::no_grad(|| {
            for bucket in buckets(&tensors) {
                let flat = flat_buffer(&bucket);
                pack(&flat, &bucket);
                self.pg.broadcast_start(&flat, 0)?.wait().map_err(|e| self.failure("broadcasting the parameters from rank 0", e))?;
                unflatten(&flat, &bucket);
            }
            Ok(())
        })
    }

    /// Averages the gradients of `params` over the ranks in ~25 MB flattened buckets; every
    /// bucket's all-reduce is started before the first is waited for, so packing overlaps the
    /// transfer. A parameter without a gradient on every rank keeps none; one with a gradient on
    /// some ranks only is refused.
    pub fn average_gradients(&self, params: &[Tensor], step: u64) -> Result<()> {
        tch::no_grad(|| {
            let defined: Vec<f32> = params.iter().map(|p| p.grad().defined() as u8 as f32).collect();
            let count = Tensor::from_slice(&defined).to_device(self.device);
            self.pg.allreduce(&count, ReduceOp::Sum).map_err(|e| self.failure(&format!("the gradient all-reduce of step {step}"), e))?;
            let count = Vec::<f32>::try_from(&count.to_device(Device::Cpu))?;
            let mut grads = Vec::new();
            for (i, p) in params.iter().enumerate() {
                match (count[i] as usize, defined[i] > 0.0) {
                    (0, _) => {}
                    (n, true) if n == self.world_size => grads.push(p.grad()),
                    (n, _) => bail!(
                        "parameter {i} (of {}) has a gradient on {n} of {} ranks: every trainable parameter must take part in every rank's loss",
                        params.len(),
                        self.world_size
                    ),
                }
            }
            let refs: Vec<&Tensor> = grads.iter().collect();
            let mut buffers = self.grad_buffers.lock().map_err(|_| anyhow!("the gradient buffers' lock is poisoned"))?;
            let layout = buckets(&refs);
            if buffers.len() != layout.len() || buffers.iter().zip(&layout).any(|(f, b)| !fits(f, b)) {
                *buffers = layout.iter().map(|b| flat_buffer(b)).collect();
            }
            let mut flying = Vec::new();
            for (bucket, flat) in layout.into_iter().zip(buffers.iter()) {
                pack(flat, &bucket);
                let flat = flat.shallow_clone();
                let work = self.pg.allreduce_start(&flat, ReduceOp::Sum).map_err(|e| self.failure(&format!("the gradient all-reduce of step {step}"), e))?;
                flying.push((flat, bucket, work));
            }
            for (mut flat, bucket, work) in flying {
                work.wait().map_err(|e| self.failure(&format!("the gradient all-reduce of step {step}"), e))?;
                let _ = flat.g_div_scalar_(self.world_size as f64);
                unflatten(&flat, &bucket);
            }
            Ok(())
        })
    }

    /// Sums `values` over the ranks in place (a non-finite value anywhere makes its sum non-finite).
    pub fn sum_all(&self, values: &mut [f64], what: &str) -> Result<()> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.pg.allreduce(&t, ReduceOp::Sum).map_err(|e| self.failure(what, e))?;
        values.copy_from_slice(&Vec::<f64>::try_from(&t.to_device(Device::Cpu))?);
        Ok(())
    }

    /// Whether every rank passed the same `value` (an all-reduce of the maximum of `value` and of `−value`).
    pub fn all_equal(&self, value: f64, what: &str) -> Result<bool> {
        let t = Tensor::from_slice(&[value, -value]).to_device(self.device);
        self.pg.allreduce(&t, ReduceOp::Max).map_err(|e| self.failure(what, e))?;
        let v = Vec::<f64>::try_from(&t.to_device(Device::Cpu))?;
        Ok(v[0] == value && -v[1] == value)
    }

    /// Averages every value of `metrics` over the ranks (same keys on every rank).
    pub fn average_metrics(&self, metrics: &mut BTreeMap<String, f64>, what: &str) -> Result<()> {
        // The key names' checksum travels along: ranks with other keys would average unrelated values.
        let names = metrics.keys().fold(0u32, |h, k| k.bytes().fold(h, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) ^ 0x9e37);
        let mut values: Vec<f64> = metrics.values().copied().chain([names as f64]).collect();
        self.sum_all(&mut values, what)?;
        if values.pop() != Some(names as f64 * self.world_size as f64) {
            bail!("rank {}: {what}: the ranks log different metric names (this rank: {:?})", self.rank, metrics.keys().collect::<Vec<_>>());
        }
        for (v, s) in metrics.values_mut().zip(values) {
            *v = s / self.world_size as f64;
        }
        Ok(())
    }

    /// Every rank's `value` under `key`, in rank order, on rank 0 (None elsewhere).
    pub fn gather_on_main(&self, key: &str, value: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        self.store.set(&format!("{key}/{}", self.rank), value).map_err(|e| self.failure(&format!("storing {key}"), e))?;
        if !self.is_main() {
            return Ok(None);
        }
        (0..self.world_size)
            .map(|r| self.store.get(&format!("{key}/{r}"), self.timeout).map_err(|e| self.failure(&format!("collecting {key} of rank {r}"), e)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn barrier(&self, what: &str) -> Result<()> {
        self.pg.barrier().map_err(|e| self.failure(what, e))
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        self.heartbeat_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
    }
}

fn at_step(step: Option<u64>) -> String {
    step.map_or(String::new(), |s| format!(", last at micro-step {s}"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Consecutive runs of tensors of one kind and device, each at most [`BUCKET_BYTES`] (a larger
/// tensor is a bucket of its own).
fn buckets<'a>(tensors: &[&'a Tensor]) -> Vec<Vec<&'a Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0usize;
    for &t in tensors {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b| {
            let first = b[0];
            first.kind() == t.kind() && first.device() == t.device() && bytes + size <= BUCKET_BYTES
        });
        if fits {
            out.last_mut().unwrap().push(t);
            bytes += size;
        } else {
            out.push(vec![t]);
            bytes = size;
        }
    }
    out
}

/// An uninitialised flat tensor the size, kind and device of `bucket`.
fn flat_buffer(bucket: &[&Tensor]) -> Tensor {
    Tensor::empty([numel(bucket)], (bucket[0].kind(), bucket[0].device()))
}

fn numel(bucket: &[&Tensor]) -> i64 {
    bucket.iter().map(|t| t.numel() as i64).sum()
}

/// Whether `flat` can hold `bucket` (same size, kind and device).
fn fits(flat: &Tensor, bucket: &[&Tensor]) -> bool {
    flat.numel() as i64 == numel(bucket) && flat.kind() == bucket[0].kind() && flat.device() == bucket[0].device()
}

/// Copies the bucket's tensors into `flat`, one after the other.
fn pack(flat: &Tensor, bucket: &[&Tensor]) {
    let mut offset = 0i64;
    for t in bucket {
        let n = t.numel() as i64;
        flat.narrow(0, offset, n).copy_(&t.reshape([-1]));
        offset += n;
    }
}

fn unflatten(flat: &Tensor, bucket: &[&Tensor]) {
    let mut offset = 0i64;
    for t in bucket {
        let n = t.numel() as i64;
        let mut dst = (*t).shallow_clone();
        dst.copy_(&flat.narrow(0, offset, n).view_as(t));
        offset += n;
    }
}
