//! Native `.npz` (a zip of `.npy` files, as `numpy.savez` writes) for ADM's batches:
//! sample batches (`arr_0` uint8 `[N, H, W, 3]`) and reference batches / statistics (`mu`,
//! `sigma`, `mu_s`, `sigma_s`, optionally `arr_0`).
//!
//! `.npy` format versions 1–3 are read (v1/v2 written), little-endian `u1`, `f4`, `f8`, `i8` and
//! `b1`, C or Fortran order; stored or deflated members (`savez` / `savez_compressed`).
//! Large image arrays are streamed in row batches by a reader thread, never loaded whole.

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use tch::{Kind, Tensor};
use zip::ZipArchive;
use zip::write::FileOptions;

#[cfg(target_endian = "big")]
compile_error!("the .npy reader/writer copies little-endian bytes as they are in memory");

use sftok_pipeline::npy::NPY_MAGIC as MAGIC;

/// What an `.npy` header says.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub kind: Kind,
    pub fortran_order: bool,
    pub shape: Vec<i64>,
}

impl NpyHeader {
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

fn descr_kind(descr: &str) -> Option<Kind> {
    Some(match descr {
        "|u1" | "<u1" => Kind::Uint8,
        "<f4" => Kind::Float,
        "<f8" => Kind::Double,
        "<i8" => Kind::Int64,
        "|b1" => Kind::Bool,
        _ => return None,
    })
}

fn kind_descr(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Uint8 => "|u1",
        Kind::Float => "<f4",
        Kind::Double => "<f8",
        Kind::Int64 => "<i8",
        Kind::Bool => "|b1",
        _ => return None,
    })
}

/// Value of `'key': …` in the header's Python dict literal, up to the next top-level `,` or `}`.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let start = dict.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = dict[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

/// Parses the magic, version and header dict; leaves `r` at the first data byte.
pub fn read_npy_header(r: &mut impl Read, what: &str) -> Result<NpyHeader> {
    let mut lead = [0u8; 8];
    r.read_exact(&mut lead).with_context(|| format!("{what}: truncated .npy header"))?;
    ensure!(&lead[..6] == MAGIC, "{what}: not an .npy array (bad magic)");
    let len = match lead[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            u32::from_le_bytes(b) as usize
        }
        v => bail!("{what}: .npy format version {v} is not supported (1–3 are)"),
    };
    let mut dict = vec![0u8; len];
    r.read_exact(&mut dict).with_context(|| format!("{what}: truncated .npy header"))?;
    let dict = String::from_utf8_lossy(&dict);
    let field = |k: &str| dict_value(&dict, k).with_context(|| format!("{what}: .npy header without '{k}': {dict}"));
    let descr = field("descr")?.trim_matches(|c| c == '\'' || c == '"');
    let kind = descr_kind(descr).with_context(|| {
        format!("{what}: dtype {descr:?} is not supported (uint8, little-endian float32/float64/int64, bool are)")
    })?;
    let fortran_order = match field("fortran_order")? {
        "True" => true,
        "False" => false,
        other => bail!("{what}: bad fortran_order {other:?}"),
    };
    let shape = field("shape")?
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<i64>().with_context(|| format!("{what}: bad shape entry {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader { kind, fortran_order, shape })
}

/// Header bytes for a C-order array, padded so the data starts 64-byte aligned (as numpy does).
/// numpy's header for a C-order tensor (`sftok_pipeline::npy`, the one implementation).
fn npy_header_bytes(kind: Kind, shape: &[i64]) -> Result<Vec<u8>> {
    let descr = kind_descr(kind).with_context(|| format!("cannot write {kind:?} to .npy"))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Ok(sftok_pipeline::npy::npy_header(descr, &dims))
}

fn member(name: &str) -> String {
    format!("{name}.npy")
}

/// Random access to the arrays of one `.npz` file.
pub struct NpzReader {
    path: PathBuf,
    archive: ZipArchive<BufReader<File>>,
}

impl NpzReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let archive = ZipArchive::new(BufReader::new(file))
            .with_context(|| {
                format!(
                    "{} is not a complete .npz (zip) file — truncated by an interrupted copy or write, or another format: \
                     re-create it (a killed `sftok-eval sample` resumes from <out>.parts when rerun)",
                    path.display()
                )
            })?;
        Ok(NpzReader { path: path.to_path_buf(), archive })
    }

    /// Array names (`arr_0`, `mu`, …), without the `.npy` suffix.
    pub fn names(&self) -> Vec<String> {
        self.archive.file_names().filter_map(|n| n.strip_suffix(".npy")).map(String::from).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.archive.file_names().any(|n| n == member(name))
    }

    fn what(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }

    pub fn header(&mut self, name: &str) -> Result<NpyHeader> {
        let what = self.what(name);
        let mut entry = self.archive.by_name(&member(name)).with_context(|| format!("{what}: no such array"))?;
        read_npy_header(&mut entry, &what)
    }

    /// Reads a whole array as a CPU tensor of its own dtype.
    pub fn read(&mut self, name: &str) -> Result<Tensor> {
        let what = self.what(name);
        let mut entry = self.archive.by_name(&member(name)).with_context(|| format!("{what}: no such array"))?;
        let header = read_npy_header(&mut entry, &what)?;
        let mut bytes = vec![0u8; header.numel() as usize * header.kind.elt_size_in_bytes()];
        entry.read_exact(&mut bytes).with_context(|| format!("{what}: truncated array data"))?;
        if header.fortran_order {
            // Column-major = C order of the reversed shape, transposed back.
            let reversed: Vec<i64> = header.shape.iter().rev().copied().collect();
            let dims: Vec<i64> = (0..reversed.len() as i64).rev().collect();
            Ok(Tensor::from_data_size(&bytes, &reversed, header.kind).permute(dims).contiguous())
        } else {
            Ok(Tensor::from_data_size(&bytes, &header.shape, header.kind))
        }
    }

    /// Streams a C-order array in batches of `rows` along its first axis (the last batch may be
    /// shorter), read by a background thread so decoding overlaps the consumer's work.
    pub fn stream(&mut self, name: &str, rows: usize) -> Result<RowStream> {
        let header = self.header(name)?;
        let what = self.what(name);
        ensure!(!header.fortran_order && !header.shape.is_empty(), "{what}: streaming needs a C-order array with a first axis");
        ensure!(rows > 0, "batch size must be positive");
        let (tx, rx) = sync_channel::<Result<Tensor>>(2);
        let path = self.path.clone();
        let member_name = member(name);
        let header_clone = header.clone();
        std::thread::spawn(move || {
            let send_all = || -> Result<()> {
                let mut archive = ZipArchive::new(BufReader::new(File::open(&path)?))?;
                let mut entry = archive.by_name(&member_name)?;
                read_npy_header(&mut entry, &what)?;
                let h = &header_clone;
                let row_shape = &h.shape[1..];
                let row_bytes = row_shape.iter().product::<i64>() as usize * h.kind.elt_size_in_bytes();
                let mut left = h.shape[0] as usize;
                while left > 0 {
                    let n = rows.min(left);
                    let mut bytes = vec![0u8; n * row_bytes];
                    entry.read_exact(&mut bytes).with_context(|| format!("{what}: truncated array data"))?;
                    let mut shape = vec![n as i64];
                    shape.extend(row_shape);
                    if tx.send(Ok(Tensor::from_data_size(&bytes, &shape, h.kind))).is_err() {
                        return Ok(()); // consumer stopped early
                    }
                    left -= n;
                }
                Ok(())
            };
            if let Err(e) = send_all() {
                let _ = tx.send(Err(e));
            }
        });
        Ok(RowStream { header, rx })
    }
}

/// Batches of an array's rows (see [`NpzReader::stream`]).
pub struct RowStream {
    pub header: NpyHeader,
    rx: Receiver<Result<Tensor>>,
}

impl Iterator for RowStream {
    type Item = Result<Tensor>;
    fn next(&mut self) -> Option<Result<Tensor>> {
        self.rx.recv().ok()
    }
}

/// Writes CPU tensors (uint8, float32/64, int64, bool) as an uncompressed `.npz` (what
/// `numpy.savez` writes), atomically (`fsutil::write_atomic_with`).
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
    sftok_pipeline::fsutil::write_atomic_with(path, |tmp| {
        let mut zip = zip::ZipWriter::new(BufWriter::new(File::create(tmp)?));
        for (name, t) in arrays {
            let t = t.to_device(tch::Device::Cpu).contiguous();
            let numel = t.numel();
            let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut data, numel);
            let header = npy_header_bytes(t.kind(), &t.size()).with_context(|| format!("array {name}"))?;
            let options = FileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(header.len() + data.len() >= u32::MAX as usize);
            zip.start_file(member(name), options)?;
            zip.write_all(&header)?;
            zip.write_all(&data)?;
        }
        zip.finish()?.flush()?;
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}
