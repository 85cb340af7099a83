//! A small TensorBoard event-file writer (scalars and PNG images), hand-rolled because the
//! maintained crates pull in stale dependencies (../shared/spec/toolchain-notes.md §6).
//!
//! Format: records of `u64 len | u32 masked_crc32c(len) | Event proto | u32 masked_crc32c(data)`;
//! the first Event carries `file_version = "brain.Event:2"`.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct EventWriter {
    out: BufWriter<File>,
    pub path: PathBuf,
}

fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

// Minimal protobuf encoding.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, out);
}
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn event(step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut e = Vec::new();
    key(1, 1, &mut e); // wall_time: double
    e.extend_from_slice(&wall.to_le_bytes());
    key(2, 0, &mut e); // step: int64
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

fn summary_value(tag: &str, value: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(1, tag.as_bytes(), &mut v);
    value(&mut v);
    let mut summary = Vec::new();
    bytes_field(1, &v, &mut summary);
    summary
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.<host>.<pid>.0`.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{}.0", std::process::id()));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter { out: BufWriter::new(file), path };
        w.record(&event(0, |e| bytes_field(3, b"brain.Event:2", e)))?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())?;
        Ok(())
    }

    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> Result<()> {
        let summary = summary_value(tag, |v| {
            key(2, 5, v); // simple_value: float
            v.extend_from_slice(&value.to_le_bytes());
        });
        self.record(&event(step, |e| bytes_field(5, &summary, e)))
    }

    /// A PNG-encoded RGB image.
    pub fn image(&mut self, tag: &str, step: i64, png: &[u8], width: u32, height: u32) -> Result<()> {
        let mut img = Vec::new();
        key(1, 0, &mut img);
        varint(height as u64, &mut img);
        key(2, 0, &mut img);
        varint(width as u64, &mut img);
        key(3, 0, &mut img);
        varint(3, &mut img);
        bytes_field(4, png, &mut img);
        let summary = summary_value(tag, |v| bytes_field(4, &img, v));
        self.record(&event(step, |e| bytes_field(5, &summary, e)))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720 test vector).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
