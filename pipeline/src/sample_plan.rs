//! Which class-conditional sample goes where in the ADM sample batch (generator spec §9).
//!
//! The reference (TiTok's `sample_imagenet_titok.py` under `torchrun --nproc_per_node=W`): the
//! label list `[0, 1, …, C-1]` repeated `num / C` times; virtual rank `v` takes the contiguous
//! slice `[v·L, (v+1)·L)`, `L = num / W`, and consumes it in chunks of `n = per_proc_batch`;
//! image `i` of chunk `t` of rank `v` becomes npz row `i·W + v + t·n·W`.
//!
//! `W` is [`SamplePlan::virtual_ranks`], fixed by the caller (8, the reference's layout) and
//! independent of how many real processes run: chunk `c = v·(L/n) + t` is produced by process
//! `c % world` ([`SamplePlan::chunks_of_process`]), so the npz is the same bytes whatever the
//! process count.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// The sample layout: `num` images, `num_classes` classes, chunks of `per_proc_batch` images,
/// `virtual_ranks` reference ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplePlan {
    pub num: usize,
    pub num_classes: usize,
    pub per_proc_batch: usize,
    pub virtual_ranks: usize,
}

impl SamplePlan {
    /// Checks the reference's divisibility requirements; each violation names its flag.
    pub fn new(num: usize, num_classes: usize, per_proc_batch: usize, virtual_ranks: usize) -> Result<Self> {
        if num == 0 {
            bail!("--num must be positive (got 0); the paper's gFID uses --num 50000");
        }
        if num_classes == 0 {
            bail!("the generator has 0 classes: nothing to sample (is this a class-conditional checkpoint?)");
        }
        if per_proc_batch == 0 {
            bail!("--per-proc-batch must be positive (got 0); the reference uses 125");
        }
        if virtual_ranks == 0 {
            bail!("--virtual-ranks must be positive (got 0); the reference uses 8");
        }
        if !num.is_multiple_of(num_classes) {
            let lo = num / num_classes * num_classes;
            bail!(
                "--num {num} is not a multiple of the {num_classes} classes, so the samples would not be class-balanced; \
                 use --num {} or --num {}",
                lo.max(num_classes),
                lo + num_classes
            );
        }
        let block = per_proc_batch * virtual_ranks;
        if !num.is_multiple_of(block) {
            // The nearest sample counts that fit both the classes and the chunk layout.
            let unit = lcm(block, num_classes);
            let lo = num / unit * unit;
            bail!(
                "--num {num} is not a multiple of --per-proc-batch {per_proc_batch} × --virtual-ranks {virtual_ranks} = {block}; \
                 use --num {} or --num {}, or a --per-proc-batch / --virtual-ranks whose product divides --num \
                 (the reference: 125 × 8 for 50000)",
                lo.max(unit),
                lo + unit
            );
        }
        // The reference also requires (num / W) % n == 0; with num = k·n·W that holds already.
        debug_assert_eq!((num / virtual_ranks) % per_proc_batch, 0);
        Ok(SamplePlan { num, num_classes, per_proc_batch, virtual_ranks })
    }

    /// Images per virtual rank, `L = num / W`.
    pub fn per_rank(&self) -> usize {
        self.num / self.virtual_ranks
    }

    /// Chunks per virtual rank, `L / n`.
    pub fn chunks_per_rank(&self) -> usize {
        self.per_rank() / self.per_proc_batch
    }

    /// Number of chunks, `num / n`.
    pub fn num_chunks(&self) -> usize {
        self.num / self.per_proc_batch
    }

    /// (virtual rank `v`, iteration `t`) of chunk `c = v·(L/n) + t`.
    fn rank_iter(&self, chunk: usize) -> (usize, usize) {
        assert!(chunk < self.num_chunks(), "chunk {chunk} out of range (the plan has {})", self.num_chunks());
        (chunk / self.chunks_per_rank(), chunk % self.chunks_per_rank())
    }

    /// The `n` class labels of chunk `c`, in the order its images are generated.
    pub fn chunk_labels(&self, chunk: usize) -> Vec<i64> {
        let (v, t) = self.rank_iter(chunk);
        let start = v * self.per_rank() + t * self.per_proc_batch;
        (start..start + self.per_proc_batch).map(|k| (k % self.num_classes) as i64).collect()
    }

    /// The npz row of image `i` of chunk `c`: `i·W + v + t·n·W`.
    pub fn row_of(&self, chunk: usize, i: usize) -> usize {
        assert!(i < self.per_proc_batch, "image {i} out of range (chunks hold {})", self.per_proc_batch);
        let (v, t) = self.rank_iter(chunk);
        let w = self.virtual_ranks;
        i * w + v + t * self.per_proc_batch * w
    }

    /// The (chunk, image) that lands in npz row `row` (inverse of [`Self::row_of`]).
    pub fn chunk_of_row(&self, row: usize) -> (usize, usize) {
        assert!(row < self.num, "row {row} out of range (the plan has {})", self.num);
        let (n, w) = (self.per_proc_batch, self.virtual_ranks);
        let (t, rem) = (row / (n * w), row % (n * w));
        let (i, v) = (rem / w, rem % w);
        (v * self.chunks_per_rank() + t, i)
    }

    /// The class label of npz row `row`.
    pub fn label_of_row(&self, row: usize) -> i64 {
        let (chunk, i) = self.chunk_of_row(row);
        let (v, t) = self.rank_iter(chunk);
        ((v * self.per_rank() + t * self.per_proc_batch + i) % self.num_classes) as i64
    }

    /// (chunk, image) of every npz row, rows `0, 1, …, num-1` in order (the merge order).
    pub fn rows_in_order(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.num).map(|row| self.chunk_of_row(row))
    }

    /// The chunks real process `rank` of `world` produces: those with `c % world == rank`.
    pub fn chunks_of_process(&self, rank: usize, world: usize) -> Result<Vec<usize>> {
        if world == 0 {
            bail!("the process count (world size) must be positive (got 0)");
        }
        if rank >= world {
            bail!("process rank {rank} is out of range for {world} processes (ranks are 0..{})", world - 1);
        }
        Ok((rank..self.num_chunks()).step_by(world).collect())
    }
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generator spec §9, written out for W = 8, n = 125, C = 1000, num = 50,000.
    fn closed_form(s: usize) -> i64 {
        (((s % 8) * 6250 + (s / 1000) * 125 + (s % 1000) / 8) % 1000) as i64
    }

    fn paper() -> SamplePlan {
        SamplePlan::new(50_000, 1000, 125, 8).unwrap()
    }

    #[test]
    fn labels_follow_the_spec_closed_form() {
        let plan = paper();
        assert_eq!(plan.num_chunks(), 400);
        for s in 0..50_000 {
            assert_eq!(plan.label_of_row(s), closed_form(s), "row {s}");
            let (c, i) = plan.chunk_of_row(s);
            assert_eq!(plan.chunk_labels(c)[i], closed_form(s), "row {s} = chunk {c} image {i}");
        }
    }

    #[test]
    fn every_class_50_times_and_every_split_has_all_classes() {
        let plan = paper();
        let mut counts = vec![0usize; 1000];
        for s in 0..50_000 {
            counts[plan.label_of_row(s) as usize] += 1;
        }
        assert!(counts.iter().all(|&k| k == 50), "{counts:?}");
        for split in 0..10 {
            let mut seen = vec![false; 1000];
            for s in split * 5000..(split + 1) * 5000 {
                seen[plan.label_of_row(s) as usize] = true;
            }
            assert!(seen.iter().all(|&b| b), "split {split} misses a class");
        }
    }

    #[test]
    fn rows_are_a_permutation_and_invert_row_of() {
        for plan in [paper(), SamplePlan::new(40, 10, 5, 2).unwrap(), SamplePlan::new(12, 3, 4, 1).unwrap()] {
            let mut hit = vec![false; plan.num];
            for c in 0..plan.num_chunks() {
                for i in 0..plan.per_proc_batch {
                    let s = plan.row_of(c, i);
                    assert!(!hit[s], "row {s} twice");
                    hit[s] = true;
                    assert_eq!(plan.chunk_of_row(s), (c, i));
                }
            }
            assert!(hit.iter().all(|&b| b));
            let order: Vec<_> = plan.rows_in_order().collect();
            assert_eq!(order.len(), plan.num);
            assert!(order.iter().enumerate().all(|(s, &(c, i))| plan.row_of(c, i) == s));
        }
    }

    #[test]
    fn chunk_labels_are_the_reference_rank_slices() {
        // W = 2, L = 20, n = 5: rank 1's second chunk (t = 1) is labels[25..30] of [0..10) × 4.
        let plan = SamplePlan::new(40, 10, 5, 2).unwrap();
        assert_eq!(plan.chunks_per_rank(), 4);
        assert_eq!(plan.chunk_labels(5), vec![5, 6, 7, 8, 9]);
        assert_eq!(plan.row_of(5, 0), 1 + 5 * 2);
        assert_eq!(plan.row_of(5, 4), 4 * 2 + 1 + 5 * 2);
    }

    #[test]
    fn processes_split_the_chunks() {
        let plan = paper();
        let mut all: Vec<usize> = (0..3).flat_map(|r| plan.chunks_of_process(r, 3).unwrap()).collect();
        all.sort();
        assert_eq!(all, (0..400).collect::<Vec<_>>());
        assert_eq!(plan.chunks_of_process(1, 3).unwrap()[..3], [1, 4, 7]);
        assert_eq!(plan.chunks_of_process(0, 1).unwrap().len(), 400);
        assert!(plan.chunks_of_process(0, 0).unwrap_err().to_string().contains("positive"));
        assert!(plan.chunks_of_process(3, 3).unwrap_err().to_string().contains("rank 3"));
    }

    #[test]
    fn bad_plans_name_the_flag() {
        let err = |r: Result<SamplePlan>| r.unwrap_err().to_string();
        let cases = [
            (err(SamplePlan::new(0, 1000, 125, 8)), "--num"),
            (err(SamplePlan::new(50_000, 1000, 0, 8)), "--per-proc-batch"),
            (err(SamplePlan::new(50_000, 1000, 125, 0)), "--virtual-ranks"),
            (err(SamplePlan::new(50_500, 1000, 125, 8)), "--num 50500"),
            (err(SamplePlan::new(50_000, 1000, 150, 8)), "--per-proc-batch 150"),
            (err(SamplePlan::new(50_000, 1000, 125, 3)), "--virtual-ranks 3"),
        ];
        for (msg, flag) in &cases {
            assert!(msg.contains(flag), "{msg:?} does not name {flag}");
        }
        assert!(cases[0].0.contains("50000"));
        assert!(cases[3].0.contains("--num 50000") && cases[3].0.contains("--num 51000"), "{}", cases[3].0);
        // 125 × 3 = 375 and 1000 classes: the suggestions are multiples of 3000.
        assert!(cases[5].0.contains("--num 48000") && cases[5].0.contains("--num 51000"), "{}", cases[5].0);
        assert!(cases[4].0.contains("--virtual-ranks 8"), "{}", cases[4].0);
        assert!(err(SamplePlan::new(10, 0, 5, 2)).contains("0 classes"));
    }
}
