//! Resumable sample generation: one file per chunk of generated images, then one streamed pass
//! into the ADM sample batch `.npz` (evaluation spec §2.1, generator spec §9).
//!
//! Layout next to the output `<out>` (e.g. `samples.npz`): the directory `<out>.parts/` holds
//! `plan.json` (the [`SamplePlan`], the image size and the caller's fingerprint — generator and
//! tokenizer sha256, sampling settings) and `chunk-NNNNNN.u8`, the raw `uint8` pixels of one chunk,
//! `[n, S, S, 3]` in C order. Every file is written under a temporary name and renamed
//! (`fsutil::write_atomic`), so a killed run never leaves a complete-looking chunk and a rerun
//! regenerates exactly the [`ChunkStore::missing`] ones. Several processes may fill one store
//! (each writes its own chunks, [`SamplePlan::chunks_of_process`]); rank 0 waits for the rest with
//! [`ChunkStore::wait_for_all`] and [`ChunkStore::merge`]s.
//!
//! The `.npz` is what `numpy.savez(out, arr_0=samples)` writes: a zip (STORED, ZIP64 when over
//! 4 GiB) with the single member `arr_0.npy`, dtype `|u1`, shape `(num, S, S, 3)`, C order. It is
//! written to `<out>.tmp` and renamed when complete; its bytes depend only on the chunks' pixels
//! (fixed zip timestamps), not on which process wrote what or when.
//!
//! Memory: the merge holds one row (`S·S·3` bytes, 192 KiB at 256²) plus the zip writer's 1 MiB
//! buffer, with at most `virtual_ranks` chunk files open — never the whole array (9.8 GB for 50k
//! samples at 256²). Generation holds one chunk (`n·S·S·3`, 24 MiB for n = 125) per process.

use crate::fsutil::{tmp_path, write_atomic, write_atomic_with};
use crate::npy::npy_header;
use crate::sample_plan::SamplePlan;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `.npz` member `numpy.savez(path, samples)` / `arr_0=` writes.
pub const SAMPLE_MEMBER: &str = "arr_0.npy";

/// `<out>.parts`: the chunk directory of the output `out`.
pub fn parts_dir(out_npz: &Path) -> PathBuf {
    let mut name = out_npz.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    out_npz.with_file_name(name)
}

/// The per-chunk partial files of one sample batch (see the module docs).
#[derive(Debug)]
pub struct ChunkStore {
    out: PathBuf,
    parts: PathBuf,
    plan: SamplePlan,
    image_size: u32,
}

impl ChunkStore {
    /// Opens (or creates) `<out_npz>.parts/`. An existing `plan.json` must describe the same plan,
    /// image size and fingerprint, else the chunks there belong to another run and this is an error.
    pub fn open(out_npz: &Path, plan: &SamplePlan, image_size: u32, fingerprint: Value) -> Result<ChunkStore> {
        ensure!(image_size > 0, "the image size must be positive");
        let parts = parts_dir(out_npz);
        let plan_file = parts.join("plan.json");
        let want = json!({
            "num": plan.num,
            "num_classes": plan.num_classes,
            "per_proc_batch": plan.per_proc_batch,
            "virtual_ranks": plan.virtual_ranks,
            "image_size": image_size,
            "fingerprint": fingerprint,
        });
        let read_existing = || -> Result<Option<Value>> {
            match fs::read(&plan_file) {
                Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not valid JSON; delete {} to start over", plan_file.display(), parts.display())
                })?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", plan_file.display())),
            }
        };
        let existing = match read_existing()? {
            Some(v) => v,
            None => {
                let bytes = serde_json::to_vec_pretty(&want)?;
                match write_atomic(&plan_file, &bytes) {
                    Ok(()) => want.clone(),
                    // Another process of the same run may have created it at the same moment.
                    Err(e) => read_existing()?.ok_or(e)?,
                }
            }
        };
        if existing != want {
            bail!(
                "{} belongs to another sampling run:\n  stored:   {}\n  this run: {}\nuse another --out, or delete {} to start over",
                plan_file.display(),
                existing,
                want,
                parts.display()
            );
        }
        Ok(ChunkStore { out: out_npz.to_path_buf(), parts, plan: *plan, image_size })
    }

    pub fn plan(&self) -> &SamplePlan {
        &self.plan
    }

    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// `<out>.parts/`.
    pub fn parts_dir(&self) -> &Path {
        &self.parts
    }

    /// The `.npz` [`Self::merge`] writes.
    pub fn out_path(&self) -> &Path {
        &self.out
    }

    /// Bytes of one image, `S·S·3`.
    pub fn row_bytes(&self) -> usize {
        let s = self.image_size as usize;
        s * s * 3
    }

    /// Bytes of one chunk file, `n·S·S·3`.
    pub fn chunk_bytes(&self) -> usize {
        self.plan.per_proc_batch * self.row_bytes()
    }

    /// The file of chunk `c` (present once complete; written as `<name>.tmp` first).
    pub fn chunk_path(&self, chunk: usize) -> PathBuf {
        self.parts.join(format!("chunk-{chunk:06}.u8"))
    }

    fn check_chunk(&self, chunk: usize) -> Result<()> {
        ensure!(
            chunk < self.plan.num_chunks(),
            "chunk {chunk} out of range (the plan has {} chunks)",
            self.plan.num_chunks()
        );
        Ok(())
    }

    /// Whether chunk `c` is complete (its file exists with the full length; temporaries don't count).
    pub fn has(&self, chunk: usize) -> bool {
        fs::metadata(self.chunk_path(chunk)).is_ok_and(|m| m.is_file() && m.len() == self.chunk_bytes() as u64)
    }

    /// The chunks still to generate, ascending.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.plan.num_chunks()).filter(|&c| !self.has(c)).collect()
    }

    /// Stores chunk `c`: exactly `n·S·S·3` bytes, images in generation order, each `[S, S, 3]` RGB.
    pub fn write_chunk(&self, chunk: usize, pixels: &[u8]) -> Result<()> {
        self.check_chunk(chunk)?;
        ensure!(
            pixels.len() == self.chunk_bytes(),
            "chunk {chunk}: {} bytes given, a chunk of {} images of {}×{}×3 is {} bytes",
            pixels.len(),
            self.plan.per_proc_batch,
            self.image_size,
            self.image_size,
            self.chunk_bytes()
        );
        write_atomic(&self.chunk_path(chunk), pixels)
    }

    /// Reads image `i` of chunk `c` into `buf` (`S·S·3` bytes).
    pub fn read_row(&self, chunk: usize, i: usize, buf: &mut [u8]) -> Result<()> {
        self.check_chunk(chunk)?;
        ensure!(i < self.plan.per_proc_batch, "image {i} out of range (chunks hold {})", self.plan.per_proc_batch);
        ensure!(buf.len() == self.row_bytes(), "row buffer of {} bytes, a row is {}", buf.len(), self.row_bytes());
        let path = self.chunk_path(chunk);
        let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.seek(SeekFrom::Start((i * self.row_bytes()) as u64))?;
        f.read_exact(buf).with_context(|| format!("reading image {i} of {}", path.display()))
    }

    /// Polls every `poll` until all chunks exist (the other processes of a `world`-process run
    /// write theirs); after `timeout`, an error saying how many are missing and whose they are.
    pub fn wait_for_all(&self, world: usize, timeout: Duration, poll: Duration) -> Result<()> {
        ensure!(world > 0, "the process count (world size) must be positive");
        let start = Instant::now();
        loop {
            let missing = self.missing();
            if missing.is_empty() {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                let mut owners: BTreeMap<usize, usize> = BTreeMap::new();
                for &c in &missing {
                    *owners.entry(c % world).or_default() += 1;
                }
                let owners: Vec<String> = owners.iter().map(|(r, k)| format!("process {r}: {k}")).collect();
                bail!(
                    "{} of {} chunks are still missing in {} after waiting {:.0?} (missing per process of {world}: {}); \
                     did those processes fail? Rerun them (finished chunks are kept)",
                    missing.len(),
                    self.plan.num_chunks(),
                    self.parts.display(),
                    waited,
                    owners.join(", ")
                );
            }
            std::thread::sleep(poll.min(timeout - waited));
        }
    }

    /// Streams every row, in npz row order, into `<out>` (written as `<out>.tmp`, renamed when
    /// complete). `progress` is called with the number of rows just written. Needs every chunk.
    pub fn merge(&self, progress: &dyn Fn(u64)) -> Result<()> {
        let missing = self.missing();
        if !missing.is_empty() {
            bail!(
                "cannot write {}: {} of {} chunks are missing in {} (first: {:?}); generate them first",
                self.out.display(),
                missing.len(),
                self.plan.num_chunks(),
                self.parts.display(),
                &missing[..missing.len().min(8)]
            );
        }
        let s = self.image_size as usize;
        let header = npy_header("|u1", &[self.plan.num, s, s, 3]);
        let member_len = header.len() as u64 + (self.plan.num * self.row_bytes()) as u64;
        let n = self.plan.per_proc_batch;
        write_atomic_with(&self.out, |tmp| {
            let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
            let options = zip::write::FileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                // Fixed timestamp (the zip epoch): the same pixels give the same bytes.
                .last_modified_time(zip::DateTime::default())
                .large_file(member_len >= u32::MAX as u64);
            zip.start_file(SAMPLE_MEMBER, options)?;
            zip.write_all(&header)?;
            // Chunk files open for reading; each is read front to back, then closed.
            let mut open: HashMap<usize, File> = HashMap::new();
            let mut row = vec![0u8; self.row_bytes()];
            for (chunk, i) in self.plan.rows_in_order() {
                let path = self.chunk_path(chunk);
                let f = match open.entry(chunk) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        e.insert(File::open(&path).with_context(|| format!("opening {}", path.display()))?)
                    }
                };
                let pos = (i * self.row_bytes()) as u64;
                if f.stream_position()? != pos {
                    f.seek(SeekFrom::Start(pos))?;
                }
                f.read_exact(&mut row).with_context(|| format!("reading image {i} of {}", path.display()))?;
                if i + 1 == n {
                    open.remove(&chunk);
                }
                zip.write_all(&row)?;
                progress(1);
            }
            zip.finish()?.flush()?;
            Ok(())
        })
    }

    /// Deletes `<out>.parts/` (after a successful merge, when the caller wants the space back).
    pub fn remove_parts(self) -> Result<()> {
        fs::remove_dir_all(&self.parts).with_context(|| format!("removing {}", self.parts.display()))
    }

    /// The temporary name the merge writes before renaming to [`Self::out_path`].
    pub fn merge_tmp_path(&self) -> PathBuf {
        tmp_path(&self.out)
    }
}
