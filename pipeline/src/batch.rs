//! The unit the loader hands to the trainer, the teacher pass and the evaluator.

use anyhow::Result;

/// One batch: uint8 NHWC pixels plus per-sample metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// `len × size × size × 3` bytes, row-major RGB.
    pub images: Vec<u8>,
    /// Side of the square images (the crop size).
    pub size: u32,
    pub labels: Vec<i64>,
    pub keys: Vec<String>,
    /// Proxy codes (`len × codes_per_image`, raster order) when a code store is attached.
    pub codes: Option<Vec<u16>>,
    pub codes_per_image: usize,
    /// The stored view each sample was cut with, when a code store is attached.
    pub views: Option<Vec<u8>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A stream of batches whose position can be saved into a training checkpoint and restored
/// (the concrete loader knows how to rebuild itself from the saved state).
pub trait BatchStream: Send {
    /// The next batch, or None when the configured number of epochs is exhausted.
    fn next_batch(&mut self) -> Result<Option<Batch>>;
    /// Serialisable position *after* the last batch returned.
    fn state(&self) -> serde_json::Value;
    /// Hands a used batch back so its pixel buffer can hold a later batch: a fresh 12 MB buffer
    /// per batch costs page faults on every one. Optional; the default drops it.
    fn recycle(&mut self, batch: Batch) {
        drop(batch);
    }
}
