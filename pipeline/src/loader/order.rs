//! Which shards a rank reads in an epoch, and the seeded shuffle buffer over their samples. Both
//! are pure functions of (seed, epoch, rank, input order), which is what makes a resumed run see
//! the same stream: replaying the same inputs through them reproduces every decision.

use crate::rng::Rng;
use anyhow::{Result, bail};

/// Stream tags for `Rng::keyed`, so the different seeded choices never share a stream.
pub const TAG_SHARDS: u64 = 0x5348_4152; // "SHAR"
pub const TAG_SHUFFLE: u64 = 0x5348_5546; // "SHUF"
pub const TAG_VIEW: u64 = 0x5649_4557; // "VIEW"

/// Indices of the shards rank `rank` reads in `epoch`: a seeded permutation of all shards (the
/// same on every rank), dealt round-robin, so ranks read disjoint shards that together cover all.
pub fn rank_shards(n_shards: usize, seed: u64, epoch: u64, rank: usize, world: usize, shuffle: bool) -> Result<Vec<usize>> {
    if n_shards < world {
        bail!("{n_shards} shard(s) cannot be split over {world} ranks: every rank needs at least one (write smaller shards)");
    }
    let mut order: Vec<usize> = (0..n_shards).collect();
    if shuffle {
        Rng::keyed(&[seed, TAG_SHARDS, epoch]).shuffle(&mut order);
    }
    Ok(order.into_iter().skip(rank).step_by(world).collect())
}

/// A buffer of `capacity` samples: once full, each new sample replaces a uniformly chosen one,
/// which is emitted; at the end the rest leave in random order. Capacity 0 or 1 keeps the order.
pub struct ShuffleBuffer<T> {
    rng: Rng,
    capacity: usize,
    items: Vec<T>,
}

impl<T> ShuffleBuffer<T> {
    pub fn new(rng: Rng, capacity: usize) -> Self {
        ShuffleBuffer { rng, capacity, items: Vec::with_capacity(capacity) }
    }

    /// Adds a sample; returns the one that leaves, if the buffer was full.
    pub fn push(&mut self, item: T) -> Option<T> {
        if self.capacity <= 1 {
            return Some(item);
        }
        if self.items.len() < self.capacity {
            self.items.push(item);
            return None;
        }
        let j = self.rng.below(self.capacity as u64) as usize;
        Some(std::mem::replace(&mut self.items[j], item))
    }

    /// The next of the remaining samples at the end of the input.
    pub fn drain_one(&mut self) -> Option<T> {
        if self.items.is_empty() {
            return None;
        }
        let j = self.rng.below(self.items.len() as u64) as usize;
        Some(self.items.swap_remove(j))
    }
}

/// FNV-1a: a stable 64-bit hash of a sample key, to key its random view.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_get_disjoint_shards_covering_all_and_epochs_reorder() {
        let mut all: Vec<usize> = (0..3).flat_map(|r| rank_shards(10, 5, 0, r, 3, true).unwrap()).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(rank_shards(10, 5, 0, 0, 1, true).unwrap(), rank_shards(10, 5, 1, 0, 1, true).unwrap());
        assert_eq!(rank_shards(4, 5, 0, 1, 2, false).unwrap(), [1, 3]);
        assert!(rank_shards(2, 5, 0, 0, 3, true).is_err());
    }

    #[test]
    fn shuffle_buffer_emits_every_item_once_and_mixes() {
        let mut buf = ShuffleBuffer::new(Rng::keyed(&[1]), 16);
        let mut out: Vec<u32> = (0..100).filter_map(|i| buf.push(i)).collect();
        while let Some(x) = buf.drain_one() {
            out.push(x);
        }
        assert_ne!(out, (0..100).collect::<Vec<_>>());
        out.sort();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }
}
