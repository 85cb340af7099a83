//! The per-split manifest (`SHARDS/<split>/manifest.json`) and the per-shard records it is built
//! from; merging the partial manifests of `--part K/N` runs; verifying shards against a manifest.

use crate::fsutil::{self, sha256_file};
use crate::imagenet::{Class, Skipped};
use crate::part::Part;
use crate::sniff;
use crate::wds::read_samples;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "sftok-shards/1";
pub const MANIFEST: &str = "manifest.json";
/// Per-shard records live here, one `<shard>.json` each, written after the shard's rename.
pub const RECORDS_DIR: &str = ".records";

/// The options that decide the shards' bytes (worker count deliberately absent: it must not matter).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OptionsUsed {
    pub seed: u64,
    pub shard_size: usize,
    pub verify: String,
    pub resize_shorter: Option<u32>,
    pub quality: u8,
    pub skip_unlabelled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    pub name: String,
    pub index: usize,
    pub count: usize,
    pub bytes: u64,
    pub sha256: String,
    pub first_key: Option<String>,
    pub last_key: Option<String>,
    /// Samples stored after conversion to an RGB JPEG (PNG, CMYK, …) or a resize.
    pub converted: usize,
}

/// What `<split>/.records/<shard>.json` holds: the entry, the skipped files of that shard, and the
/// plan fingerprint, so a resumed run only trusts shards made from the same plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardRecord {
    pub fingerprint: String,
    #[serde(flatten)]
    pub entry: ShardEntry,
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub shards: usize,
    pub samples: usize,
    pub bytes: u64,
    pub converted: usize,
    pub skipped: usize,
    pub ignored_non_images: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub split: String,
    pub options: OptionsUsed,
    /// sha256 of the options and the planned (file, size, class, key) list in shard order.
    pub fingerprint: String,
    pub part: Option<Part>,
    pub planned_shards: usize,
    pub planned_samples: usize,
    pub class_source: String,
    pub classes: Vec<Class>,
    pub shards: Vec<ShardEntry>,
    pub totals: Totals,
    /// Every input image not in the shards, with the reason.
    pub skipped: Vec<Skipped>,
    /// Files without an image extension (README.txt, …), relative to the root.
    pub ignored: Vec<String>,
    pub warnings: Vec<String>,
}

impl Manifest {
    /// Recomputes `totals` from the shard entries and lists.
    pub fn fill_totals(&mut self) {
        self.totals = Totals {
            shards: self.shards.len(),
            samples: self.shards.iter().map(|s| s.count).sum(),
            bytes: self.shards.iter().map(|s| s.bytes).sum(),
            converted: self.shards.iter().map(|s| s.converted).sum(),
            skipped: self.skipped.len(),
            ignored_non_images: self.ignored.len(),
        };
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        fsutil::write_atomic(path, &text)
    }

    pub fn read(path: &Path) -> Result<Manifest> {
        let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

pub fn part_manifest_name(part: &Part) -> String {
    format!("manifest.part-{}-of-{}.json", part.index(), part.of())
}

pub fn record_path(split_dir: &Path, shard_name: &str) -> PathBuf {
    split_dir.join(RECORDS_DIR).join(format!("{shard_name}.json"))
}

/// Combines `manifest.part-K-of-N.json` files into `manifest.json`; refuses when a part is
/// missing, when parts come from different plans, or when a shard file is absent or resized.
pub fn merge(split_dir: &Path) -> Result<Manifest> {
    let mut parts: BTreeMap<usize, Manifest> = BTreeMap::new();
    let mut of = None;
    for e in fs::read_dir(split_dir).with_context(|| format!("listing {}", split_dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("manifest.part-") && name.ends_with(".json")) {
            continue;
        }
        let m = Manifest::read(&split_dir.join(&name))?;
        let part = m.part.with_context(|| format!("{name} has no `part` field"))?;
        if *of.get_or_insert(part.of()) != part.of() {
            bail!("{} holds partial manifests of different --part N splits ({name}); remove the stale ones", split_dir.display());
        }
        parts.insert(part.index(), m);
    }
    let Some(of) = of else {
        bail!("no manifest.part-K-of-N.json in {}: run `sftok-prep shard … --part K/N` first", split_dir.display());
    };
    let missing: Vec<String> = (1..=of).filter(|k| !parts.contains_key(k)).map(|k| format!("{k}/{of}")).collect();
    if !missing.is_empty() {
        bail!("cannot merge {}: part(s) {} missing; run them and merge again", split_dir.display(), missing.join(", "));
    }
    let first = parts.values().next().expect("at least one part").clone();
    let mut merged = Manifest { part: None, shards: Vec::new(), skipped: first.skipped.clone(), ..first };
    for (k, m) in &parts {
        if m.fingerprint != merged.fingerprint || m.options != merged.options {
            bail!("part {k}/{of} was made from a different input or different options than part 1/{of}; rerun it");
        }
        merged.shards.extend(m.shards.iter().cloned());
        // Walk-time skips appear in every part; shard skips only in their part.
        for s in &m.skipped {
            if !merged.skipped.contains(s) {
                merged.skipped.push(s.clone());
            }
        }
    }
    merged.shards.sort_by_key(|s| s.index);
    let indices: Vec<usize> = merged.shards.iter().map(|s| s.index).collect();
    if indices != (0..merged.planned_shards).collect::<Vec<_>>() {
        bail!("the parts do not cover shards 0..{} exactly once; rerun the parts", merged.planned_shards);
    }
    for s in &merged.shards {
        let path = split_dir.join(&s.name);
        let len = fs::metadata(&path).with_context(|| format!("shard {} listed by a part is missing", path.display()))?.len();
        if len != s.bytes {
            bail!("{} has {len} bytes, its part manifest says {}; rerun that part", path.display(), s.bytes);
        }
    }
    merged.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    merged.fill_totals();
    merged.write(&split_dir.join(MANIFEST))?;
    Ok(merged)
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub shards: usize,
    pub samples: usize,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Re-checks every shard of `split_dir` against its manifest: size, sha256, sample count,
/// first/last key, and that each sample has a JPEG with a sound header, a class and metadata.
pub fn verify(split_dir: &Path, workers: usize) -> Result<(Manifest, VerifyReport)> {
    let manifest = Manifest::read(&split_dir.join(MANIFEST))?;
    let n_classes = manifest.classes.len();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(workers.max(1)).build()?;
    let per_shard: Vec<Result<Vec<String>>> =
        pool.install(|| manifest.shards.par_iter().map(|s| verify_shard(split_dir, s, n_classes)).collect());
    let mut report = VerifyReport::default();
    for (s, r) in manifest.shards.iter().zip(per_shard) {
        report.shards += 1;
        report.samples += s.count;
        report.bytes += s.bytes;
        report.problems.extend(r?);
    }
    Ok((manifest, report))
}

fn verify_shard(split_dir: &Path, s: &ShardEntry, n_classes: usize) -> Result<Vec<String>> {
    let path = split_dir.join(&s.name);
    let mut problems = Vec::new();
    if !path.exists() {
        return Ok(vec![format!("{}: missing", s.name)]);
    }
    let (sha, bytes) = sha256_file(&path)?;
    if bytes != s.bytes || sha != s.sha256 {
        return Ok(vec![format!("{}: {bytes} bytes sha256 {sha}, manifest says {} bytes sha256 {}", s.name, s.bytes, s.sha256)]);
    }
    let mut keys = (0usize, None::<String>, None::<String>);
    read_samples(&path, |sample| {
        keys.0 += 1;
        keys.1.get_or_insert_with(|| sample.key.clone());
        let cls = sample.get("cls").and_then(|c| std::str::from_utf8(c).ok()?.trim().parse::<usize>().ok());
        if cls.is_none_or(|c| c >= n_classes) {
            problems.push(format!("{}: sample {} has no valid .cls", s.name, sample.key));
        }
        match sample.get("jpg").map(sniff::jpeg_header) {
            Some(Ok(_)) => {}
            Some(Err(e)) => problems.push(format!("{}: sample {}: {e}", s.name, sample.key)),
            None => problems.push(format!("{}: sample {} has no .jpg", s.name, sample.key)),
        }
        if sample.get("json").is_none_or(|j| serde_json::from_slice::<serde_json::Value>(j).is_err()) {
            problems.push(format!("{}: sample {} has no valid .json", s.name, sample.key));
        }
        keys.2 = Some(sample.key);
        Ok(())
    })?;
    if (keys.0, &keys.1, &keys.2) != (s.count, &s.first_key, &s.last_key) {
        problems.push(format!(
            "{}: holds {} samples ({:?}…{:?}), manifest says {} ({:?}…{:?})",
            s.name, keys.0, keys.1, keys.2, s.count, s.first_key, s.last_key
        ));
    }
    Ok(problems)
}
