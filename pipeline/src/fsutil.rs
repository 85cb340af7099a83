//! File-system helpers every writer shares: atomic writes with one durability rule, and file
//! checksums.
//!
//! The rule, for shards, Parquet files, manifests, checkpoints and trainer state alike: write to
//! a temporary name in the destination's directory (`<name>.tmp`, so the rename cannot cross a
//! file system), fsync the file, rename it over the destination, fsync the directory. A reader
//! then sees the old file or the complete new one, never a prefix, and after the last fsync a
//! power loss cannot undo the rename. Writers that stream into their own `File` (shards,
//! Parquet) fsync that handle and finish with [`rename_durably`].

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed to `dest`: `<dest>.tmp`,
/// in the same directory.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// The directory that holds `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// fsync of a directory, so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// Renames a finished file or directory `from` to `to` (same directory) and fsyncs that directory.
/// The caller has already made `from`'s contents durable.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    sync_dir(parent_dir(to))
}

/// Writes `bytes` to `path` atomically and durably (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| Ok(fs::write(tmp, bytes)?))
}

/// [`write_atomic`] for writers that want a path rather than bytes (safetensors, zip): `write`
/// creates the temporary file it is given. Creates `path`'s directory when missing.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tmp_path(path);
    write(&tmp).with_context(|| format!("writing {} (disk full?)", tmp.display()))?;
    // fsync flushes the inode whichever descriptor asks, so reopening the finished file is enough.
    File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    rename_durably(&tmp, path)
}

/// Replaces `path` with `bytes` (temporary name + rename, so readers never see a partial file)
/// without waiting for the disk: for files whose loss a later run detects and repairs (per-shard
/// records, whose shard checksum is rechecked) or that are cheap to make again (`synth`).
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    fs::write(&tmp, bytes).with_context(|| format!("writing {} (disk full?)", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Lower-case hex of `bytes` (how every sha256 in manifests and Parquet metadata is written).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (sha256 in hex, size in bytes) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((hex(&hasher.finalize()), n_total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        write_atomic_with(&path, |tmp| Ok(fs::write(tmp, b"three")?)).unwrap();
        write_replace(&path, b"four").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"four");
        assert!(!tmp_path(&path).exists());
        // A failing writer leaves the old file in place.
        assert!(write_atomic_with(&path, |_| anyhow::bail!("no")).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"four");
    }

    #[test]
    fn durable_rename_moves_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("checkpoint-1.tmp"), dir.path().join("checkpoint-1"));
        write_atomic(&from.join("a"), b"x").unwrap();
        rename_durably(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("a")).unwrap(), b"x");
        assert!(!from.exists());
    }

    #[test]
    fn sha256_of_a_file_matches_the_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&path).unwrap(), (want.to_string(), 3));
    }
}
