//! What shapes a loader's batch stream ([`LoaderConfig`]) and where a stream stands
//! ([`LoaderState`], saved in training checkpoints; [`EpochReport`]).

use super::sample::TransformSpec;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that shapes the batch stream. Start from [`LoaderConfig::train`] or
/// [`LoaderConfig::eval`] and change fields.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Shard directories, manifests, `.tar` files or brace patterns (see [`super::sources::resolve`]).
    pub sources: Vec<String>,
    pub batch_size: usize,
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    /// `RandomCrop` (else `CenterCrop`); ignored when proxy codes are attached (stored views).
    pub random_crop: bool,
    /// `RandomHorizontalFlip(0.5)`; ignored when proxy codes are attached.
    pub random_flip: bool,
    /// Permute the shards every epoch (else the given order).
    pub shuffle_shards: bool,
    /// Samples in the shuffle buffer (0 or 1: no sample shuffling). Holds encoded JPEGs: ~110 KB each.
    pub shuffle_buffer: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Finished batches buffered ahead of the consumer.
    pub prefetch: usize,
    /// Decode threads.
    pub workers: usize,
    /// Drop the last partial batch of each epoch (else emit it short).
    pub drop_last: bool,
    /// Stop after this many epochs (None: run forever).
    pub epochs: Option<u64>,
    /// Directory of proxy-code Parquet files, one per shard (`sftok-prep proxy-codes`).
    pub codes: Option<PathBuf>,
    /// With codes: skip (and count) samples without codes instead of failing.
    pub skip_missing_codes: bool,
    /// False: with codes attached, batches carry the codes and labels only (`images` empty, no
    /// JPEG decoding) — generator training from stored tokens needs no pixels.
    pub decode_pixels: bool,
}

impl LoaderConfig {
    /// The reference's training stream: `Resize(256)` bicubic, `RandomCrop(256)`,
    /// `RandomHorizontalFlip`, shards permuted per epoch, shuffle buffer 5000, batch 64.
    pub fn train(sources: Vec<String>) -> LoaderConfig {
        LoaderConfig {
            sources,
            batch_size: 64,
            resize_shorter_edge: 256,
            crop_size: 256,
            random_crop: true,
            random_flip: true,
            shuffle_shards: true,
            shuffle_buffer: 5000,
            seed: 0,
            rank: 0,
            world_size: 1,
            prefetch: 4,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drop_last: true,
            epochs: None,
            codes: None,
            skip_missing_codes: false,
            decode_pixels: true,
        }
    }

    /// One ordered pass: `Resize(256)` + `CenterCrop(256)`, no shuffling, last batch kept.
    pub fn eval(sources: Vec<String>) -> LoaderConfig {
        LoaderConfig {
            random_crop: false,
            random_flip: false,
            shuffle_shards: false,
            shuffle_buffer: 0,
            drop_last: false,
            epochs: Some(1),
            ..LoaderConfig::train(sources)
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.workers == 0 || self.prefetch == 0 {
            bail!("batch_size, workers and prefetch must be positive (got {}, {}, {})", self.batch_size, self.workers, self.prefetch);
        }
        if self.resize_shorter_edge < self.crop_size {
            bail!("resize_shorter_edge {} is smaller than crop_size {}", self.resize_shorter_edge, self.crop_size);
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            bail!("rank {} is not below world size {}", self.rank, self.world_size);
        }
        Ok(())
    }

    pub(super) fn spec(&self) -> TransformSpec {
        TransformSpec {
            resize_shorter_edge: self.resize_shorter_edge,
            crop_size: self.crop_size,
            random_crop: self.random_crop,
            random_flip: self.random_flip,
            pixels: self.decode_pixels || self.codes.is_none(),
        }
    }
}

/// The loader's position, saved into training checkpoints. The option fields are there to refuse
/// a restore under settings that would give a different stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub format: String,
    pub epoch: u64,
    /// Samples of this epoch's (rank's, shuffled) stream already turned into batches or skipped.
    pub consumed: u64,
    pub batches_in_epoch: u64,
    pub skipped_in_epoch: u64,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    pub shards: usize,
    pub batch_size: usize,
    pub shuffle_buffer: usize,
    pub shuffle_shards: bool,
    pub random_crop: bool,
    pub random_flip: bool,
    pub drop_last: bool,
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    pub codes: bool,
}

pub(super) const STATE_FORMAT: &str = "sftok-loader/1";

impl LoaderState {
    pub(super) fn start(cfg: &LoaderConfig, shards: usize) -> LoaderState {
        LoaderState {
            format: STATE_FORMAT.into(),
            epoch: 0,
            consumed: 0,
            batches_in_epoch: 0,
            skipped_in_epoch: 0,
            seed: cfg.seed,
            rank: cfg.rank,
            world_size: cfg.world_size,
            shards,
            batch_size: cfg.batch_size,
            shuffle_buffer: cfg.shuffle_buffer,
            shuffle_shards: cfg.shuffle_shards,
            random_crop: cfg.random_crop,
            random_flip: cfg.random_flip,
            drop_last: cfg.drop_last,
            resize_shorter_edge: cfg.resize_shorter_edge,
            crop_size: cfg.crop_size,
            codes: cfg.codes.is_some(),
        }
    }

    /// The state at the start of `epoch`.
    pub(super) fn at_epoch(&self, epoch: u64) -> LoaderState {
        LoaderState { epoch, consumed: 0, batches_in_epoch: 0, skipped_in_epoch: 0, ..self.clone() }
    }
}

/// End-of-epoch account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochReport {
    pub epoch: u64,
    /// Samples read from this rank's shards.
    pub samples: u64,
    pub batches: u64,
    /// Samples skipped (decode failures, bad labels, missing codes).
    pub skipped: u64,
    /// Samples in the dropped last partial batch.
    pub dropped: u64,
}
