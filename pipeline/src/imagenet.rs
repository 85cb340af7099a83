//! Reading an ImageNet tree: the class map, the train and val file lists with their labels, and
//! the conversion plan (byte-sorted list → webdataset keys → seeded global shuffle).
//!
//! Layout: `ROOT/train/<synset>/*.JPEG`; `ROOT/val/*.JPEG` labelled by `ROOT/LOC_val_solution.csv`
//! (or `ROOT/val/<synset>/*.JPEG`); class order from `ROOT/LOC_synset_mapping.txt` when present,
//! else the byte-sorted synset folders.

use crate::rng::Rng;
use crate::wds::sanitize_key;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// torchvision's IMG_EXTENSIONS (matched case-insensitively): other files are ignored and counted.
const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Class {
    pub index: usize,
    pub synset: String,
    /// Human-readable name from LOC_synset_mapping.txt (empty without it).
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct ClassMap {
    pub classes: Vec<Class>,
    /// Where the order came from, for the manifest.
    pub source: String,
    by_synset: HashMap<String, usize>,
}

impl ClassMap {
    pub fn index(&self, synset: &str) -> Option<usize> {
        self.by_synset.get(synset).copied()
    }

    fn new(synsets: Vec<(String, String)>, source: String) -> Result<ClassMap> {
        let mut by_synset = HashMap::new();
        let mut classes = Vec::new();
        for (index, (synset, name)) in synsets.into_iter().enumerate() {
            if by_synset.insert(synset.clone(), index).is_some() {
                bail!("synset {synset} is listed twice in {source}");
            }
            classes.push(Class { index, synset, name });
        }
        Ok(ClassMap { classes, source, by_synset })
    }
}

/// One input image, as planned.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path relative to the root, '/'-separated (lossy UTF-8 for display and KEY.json).
    pub rel: String,
    pub class: usize,
    pub size: u64,
    /// webdataset key: the file stem made safe and unique within the split.
    pub key: String,
}

/// A file the walk could not use (val image without a label under `--skip-unlabelled`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Everything the converter needs for one split, in shard order.
#[derive(Debug)]
pub struct SplitPlan {
    pub split: String,
    /// Globally shuffled; shard i holds files[i*size .. (i+1)*size].
    pub files: Vec<SourceFile>,
    /// Non-image files (by extension), relative paths.
    pub ignored: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

pub fn is_image_name(name: &Path) -> bool {
    name.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Class order: LOC_synset_mapping.txt, else the byte-sorted folders of train/ (or of val/).
pub fn class_map(root: &Path) -> Result<ClassMap> {
    let mapping = root.join("LOC_synset_mapping.txt");
    if mapping.exists() {
        let text = fs::read_to_string(&mapping).with_context(|| format!("reading {}", mapping.display()))?;
        let synsets = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let l = l.trim();
                let (syn, name) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
                (syn.to_string(), name.trim().to_string())
            })
            .collect();
        return ClassMap::new(synsets, "LOC_synset_mapping.txt".into());
    }
    for split in ["train", "val"] {
        let dir = root.join(split);
        if dir.is_dir() {
            let folders = subdirs(&dir)?;
            if !folders.is_empty() {
                let synsets = folders.into_iter().map(|f| (f.to_string_lossy().into_owned(), String::new())).collect();
                return ClassMap::new(synsets, format!("sorted folders of {split}/"));
            }
        }
    }
    bail!(
        "no classes found under {}: expected train/<synset>/ folders or LOC_synset_mapping.txt \
         (is this the ImageNet root, the folder that holds train/ and val/?)",
        root.display()
    )
}

/// Names of the sub-folders (symlinks followed), byte-sorted.
fn subdirs(dir: &Path) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if fs::metadata(e.path()).is_ok_and(|m| m.is_dir()) {
            out.push(e.file_name());
        }
    }
    out.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(out)
}

/// Walk result before labelling: (path, rel, size) of image files, plus ignored names.
#[derive(Default)]
struct Listing {
    images: Vec<(PathBuf, String, u64)>,
    ignored: Vec<String>,
    skipped: Vec<Skipped>,
}

/// Files directly inside `dir` (symlinks followed). Broken symlinks are skipped with a reason;
/// sub-folders and non-image names are ignored.
fn list_files(root: &Path, dir: &Path, out: &mut Listing) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let path = e.path();
        let rel = rel_path(root, &path);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(err) if e.file_type().is_ok_and(|t| t.is_symlink()) => {
                out.skipped.push(Skipped { path: rel, reason: format!("broken symlink: {err}") });
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("reading metadata of {}", path.display())),
        };
        if meta.is_dir() {
            continue;
        }
        if is_image_name(&path) {
            out.images.push((path, rel, meta.len()));
        } else {
            out.ignored.push(rel);
        }
    }
    Ok(())
}

fn rel_path(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

/// Lists, labels, keys and shuffles one split (`train` or `val`).
pub fn plan_split(root: &Path, split: &str, classes: &ClassMap, seed: u64, skip_unlabelled: bool) -> Result<SplitPlan> {
    let dir = root.join(split);
    if !dir.is_dir() {
        bail!("{} does not exist: expected {split}/ inside the ImageNet root {}", dir.display(), root.display());
    }
    let mut listing = Listing::default();
    let mut labelled: Vec<(PathBuf, String, u64, usize)> = Vec::new();
    let mut warnings = Vec::new();

    // Class folders: train/<synset>/ and val/<synset>/.
    let mut per_class = vec![0usize; classes.classes.len()];
    let folders = subdirs(&dir)?;
    for folder in &folders {
        let name = folder.to_string_lossy();
        let Some(class) = classes.index(&name) else {
            bail!(
                "{}/{name} is not a class of {}: add it there or move the folder out of {split}/",
                dir.display(),
                classes.source
            );
        };
        let mut sub = Listing::default();
        list_files(root, &dir.join(folder), &mut sub)?;
        per_class[class] += sub.images.len();
        labelled.extend(sub.images.into_iter().map(|(p, r, s)| (p, r, s, class)));
        listing.ignored.extend(sub.ignored);
        listing.skipped.extend(sub.skipped);
    }
    if !folders.is_empty() {
        for c in &classes.classes {
            if per_class[c.index] == 0 {
                warnings.push(format!("class {} ({}) has no images in {split}/; it keeps its index", c.index, c.synset));
            }
        }
    }

    // Flat files: val/*.JPEG labelled by LOC_val_solution.csv.
    let mut flat = Listing::default();
    list_files(root, &dir, &mut flat)?;
    listing.ignored.extend(flat.ignored);
    listing.skipped.extend(flat.skipped);
    if !flat.images.is_empty() {
        let labels = val_labels(root, classes)?;
        let mut unlabelled = Vec::new();
        for (path, rel, size) in flat.images {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            match labels.get(&stem) {
                Some(&class) => labelled.push((path, rel, size, class)),
                None if skip_unlabelled => listing.skipped.push(Skipped {
                    path: rel,
                    reason: "no label in LOC_val_solution.csv".into(),
                }),
                None => unlabelled.push(rel),
            }
        }
        if !unlabelled.is_empty() {
            unlabelled.sort();
            let shown: Vec<&str> = unlabelled.iter().take(20).map(String::as_str).collect();
            bail!(
                "{} image(s) in {split}/ have no label in LOC_val_solution.csv (rerun with --skip-unlabelled \
                 to leave them out):\n  {}{}",
                unlabelled.len(),
                shown.join("\n  "),
                if unlabelled.len() > 20 { "\n  …" } else { "" }
            );
        }
    }

    // Byte order of the relative paths fixes keys and the pre-shuffle order.
    labelled.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    let stems: Vec<String> =
        labelled.iter().map(|(p, ..)| p.file_stem().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let keys = unique_keys(&stems);
    let mut files: Vec<SourceFile> = labelled
        .into_iter()
        .zip(keys)
        .map(|((path, rel, size, class), key)| SourceFile { path, rel, class, size, key })
        .collect();
    Rng::keyed(&[seed, SHUFFLE_DOMAIN, split_tag(split)]).shuffle(&mut files);
    listing.ignored.sort();
    listing.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(SplitPlan { split: split.into(), files, ignored: listing.ignored, skipped: listing.skipped, warnings })
}

/// Keeps the shard shuffle's random stream apart from every other keyed stream of the project.
const SHUFFLE_DOMAIN: u64 = 0x0053_4841_5244; // "SHARD"

fn split_tag(split: &str) -> u64 {
    split.bytes().fold(0u64, |h, b| h.wrapping_mul(257).wrapping_add(b as u64))
}

/// Safe, unique keys for stems given in plan order. A stem that is already safe keeps its own
/// key; for the rest the first to claim a key gets it plain and later ones get `_2`, `_3`, …
/// (never a key some other file owns), so every sample still points back at its file.
fn unique_keys(stems: &[String]) -> Vec<String> {
    let bases: Vec<String> = stems.iter().map(|s| sanitize_key(s)).collect();
    let mut used: HashSet<String> = bases.iter().cloned().collect();
    let mut plain: HashSet<&str> = HashSet::new();
    let mut keys = vec![String::new(); stems.len()];
    let mut pending = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        if *base == stems[i] && plain.insert(base) {
            keys[i] = base.clone();
        } else {
            pending.push(i);
        }
    }
    for i in pending {
        let base = &bases[i];
        if plain.insert(base) {
            keys[i] = base.clone();
            continue;
        }
        let mut n = 2;
        keys[i] = loop {
            let candidate = format!("{base}_{n}");
            if used.insert(candidate.clone()) {
                break candidate;
            }
            n += 1;
        };
    }
    keys
}

/// `LOC_val_solution.csv`: ImageId → class of the first token of PredictionString.
fn val_labels(root: &Path, classes: &ClassMap) -> Result<HashMap<String, usize>> {
    let path = root.join("LOC_val_solution.csv");
    if !path.exists() {
        bail!(
            "{} is missing: flat val/ images are labelled by it (or arrange val/ in <synset>/ folders)",
            path.display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut labels = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("ImageId")) {
            continue;
        }
        let (id, pred) = line
            .split_once(',')
            .with_context(|| format!("{} line {}: expected `ImageId,PredictionString`", path.display(), i + 1))?;
        let synset = pred.split_whitespace().next().unwrap_or("");
        let class = classes.index(synset).with_context(|| {
            format!("{} line {}: synset `{synset}` is not a class of {}", path.display(), i + 1, classes.source)
        })?;
        labels.insert(id.trim().to_string(), class);
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_stems_get_stable_distinct_keys() {
        let stems: Vec<String> = ["a.b", "a_b", "a b", "a_b_2", "c", "c"].map(String::from).to_vec();
        assert_eq!(unique_keys(&stems), ["a_b_3", "a_b", "a_b_4", "a_b_2", "c", "c_2"]);
    }

    #[test]
    fn image_names_are_matched_case_insensitively() {
        assert!(is_image_name(Path::new("x/n01_1.JPEG")));
        assert!(is_image_name(Path::new("a.b.png")));
        assert!(!is_image_name(Path::new("README.txt")));
        assert!(!is_image_name(Path::new("JPEG")));
    }
}
