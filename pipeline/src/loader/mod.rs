//! The prefetching loader: shards (+ proxy codes) → uint8 NHWC batches, resumable exactly.
//!
//! Three stages connected by channels:
//! 1. a **reader** thread walks this rank's shards of the epoch (seeded permutation, dealt
//!    round-robin over ranks), streams their samples through the seeded shuffle buffer, numbers
//!    them, and hands each to the decode pool — at most `window` samples in flight;
//! 2. the **decode pool** (rayon, `workers` threads) decodes, resizes and crops each sample;
//! 3. an **assembler** thread puts results back in stream order, skips bad samples (warning
//!    naming shard and key), cuts batches, and sends them through a bounded channel of depth
//!    `prefetch`.
//!
//! Every choice is a pure function of (seed, epoch, rank, input order), and a batch's position is
//! "samples of the epoch's shuffled stream consumed", so `state()` is a few numbers and a restore
//! replays the reader up to that position without decoding anything (it still reads the skipped
//! part of the shards: the shuffle buffer's contents depend on it).

pub mod bench;
mod config;
pub mod order;
pub mod sample;
pub mod sources;
pub mod tar_samples;

use crate::batch::{Batch, BatchStream};
use crate::codes::{CodeMeta, ProxyCodeStore};
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use order::{ShuffleBuffer, TAG_SHUFFLE, rank_shards};
use sample::{CodeChoice, Decoded, choose_codes, process};
use sources::Shard;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tar_samples::{TarSample, for_each_sample};

use config::STATE_FORMAT;
pub use config::{EpochReport, LoaderConfig, LoaderState};

/// The loader. Dropping it stops its threads and abandons the prefetched work at once (a
/// trainer switching to an eval loader should not share the cores with a dying one).
pub struct Loader {
    rx: Receiver<Result<(Batch, LoaderState)>>,
    /// Pixel buffers of used batches, back to the assembler ([`BatchStream::recycle`]).
    recycled: Sender<Vec<u8>>,
    state: LoaderState,
    reports: Arc<Mutex<Vec<EpochReport>>>,
    code_meta: Option<CodeMeta>,
    done: bool,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Disconnect the batch channel so an assembler blocked on a full channel wakes up.
        drop(std::mem::replace(&mut self.rx, bounded(0).1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The reader gives up quietly with this when the consumer has gone.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("loader stopped")
    }
}

impl std::error::Error for Stopped {}

enum Event {
    Sample { epoch: u64, idx: u64, shard: Arc<str>, key: String, result: Result<Decoded, String> },
    EpochEnd { epoch: u64, samples: u64 },
    Failed(anyhow::Error),
    Finished,
}

impl Loader {
    pub fn new(cfg: LoaderConfig) -> Result<Loader> {
        cfg.validate()?;
        let shards = sources::resolve(&cfg.sources)?;
        let state = LoaderState::start(&cfg, shards.len());
        Loader::start(cfg, shards, state)
    }

    /// Continues a stream from a state saved by [`BatchStream::state`]; the configuration must
    /// match the one it was saved under (sources, seed, batch size, shuffling, ranks, …).
    pub fn restore(cfg: LoaderConfig, state: &serde_json::Value) -> Result<Loader> {
        cfg.validate()?;
        let saved: LoaderState = serde_json::from_value(state.clone()).context("the checkpoint's loader state is not a sftok-loader/1 state")?;
        if saved.format != STATE_FORMAT {
            bail!("loader state format `{}` is not `{STATE_FORMAT}`", saved.format);
        }
        let shards = sources::resolve(&cfg.sources)?;
        let fresh = LoaderState::start(&cfg, shards.len());
        let expected = LoaderState { epoch: saved.epoch, consumed: saved.consumed, batches_in_epoch: saved.batches_in_epoch, skipped_in_epoch: saved.skipped_in_epoch, ..fresh };
        if expected != saved {
            bail!(
                "the loader state was saved under other settings, so the stream would differ:\n  saved:   {}\n  current: {}\nrestore with the original data and loader options",
                serde_json::to_string(&saved)?,
                serde_json::to_string(&expected)?
            );
        }
        Loader::start(cfg, shards, saved)
    }

    fn start(cfg: LoaderConfig, shards: Vec<Shard>, state: LoaderState) -> Result<Loader> {
        let store = cfg.codes.as_deref().map(ProxyCodeStore::open).transpose()?;
        if let Some(store) = &store
            && store.meta().image_size != cfg.crop_size
        {
            bail!("proxy codes in {} were computed on {}px crops, the loader cuts {}px", store.dir().display(), store.meta().image_size, cfg.crop_size);
        }
        let code_meta = store.as_ref().map(|s| s.meta().clone());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("sftok-decode-{i}"))
            .build()
            .context("starting the decode pool")?;
        let window = (2 * cfg.batch_size).max(4 * cfg.workers);
        // A credit is a pixel buffer: the assembler hands each sample's buffer back once it is
        // copied into a batch, so `window` buffers circulate and none is allocated per sample.
        let (credit_tx, credit_rx) = bounded(window);
        for _ in 0..window {
            credit_tx.send(Vec::new()).expect("the credit channel has room for the window");
        }
        let (event_tx, event_rx) = unbounded();
        let (batch_tx, batch_rx) = bounded(cfg.prefetch);
        let (recycle_tx, recycle_rx) = bounded(cfg.prefetch + 1);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));

        let reader = Reader {
            cfg: cfg.clone(),
            shards: Arc::new(shards),
            store,
            pool,
            credits: credit_rx,
            events: event_tx,
            start: state.clone(),
            stop: stop.clone(),
        };
        let reader = std::thread::Builder::new().name("sftok-reader".into()).spawn(move || reader.run()).context("starting the reader thread")?;
        let assembler = Assembler {
            cfg,
            codes_per_image: code_meta.as_ref().map_or(0, |m| m.codes_per_image),
            events: event_rx,
            credits: credit_tx,
            out: batch_tx,
            recycled: recycle_rx,
            state: state.clone(),
            reports: reports.clone(),
            stop: stop.clone(),
        };
        let assembler = std::thread::Builder::new().name("sftok-assembler".into()).spawn(move || assembler.run()).context("starting the assembler thread")?;
        Ok(Loader { rx: batch_rx, recycled: recycle_tx, state, reports, code_meta, done: false, stop, threads: vec![reader, assembler] })
    }

    /// Accounts of the epochs finished so far.
    pub fn epoch_reports(&self) -> Vec<EpochReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The attached code store's metadata (teacher checksum, views per image, …).
    pub fn code_meta(&self) -> Option<&CodeMeta> {
        self.code_meta.as_ref()
    }
}

impl BatchStream for Loader {
    fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.done {
            return Ok(None);
        }
        match self.rx.recv() {
            Ok(Ok((batch, state))) => {
                self.state = state;
                Ok(Some(batch))
            }
            Ok(Err(e)) => {
                self.done = true;
                Err(e)
            }
            Err(_) => {
                self.done = true;
                Ok(None)
            }
        }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("LoaderState serialises")
    }

    fn recycle(&mut self, batch: Batch) {
        let _ = self.recycled.try_send(batch.images);
    }
}

struct Reader {
    cfg: LoaderConfig,
    shards: Arc<Vec<Shard>>,
    store: Option<ProxyCodeStore>,
    pool: rayon::ThreadPool,
    credits: Receiver<Vec<u8>>,
    events: Sender<(u64, Event)>,
    start: LoaderState,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(self) {
        let mut seq = 0u64;
        let end = match self.epochs(&mut seq) {
            Ok(()) => Event::Finished,
            Err(e) if e.is::<Stopped>() => return,
            Err(e) => Event::Failed(e),
        };
        let _ = self.events.send((seq, end));
    }

    fn epochs(&self, seq: &mut u64) -> Result<()> {
        let mut epoch = self.start.epoch;
        while self.cfg.epochs.is_none_or(|n| epoch < n) {
            let skip = if epoch == self.start.epoch { self.start.consumed } else { 0 };
            let samples = self.epoch(epoch, skip, seq)?;
            self.send(seq, Event::EpochEnd { epoch, samples })?;
            epoch += 1;
        }
        Ok(())
    }

    /// Streams one epoch; returns the number of samples read.
    fn epoch(&self, epoch: u64, skip: u64, seq: &mut u64) -> Result<u64> {
        let cfg = &self.cfg;
        let order = rank_shards(self.shards.len(), cfg.seed, epoch, cfg.rank, cfg.world_size, cfg.shuffle_shards)?;
        let mut buffer = ShuffleBuffer::new(Rng::keyed(&[cfg.seed, TAG_SHUFFLE, epoch, cfg.rank as u64]), cfg.shuffle_buffer);
        let codes_dir = cfg.codes.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
        let mut idx = 0u64;
        let mut emit = |(shard, sample, code): (Arc<str>, TarSample, CodeChoice)| -> Result<()> {
            let i = idx;
            idx += 1;
            if i < skip {
                return Ok(());
            }
            if matches!(code, CodeChoice::Missing) && !cfg.skip_missing_codes {
                bail!("shard {shard}: key {} has no proxy codes in {codes_dir} (compute them, or set skip_missing_codes to skip such samples)", sample.key);
            }
            let pixels = self.credits.recv().map_err(|_| Stopped)?;
            if self.stop.load(Ordering::Relaxed) {
                return Err(Stopped.into());
            }
            let (events, spec, seed, s, stop) = (self.events.clone(), cfg.spec(), cfg.seed, *seq, self.stop.clone());
            *seq += 1;
            self.pool.spawn(move || {
                let key = sample.key.clone();
                // After a stop the result is never used: answer at once so the assembler is not
                // left waiting for it.
                let result = if stop.load(Ordering::Relaxed) { Err("loader stopped".into()) } else { process(sample, code, spec, seed, epoch, pixels) };
                let _ = events.send((s, Event::Sample { epoch, idx: i, shard, key, result }));
            });
            Ok(())
        };
        for &si in &order {
            let shard = &self.shards[si];
            let name: Arc<str> = shard.name.as_str().into();
            let codes = match &self.store {
                None => None,
                Some(store) => {
                    let codes = store.load_shard(&shard.name)?;
                    if codes.is_none() && !cfg.skip_missing_codes {
                        bail!("no proxy codes for shard {} in {} (run sftok-prep proxy-codes for it, or set skip_missing_codes)", shard.name, store.dir().display());
                    }
                    Some(codes)
                }
            };
            for_each_sample(&shard.path, |sample| {
                let code = match &codes {
                    None => CodeChoice::None,
                    Some(c) => choose_codes(c.as_ref(), cfg.seed, epoch, &sample.key),
                };
                match buffer.push((name.clone(), sample, code)) {
                    Some(out) => emit(out),
                    None => Ok(()),
                }
            })?;
        }
        while let Some(out) = buffer.drain_one() {
            emit(out)?;
        }
        Ok(idx)
    }

    fn send(&self, seq: &mut u64, event: Event) -> Result<()> {
        self.events.send((*seq, event)).map_err(|_| Stopped)?;
        *seq += 1;
        Ok(())
    }
}

struct Assembler {
    cfg: LoaderConfig,
    codes_per_image: usize,
    events: Receiver<(u64, Event)>,
    credits: Sender<Vec<u8>>,
    out: Sender<Result<(Batch, LoaderState)>>,
    recycled: Receiver<Vec<u8>>,
    /// Position after the last batch sent.
    state: LoaderState,
    reports: Arc<Mutex<Vec<EpochReport>>>,
    stop: Arc<AtomicBool>,
}

impl Assembler {
    fn run(mut self) {
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut batch = self.empty_batch();
        let mut skipped = self.state.skipped_in_epoch;
        let mut batches = self.state.batches_in_epoch;
        while let Ok((seq, event)) = self.events.recv() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            pending.insert(seq, event);
            while let Some(event) = pending.remove(&next) {
                next += 1;
                match event {
                    Event::Sample { epoch, idx, shard, key, result } => {
                        match result {
                            Ok(d) => {
                                let _ = self.credits.send(push(&mut batch, d));
                                if batch.len() == self.cfg.batch_size {
                                    batches += 1;
                                    let state = LoaderState { epoch, consumed: idx + 1, batches_in_epoch: batches, skipped_in_epoch: skipped, ..self.state.clone() };
                                    let full = std::mem::replace(&mut batch, self.empty_batch());
                                    if !self.send(full, state) {
                                        return;
                                    }
                                }
                            }
                            Err(reason) => {
                                let _ = self.credits.send(Vec::new());
                                skipped += 1;
                                eprintln!("warning: skipping sample {key} of shard {shard} (epoch {epoch}): {reason}");
                            }
                        }
                    }
                    Event::EpochEnd { epoch, samples } => {
                        let partial = std::mem::replace(&mut batch, self.empty_batch());
                        let keep = !partial.is_empty() && !self.cfg.drop_last;
                        let dropped = if keep { 0 } else { partial.len() as u64 };
                        let report = EpochReport { epoch, samples, batches: batches + keep as u64, skipped, dropped };
                        if skipped > 0 {
                            eprintln!("warning: epoch {epoch} (rank {}): skipped {skipped} of {samples} samples, see the warnings above", self.cfg.rank);
                        }
                        if let Ok(mut r) = self.reports.lock() {
                            r.push(report);
                        }
                        if batches == 0 && !keep {
                            // Every later epoch would end the same way: fail instead of reading forever.
                            let _ = self.out.send(Err(anyhow::anyhow!(
                                "rank {} of {}: an epoch of its shards holds {} usable sample(s), fewer than one batch of {} (the last \
                                 partial batch is dropped in training): lower training.per_gpu_batch_size, or use more shards or fewer processes",
                                self.cfg.rank,
                                self.cfg.world_size,
                                samples.saturating_sub(skipped),
                                self.cfg.batch_size
                            )));
                            return;
                        }
                        let next_epoch = self.state.at_epoch(epoch + 1);
                        if keep && !self.send(partial, next_epoch.clone()) {
                            return;
                        }
                        self.state = next_epoch;
                        (skipped, batches) = (0, 0);
                    }
                    Event::Failed(e) => {
                        let _ = self.out.send(Err(e));
                        return;
                    }
                    Event::Finished => return,
                }
            }
        }
    }

    fn empty_batch(&self) -> Batch {
        let n = self.cfg.batch_size;
        let with_codes = self.cfg.codes.is_some();
        let bytes = n * (self.cfg.crop_size as usize).pow(2) * 3;
        let images = match self.recycled.try_recv() {
            Ok(mut used) => {
                used.clear();
                used.reserve(bytes);
                used
            }
            Err(_) => Vec::with_capacity(bytes),
        };
        Batch {
            images,
            size: self.cfg.crop_size,
            labels: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            codes: with_codes.then(|| Vec::with_capacity(n * self.codes_per_image)),
            codes_per_image: self.codes_per_image,
            views: with_codes.then(|| Vec::with_capacity(n)),
        }
    }

    /// False when the consumer has gone.
    fn send(&mut self, batch: Batch, state: LoaderState) -> bool {
        self.state = state.clone();
        self.out.send(Ok((batch, state))).is_ok()
    }
}

/// Appends the sample; returns its pixel buffer for reuse.
fn push(batch: &mut Batch, d: Decoded) -> Vec<u8> {
    batch.images.extend_from_slice(&d.pixels);
    batch.labels.push(d.label);
    batch.keys.push(d.key);
    if let (Some((view_id, codes)), Some(all), Some(views)) = (d.code, batch.codes.as_mut(), batch.views.as_mut()) {
        all.extend_from_slice(&codes);
        views.push(view_id);
    }
    d.pixels
}
