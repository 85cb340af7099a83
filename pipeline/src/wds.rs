//! webdataset tar shards: safe keys, a deterministic streaming writer that only ever shows a
//! complete file under the final name, and a streaming reader for verification.

use crate::fsutil::{hex, rename_durably, tmp_path};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// A file stem as a webdataset key: webdataset splits a member name at its first dot, and
/// shells and URLs dislike spaces, so everything but letters, digits, `-` and `_` becomes `_`.
/// Non-ASCII letters stay (tar names are UTF-8 bytes; Python's tarfile reads them back).
pub fn sanitize_key(stem: &str) -> String {
    let key: String = stem.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if key.is_empty() { "_".into() } else { key }
}

/// Counts and hashes everything written through it, so a shard's sha256 costs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a finished shard holds.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardSummary {
    pub count: usize,
    pub bytes: u64,
    pub sha256: String,
    pub first_key: Option<String>,
    pub last_key: Option<String>,
}

/// Writes `<dest>.tmp`, then fsync + rename (+ directory fsync) to `dest` in `finish`. Headers are fixed (mode 0644,
/// mtime 0, uid/gid 0, no user names) so the bytes depend only on the samples.
pub struct ShardWriter {
    builder: tar::Builder<HashingWriter<BufWriter<File>>>,
    tmp: PathBuf,
    dest: PathBuf,
    count: usize,
    first_key: Option<String>,
    last_key: Option<String>,
}

impl ShardWriter {
    pub fn create(dest: &Path) -> Result<ShardWriter> {
        let tmp = tmp_path(dest);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let inner = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), bytes: 0 };
        let mut builder = tar::Builder::new(inner);
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(ShardWriter { builder, tmp, dest: dest.to_path_buf(), count: 0, first_key: None, last_key: None })
    }

    /// One sample: `KEY.<ext>` members in the given order.
    pub fn add(&mut self, key: &str, members: &[(&str, &[u8])]) -> Result<()> {
        for (ext, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            self.builder
                .append_data(&mut header, format!("{key}.{ext}"), *data)
                .with_context(|| format!("writing {} (disk full?)", self.tmp.display()))?;
        }
        self.first_key.get_or_insert_with(|| key.to_string());
        self.last_key = Some(key.to_string());
        self.count += 1;
        Ok(())
    }

    /// Ends the archive, makes it durable, and only then gives it its final name.
    pub fn finish(self) -> Result<ShardSummary> {
        let ctx = || format!("finishing {} (disk full?)", self.tmp.display());
        let mut hw = self.builder.into_inner().with_context(ctx)?;
        hw.flush().with_context(ctx)?;
        let HashingWriter { inner, hasher, bytes } = hw;
        let file = inner.into_inner().map_err(|e| e.into_error()).with_context(ctx)?;
        file.sync_all().with_context(ctx)?;
        drop(file);
        rename_durably(&self.tmp, &self.dest)?;
        Ok(ShardSummary {
            count: self.count,
            bytes,
            sha256: hex(&hasher.finalize()),
            first_key: self.first_key,
            last_key: self.last_key,
        })
    }
}

/// One sample read back: its key and `(extension, bytes)` members in file order.
pub struct Sample {
    pub key: String,
    pub members: Vec<(String, Vec<u8>)>,
}

impl Sample {
    pub fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members.iter().find(|m| m.0 == ext).map(|m| m.1.as_slice())
    }
}

/// Streams the samples of a shard (consecutive members sharing a key, split at the first dot of
/// the base name the way webdataset does) to `f`; memory holds one sample at a time. Members for
/// which `keep(ext)` is false are skipped without being read.
pub fn read_samples_filtered(path: &Path, keep: impl Fn(&str) -> bool, mut f: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening shard {}", path.display()))?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let bad = || format!("shard {} is truncated or not a tar file: re-create it (sftok-prep shard) or remove it", path.display());
    let mut current: Option<Sample> = None;
    for entry in archive.entries().with_context(bad)? {
        let mut entry = entry.with_context(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let (dir, base) = name.rsplit_once('/').map_or(("", name.as_str()), |(d, b)| (d, b));
        let Some((stem, ext)) = base.split_once('.') else {
            bail!("shard {}: member `{name}` has no extension, so it belongs to no sample", path.display());
        };
        let key = if dir.is_empty() { stem.to_string() } else { format!("{dir}/{stem}") };
        if current.as_ref().is_some_and(|s| s.key != key) {
            f(current.take().expect("checked"))?;
        }
        let sample = current.get_or_insert_with(|| Sample { key, members: Vec::new() });
        if !keep(ext) {
            continue;
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data).with_context(|| format!("reading `{name}` in shard {}: truncated?", path.display()))?;
        sample.members.push((ext.to_string(), data));
    }
    if let Some(done) = current {
        f(done)?;
    }
    Ok(())
}

/// [`read_samples_filtered`] keeping every member.
pub fn read_samples(path: &Path, f: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    read_samples_filtered(path, |_| true, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_file;
    use std::fs;

    #[test]
    fn keys_lose_dots_spaces_and_separators_but_keep_letters() {
        assert_eq!(sanitize_key("n01440764_10026"), "n01440764_10026");
        assert_eq!(sanitize_key("a.b c/d"), "a_b_c_d");
        assert_eq!(sanitize_key("café-1"), "café-1");
        assert_eq!(sanitize_key(""), "_");
    }

    #[test]
    fn shard_round_trips_and_is_deterministic_with_long_names() {
        let dir = tempfile::tempdir().unwrap();
        let long = "k".repeat(180);
        let write = |name: &str| {
            let mut w = ShardWriter::create(&dir.path().join(name)).unwrap();
            w.add("a", &[("jpg", b"xyz"), ("cls", b"3")]).unwrap();
            w.add(&long, &[("jpg", &[1u8; 700][..]), ("cls", b"12")]).unwrap();
            w.finish().unwrap()
        };
        let s1 = write("one.tar");
        let s2 = write("two.tar");
        assert_eq!(s1, s2);
        assert_eq!(fs::read(dir.path().join("one.tar")).unwrap(), fs::read(dir.path().join("two.tar")).unwrap());
        assert!(!tmp_path(&dir.path().join("one.tar")).exists());
        assert_eq!(sha256_file(&dir.path().join("one.tar")).unwrap(), (s1.sha256.clone(), s1.bytes));
        let mut got = Vec::new();
        read_samples(&dir.path().join("one.tar"), |s| {
            got.push((s.key.clone(), s.get("cls").unwrap().to_vec(), s.get("jpg").unwrap().len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![("a".into(), b"3".to_vec(), 3), (long.clone(), b"12".to_vec(), 700)]);
        assert_eq!((s1.count, s1.first_key.as_deref(), s1.last_key.as_deref()), (2, Some("a"), Some(long.as_str())));
    }
}
