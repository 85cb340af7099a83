//! `sftok-prep shard`: one split of an ImageNet tree → webdataset shards + manifest.
//!
//! Shard i's content depends only on the plan (sorted files → keys → seeded shuffle → chunks),
//! so the bytes are the same for any worker count, any `--part` split and any resume point.
//! Order of writes for crash safety: shard `.tmp` → fsync → rename → directory fsync →
//! per-shard record → (all shards done) → manifest. A rerun trusts a shard only if its record
//! matches the plan fingerprint and the file still has the recorded sha256.

use crate::convert::{self, Rgb};
use crate::fsutil::{self, sha256_file};
use crate::imagenet::{ClassMap, Skipped, SourceFile, SplitPlan, plan_split};
use crate::manifest::{self, Manifest, OptionsUsed, ShardEntry, ShardRecord};
use crate::ordered::ordered_map;
use crate::part::Part;
use crate::sniff::{self, Kind};
use crate::wds::ShardWriter;
use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyLevel {
    /// Marker walk + end-of-image check; no pixel decode of files stored as is.
    Header,
    /// Decode every image.
    Full,
}

impl VerifyLevel {
    pub fn name(self) -> &'static str {
        match self {
            VerifyLevel::Header => "header",
            VerifyLevel::Full => "full",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ShardOptions {
    pub root: PathBuf,
    pub out: PathBuf,
    pub shard_size: usize,
    pub seed: u64,
    pub workers: usize,
    pub verify: VerifyLevel,
    pub resize_shorter: Option<u32>,
    /// JPEG quality of every re-encode (conversions and resizes).
    pub quality: u8,
    pub part: Option<Part>,
    pub skip_unlabelled: bool,
}

/// A split planned and checked against what is already on disk; `run` writes the rest.
pub struct Job<'a> {
    opts: &'a ShardOptions,
    classes: &'a ClassMap,
    plan: SplitPlan,
    fingerprint: String,
    split_dir: PathBuf,
    /// Shards of this part, by index: the finished record or `None` (to write).
    mine: Vec<(usize, Option<ShardRecord>)>,
}

pub struct Outcome {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    /// Images read and written (or skipped) by this run, and their input bytes.
    pub processed: usize,
    pub processed_bytes: u64,
}

pub fn shard_name(split: &str, index: usize) -> String {
    format!("{split}-{index:06}.tar")
}

impl<'a> Job<'a> {
    /// Walks the split, removes anything that could pass for a complete result (manifest, stale
    /// shards, temp files), and keeps the finished shards whose checksum still matches.
    pub fn prepare(opts: &'a ShardOptions, classes: &'a ClassMap, split: &str) -> Result<Job<'a>> {
        if opts.shard_size == 0 {
            bail!("--shard-size must be at least 1");
        }
        let plan = plan_split(&opts.root, split, classes, opts.seed, opts.skip_unlabelled)?;
        let fingerprint = fingerprint(&options_used(opts), classes, &plan);
        let split_dir = opts.out.join(split);
        let records = split_dir.join(manifest::RECORDS_DIR);
        fs::create_dir_all(&records).with_context(|| format!("creating {}", records.display()))?;
        let final_manifest = split_dir.join(manifest::MANIFEST);
        remove_if_exists(&final_manifest)?;
        if let Some(part) = &opts.part {
            remove_if_exists(&split_dir.join(manifest::part_manifest_name(part)))?;
        }
        let n_shards = plan.files.len().div_ceil(opts.shard_size);
        remove_stale(&split_dir, split, n_shards)?;

        let indices: Vec<usize> =
            (0..n_shards).filter(|&i| opts.part.is_none_or(|p| p.contains(i))).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.workers.max(1)).build()?;
        let mine = pool.install(|| {
            indices
                .par_iter()
                .map(|&i| Ok((i, finished_record(&split_dir, &shard_name(split, i), &fingerprint)?)))
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(Job { opts, classes, plan, fingerprint, split_dir, mine })
    }

    pub fn split(&self) -> &str {
        &self.plan.split
    }

    pub fn planned_shards(&self) -> usize {
        self.plan.files.len().div_ceil(self.opts.shard_size)
    }

    /// (shards of this part, already finished, images left to process).
    pub fn counts(&self) -> (usize, usize, usize) {
        let done = self.mine.iter().filter(|m| m.1.is_some()).count();
        let todo = self.mine.iter().filter(|m| m.1.is_none()).map(|m| self.shard_files(m.0).len()).sum();
        (self.mine.len(), done, todo)
    }

    pub fn warnings(&self) -> &[String] {
        &self.plan.warnings
    }

    fn shard_files(&self, index: usize) -> &[SourceFile] {
        let size = self.opts.shard_size;
        &self.plan.files[index * size..((index + 1) * size).min(self.plan.files.len())]
    }

    /// Writes the missing shards (`on_image` after each input image), then the manifest.
    pub fn run(mut self, on_image: &(dyn Fn() + Sync)) -> Result<Outcome> {
        let opts = self.opts;
        let items: Vec<(usize, &SourceFile)> = self
            .mine
            .iter()
            .filter(|m| m.1.is_none())
            .flat_map(|m| self.shard_files(m.0).iter().map(move |f| (m.0, f)))
            .collect();
        let processed_bytes = items.iter().map(|(_, f)| f.size).sum();
        let split = self.plan.split.clone();
        let (split_dir, fingerprint, classes) = (&self.split_dir, &self.fingerprint, self.classes);
        let workers = opts.workers.max(1);
        let written = std::thread::scope(|scope| -> Result<Vec<ShardRecord>> {
            // Finishing a shard (fsync, rename, record) overlaps with writing the next one.
            let (to_finish, finishing) = crossbeam_channel::bounded::<OpenShard>(2);
            let finisher =
                scope.spawn(move || finishing.iter().map(|o| o.finish(split_dir, fingerprint)).collect::<Result<Vec<_>>>());
            let mut open: Option<OpenShard> = None;
            let hand_over = |done: OpenShard| to_finish.send(done).map_err(|_| anyhow!("the shard finisher stopped"));
            let produced = ordered_map(
                &items,
                workers,
                IN_FLIGHT_PER_WORKER * (workers + 1),
                |(_, f)| prepare_sample(f, opts, classes),
                |i, prepared| {
                    let shard = items[i].0;
                    if open.as_ref().is_none_or(|o| o.index != shard) {
                        if let Some(done) = open.take() {
                            hand_over(done)?;
                        }
                        open = Some(OpenShard::create(split_dir, &split, shard)?);
                    }
                    let o = open.as_mut().expect("shard open");
                    match prepared? {
                        Prepared::Sample { key, jpg, cls, json, converted } => {
                            o.writer.add(&key, &[("jpg", &jpg), ("cls", cls.as_bytes()), ("json", &json)])?;
                            o.converted += converted as usize;
                        }
                        Prepared::Skip(s) => o.skipped.push(s),
                    }
                    on_image();
                    Ok(())
                },
            )
            .and_then(|()| open.take().map_or(Ok(()), hand_over));
            drop(to_finish);
            let finished = finisher.join().expect("shard finisher panicked");
            // A finisher error is the cause of a "finisher stopped" above, so it is reported first.
            let records = finished?;
            produced?;
            Ok(records)
        })?;
        let processed = items.len();
        drop(items);
        for rec in written {
            let slot = self.mine.iter_mut().find(|m| m.0 == rec.entry.index).expect("written shard is mine");
            slot.1 = Some(rec);
        }
        let (manifest, manifest_path) = self.write_manifest()?;
        Ok(Outcome { manifest, manifest_path, processed, processed_bytes })
    }

    fn write_manifest(self) -> Result<(Manifest, PathBuf)> {
        let mut shards = Vec::new();
        let mut skipped = self.plan.skipped.clone();
        for (_, rec) in self.mine {
            let rec = rec.expect("every shard of this part is finished");
            skipped.extend(rec.skipped);
            shards.push(rec.entry);
        }
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        let mut m = Manifest {
            format: manifest::FORMAT.into(),
            split: self.plan.split.clone(),
            options: options_used(self.opts),
            fingerprint: self.fingerprint,
            part: self.opts.part,
            planned_shards: self.plan.files.len().div_ceil(self.opts.shard_size),
            planned_samples: self.plan.files.len(),
            class_source: self.classes.source.clone(),
            classes: self.classes.classes.clone(),
            shards,
            totals: Default::default(),
            skipped,
            ignored: self.plan.ignored,
            warnings: self.plan.warnings,
        };
        m.fill_totals();
        let name = match &self.opts.part {
            Some(p) => manifest::part_manifest_name(p),
            None => manifest::MANIFEST.into(),
        };
        let path = self.split_dir.join(name);
        m.write(&path)?;
        Ok((m, path))
    }
}

/// Images read ahead per worker: enough to keep workers busy across uneven image costs, while
/// memory holds only a few dozen files whatever the dataset size.
const IN_FLIGHT_PER_WORKER: usize = 4;

struct OpenShard {
    index: usize,
    name: String,
    writer: ShardWriter,
    converted: usize,
    skipped: Vec<Skipped>,
}

impl OpenShard {
    fn create(split_dir: &Path, split: &str, index: usize) -> Result<OpenShard> {
        let name = shard_name(split, index);
        // The old record goes first, so a crash mid-rewrite can never pair it with new bytes.
        remove_if_exists(&manifest::record_path(split_dir, &name))?;
        let writer = ShardWriter::create(&split_dir.join(&name))?;
        Ok(OpenShard { index, name, writer, converted: 0, skipped: Vec::new() })
    }

    fn finish(self, split_dir: &Path, fingerprint: &str) -> Result<ShardRecord> {
        let s = self.writer.finish()?;
        let rec = ShardRecord {
            fingerprint: fingerprint.into(),
            entry: ShardEntry {
                name: self.name.clone(),
                index: self.index,
                count: s.count,
                bytes: s.bytes,
                sha256: s.sha256,
                first_key: s.first_key,
                last_key: s.last_key,
                converted: self.converted,
            },
            skipped: self.skipped,
        };
        // No fsync for records: a resumed run trusts a record only if the shard's sha256 matches it.
        fsutil::write_replace(&manifest::record_path(split_dir, &self.name), &serde_json::to_vec_pretty(&rec)?)?;
        Ok(rec)
    }
}

/// A finished shard's record, if the record matches this plan and the shard its checksum.
fn finished_record(split_dir: &Path, name: &str, fingerprint: &str) -> Result<Option<ShardRecord>> {
    let path = manifest::record_path(split_dir, name);
    let Ok(text) = fs::read(&path) else { return Ok(None) };
    let Ok(rec) = serde_json::from_slice::<ShardRecord>(&text) else { return Ok(None) };
    let shard = split_dir.join(name);
    if rec.fingerprint != fingerprint || rec.entry.name != name || !shard.exists() {
        return Ok(None);
    }
    let (sha, bytes) = sha256_file(&shard)?;
    Ok((sha == rec.entry.sha256 && bytes == rec.entry.bytes).then_some(rec))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Temp files of any shard, and shards (with records) numbered beyond this plan's last one.
fn remove_stale(split_dir: &Path, split: &str, n_shards: usize) -> Result<()> {
    let prefix = format!("{split}-");
    for e in fs::read_dir(split_dir).with_context(|| format!("listing {}", split_dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        if rest.ends_with(".tar.tmp") {
            remove_if_exists(&split_dir.join(&name))?;
        } else if let Some(index) = rest.strip_suffix(".tar").and_then(|n| n.parse::<usize>().ok())
            && index >= n_shards
        {
            remove_if_exists(&manifest::record_path(split_dir, &name))?;
            remove_if_exists(&split_dir.join(&name))?;
        }
    }
    Ok(())
}

fn options_used(opts: &ShardOptions) -> OptionsUsed {
    OptionsUsed {
        seed: opts.seed,
        shard_size: opts.shard_size,
        verify: opts.verify.name().into(),
        resize_shorter: opts.resize_shorter,
        quality: opts.quality,
        skip_unlabelled: opts.skip_unlabelled,
    }
}

fn fingerprint(options: &OptionsUsed, classes: &ClassMap, plan: &SplitPlan) -> String {
    let mut h = Sha256::new();
    h.update(manifest::FORMAT);
    h.update(serde_json::to_vec(options).expect("options serialise"));
    h.update(serde_json::to_vec(&classes.classes).expect("classes serialise"));
    for f in &plan.files {
        h.update(f.rel.as_bytes());
        h.update(format!("\0{}\0{}\0{}\n", f.size, f.class, f.key));
    }
    fsutil::hex(&h.finalize())
}

enum Prepared {
    Sample { key: String, jpg: Vec<u8>, cls: String, json: Vec<u8>, converted: bool },
    Skip(Skipped),
}

/// Reads, checks and (when needed) converts one image. Unusable content is a skip; failing to
/// read the file at all (permissions, I/O) is an error that stops the run.
fn prepare_sample(f: &SourceFile, opts: &ShardOptions, classes: &ClassMap) -> Result<Prepared> {
    let bytes = fs::read(&f.path).with_context(|| format!("reading {} (fix access, then rerun to resume)", f.path.display()))?;
    let skip = |reason: String| Ok(Prepared::Skip(Skipped { path: f.rel.clone(), reason }));
    let kind = match sniff::sniff(&bytes) {
        Ok(k) => k,
        Err(reason) => return skip(reason),
    };
    // Decode when the bytes cannot be stored as they are, when resizing, or when asked to.
    let (decoded, from) = match &kind {
        Kind::Jpeg(info) => {
            let from = match (info.components, info.adobe_transform) {
                (4, Some(2)) => Some("YCCK JPEG"),
                (4, _) => Some("CMYK JPEG"),
                _ => None,
            };
            if from.is_none() && opts.resize_shorter.is_none() {
                if opts.verify == VerifyLevel::Full
                    && let Err(reason) = convert::check_decodes(&bytes, info)
                {
                    return skip(reason);
                }
                (None, None)
            } else {
                match convert::decode_jpeg(&bytes, info) {
                    Ok(rgb) => (Some(rgb), from.map(String::from)),
                    Err(reason) => return skip(reason),
                }
            }
        }
        Kind::Png => match convert::decode_other(&bytes, image::ImageFormat::Png) {
            Ok(rgb) => (Some(rgb), Some("PNG".to_string())),
            Err(reason) => return skip(reason),
        },
        Kind::Other(format) => match convert::decode_other(&bytes, *format) {
            Ok(rgb) => (Some(rgb), Some(format!("{format:?}").to_uppercase())),
            Err(reason) => return skip(reason),
        },
    };
    let resized: Option<Rgb> = match (&decoded, opts.resize_shorter) {
        (Some(rgb), Some(px)) => match convert::resize_shorter(rgb, px) {
            Ok(r) => r,
            Err(reason) => return skip(reason),
        },
        _ => None,
    };
    let (jpg, width, height, conversion) = match (decoded, resized, from) {
        // A plain JPEG needing no change is stored byte for byte.
        (decoded, None, None) => {
            let Kind::Jpeg(info) = &kind else { unreachable!("only JPEGs have no conversion source") };
            drop(decoded);
            (bytes, info.width, info.height, serde_json::Value::Null)
        }
        (Some(original), resized, from) => {
            let out = resized.as_ref().unwrap_or(&original);
            let jpg = match convert::encode_jpeg(out, opts.quality) {
                Ok(j) => j,
                Err(reason) => return skip(reason),
            };
            let conversion = serde_json::json!({
                "from": from.unwrap_or_else(|| "JPEG".into()),
                "to": "RGB JPEG",
                "quality": opts.quality,
                "resized_from": resized.as_ref().map(|_| [original.width, original.height]),
            });
            (jpg, out.width, out.height, conversion)
        }
        (None, Some(_), _) | (None, None, Some(_)) => unreachable!("resizing and conversion start from a decode"),
    };
    let converted = !conversion.is_null();
    let json = serde_json::to_vec(&serde_json::json!({
        "key": f.key,
        "class": f.class,
        "synset": classes.classes[f.class].synset,
        "source": f.rel,
        "width": width,
        "height": height,
        "conversion": conversion,
    }))?;
    Ok(Prepared::Sample { key: f.key.clone(), jpg, cls: f.class.to_string(), json, converted })
}
