//! Streaming webdataset reader: consecutive tar members sharing a key (`dir/KEY.ext`, key up to
//! the first dot of the base name, as webdataset splits it) form one sample. One member is in
//! memory at a time, never the whole shard.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// The members of one sample that the loader uses.
#[derive(Clone, Debug, Default)]
pub struct TarSample {
    pub key: String,
    /// The first of `jpg`, `jpeg`, `png`, `webp` (webdataset's image extensions).
    pub image: Option<Vec<u8>>,
    /// `cls`: the class index as ASCII.
    pub cls: Option<Vec<u8>>,
}

const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Calls `f` for every sample of the shard, in file order.
pub fn for_each_sample(path: &Path, mut f: impl FnMut(TarSample) -> Result<()>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening shard {}", path.display()))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let bad = || format!("shard {} is truncated or not a tar file: re-create it (sftok-prep shard) or remove it", path.display());
    let mut current: Option<TarSample> = None;
    for entry in archive.entries().with_context(bad)? {
        let mut entry = entry.with_context(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", &name));
        let Some((stem, ext)) = base.split_once('.') else {
            bail!("shard {}: member `{name}` has no extension, so it belongs to no sample", path.display());
        };
        let key = if dir.is_empty() { stem.to_string() } else { format!("{dir}/{stem}") };
        if current.as_ref().is_some_and(|s| s.key != key) {
            f(current.take().unwrap_or_default())?;
        }
        let sample = current.get_or_insert_with(|| TarSample { key, ..Default::default() });
        let ext = ext.to_ascii_lowercase();
        let slot = if IMAGE_EXTS.contains(&ext.as_str()) && sample.image.is_none() {
            &mut sample.image
        } else if ext == "cls" {
            &mut sample.cls
        } else {
            continue; // other members (json, txt, …) are not needed for training
        };
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data).with_context(|| format!("reading `{name}` in shard {}: truncated?", path.display()))?;
        *slot = Some(data);
    }
    if let Some(s) = current {
        f(s)?;
    }
    Ok(())
}
