//! Precomputed proxy codes (issue 5): one Parquet file per input shard (`train-000012.tar` →
//! `train-000012.parquet`), one row per (image, stored view):
//!
//! | column | type | |
//! | --- | --- | --- |
//! | `key` | utf8 | the shard's sample key |
//! | `view` | uint8 | index into `views_for(…)` of that image |
//! | `crop_x`, `crop_y` | uint16 | crop offset in the resized image |
//! | `flip` | bool | mirrored after the crop |
//! | `codes` | fixed_size_list<uint16 not null>[N] | teacher codes, raster order `h·16 + w` |
//!
//! File key-value metadata (`sftok.*`) records what the codes depend on: teacher checkpoint
//! sha256, image size, resize rule, views per image and the writing tool's version. Files are
//! written under `<name>.tmp` and renamed, so a crash never leaves a complete-looking file.

use crate::fsutil::{rename_durably, tmp_path};
use crate::view::View;
use anyhow::{Context, Result, bail};
use arrow_array::builder::{BooleanBuilder, FixedSizeListBuilder, StringBuilder, UInt8Builder, UInt16Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{UInt8Type, UInt16Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per Parquet row group (and per in-memory batch while writing): small enough for cheap
/// partial reads, large enough for good compression.
const ROW_GROUP_ROWS: usize = 8192;
const EXT: &str = "parquet";

/// What a code store holds: the teacher's proxy codes (stages 1–2) or a tokenizer's token ids
/// (generator training, `sftok-prep tokenize`). Same layout; the metadata says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeContent {
    ProxyCodes,
    Tokens,
}

impl CodeContent {
    fn name(self) -> &'static str {
        match self {
            CodeContent::ProxyCodes => "proxy-codes",
            CodeContent::Tokens => "sftok-tokens",
        }
    }

    /// The metadata key of the encoder's checkpoint hash.
    fn sha_key(self) -> &'static str {
        match self {
            CodeContent::ProxyCodes => "sftok.teacher_sha256",
            CodeContent::Tokens => "sftok.tokenizer_sha256",
        }
    }

    /// The command that writes this content.
    pub fn command(self) -> &'static str {
        match self {
            CodeContent::ProxyCodes => "sftok-prep proxy-codes",
            CodeContent::Tokens => "sftok-prep tokenize",
        }
    }
}

/// What the stored codes depend on; every file of a store must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeMeta {
    pub content: CodeContent,
    /// sha256 of the encoder's checkpoint (the teacher, or the tokenizer), or `random:SEED`.
    pub encoder_sha256: String,
    /// Side of the square crop the encoder saw.
    pub image_size: u32,
    /// Human-readable resize rule, e.g. `shorter-edge 256, bicubic+antialias, long side truncated`.
    pub resize: String,
    /// Stored views per image (`views_for`'s `v`).
    pub views_per_image: usize,
    pub tool_version: String,
    /// Codes per view (256 for the 16×16 teacher grid, 64 SFTok tokens; tiny test models use fewer).
    pub codes_per_image: usize,
    /// Which views were encoded together (tokens: OptVQ's Sinkhorn assignment spans one encoder
    /// call, so ids depend on it); empty for proxy codes (per-cell nearest neighbour).
    pub batching: String,
}

impl CodeMeta {
    fn to_key_values(&self) -> Vec<KeyValue> {
        let mut kv = vec![
            ("sftok.content", self.content.name().to_string()),
            (self.content.sha_key(), self.encoder_sha256.clone()),
            ("sftok.image_size", self.image_size.to_string()),
            ("sftok.resize", self.resize.clone()),
            ("sftok.views_per_image", self.views_per_image.to_string()),
            ("sftok.tool_version", self.tool_version.clone()),
            ("sftok.codes_per_image", self.codes_per_image.to_string()),
        ];
        if !self.batching.is_empty() {
            kv.push(("sftok.batching", self.batching.clone()));
        }
        kv.into_iter().map(|(k, v)| KeyValue::new(k.to_string(), v)).collect()
    }

    fn from_key_values(kv: Option<&Vec<KeyValue>>, file: &Path) -> Result<CodeMeta> {
        let map: HashMap<&str, &str> =
            kv.into_iter().flatten().filter_map(|kv| Some((kv.key.as_str(), kv.value.as_deref()?))).collect();
        let get = |k: &str| {
            map.get(k).map(|v| v.to_string()).with_context(|| {
                format!("{}: metadata key `{k}` missing — not a code file written by sftok-prep proxy-codes / tokenize?", file.display())
            })
        };
        let num = |k: &str| -> Result<usize> {
            get(k)?.parse().with_context(|| format!("{}: metadata `{k}` is not a number", file.display()))
        };
        // Files from before `sftok.content` existed are proxy codes.
        let content = match map.get("sftok.content").copied() {
            None | Some("proxy-codes") => CodeContent::ProxyCodes,
            Some("sftok-tokens") => CodeContent::Tokens,
            Some(other) => bail!("{}: unknown sftok.content {other:?}", file.display()),
        };
        Ok(CodeMeta {
            content,
            encoder_sha256: get(content.sha_key())?,
            image_size: num("sftok.image_size")? as u32,
            resize: get("sftok.resize")?,
            views_per_image: num("sftok.views_per_image")?,
            tool_version: get("sftok.tool_version")?,
            codes_per_image: num("sftok.codes_per_image")?,
            batching: map.get("sftok.batching").map(|v| v.to_string()).unwrap_or_default(),
        })
    }
}

fn schema(codes_per_image: usize) -> SchemaRef {
    let item = Field::new("item", DataType::UInt16, false);
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("view", DataType::UInt8, false),
        Field::new("crop_x", DataType::UInt16, false),
        Field::new("crop_y", DataType::UInt16, false),
        Field::new("flip", DataType::Boolean, false),
        Field::new("codes", DataType::FixedSizeList(Arc::new(item), codes_per_image as i32), false),
    ]))
}

/// The code file that belongs to a shard: same stem, `.parquet`.
pub fn code_file_name(shard_name: &str) -> String {
    let stem = shard_name.strip_suffix(".tar").unwrap_or(shard_name);
    format!("{stem}.{EXT}")
}

/// Writes one shard's codes.
pub struct CodeWriter {
    dest: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    codes_per_image: usize,
    keys: StringBuilder,
    views: UInt8Builder,
    xs: UInt16Builder,
    ys: UInt16Builder,
    flips: BooleanBuilder,
    codes: FixedSizeListBuilder<UInt16Builder>,
    pending: usize,
    rows: usize,
}

impl CodeWriter {
    pub fn create(dest: &Path, meta: &CodeMeta) -> Result<CodeWriter> {
        if meta.codes_per_image == 0 {
            bail!("codes_per_image must be positive");
        }
        let tmp = tmp_path(dest);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(meta.to_key_values()))
            .build();
        let schema = schema(meta.codes_per_image);
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        let n = meta.codes_per_image;
        let item = Field::new("item", DataType::UInt16, false);
        Ok(CodeWriter {
            dest: dest.to_path_buf(),
            tmp,
            writer,
            schema,
            codes_per_image: n,
            keys: StringBuilder::new(),
            views: UInt8Builder::new(),
            xs: UInt16Builder::new(),
            ys: UInt16Builder::new(),
            flips: BooleanBuilder::new(),
            codes: FixedSizeListBuilder::with_capacity(UInt16Builder::with_capacity(ROW_GROUP_ROWS * n), n as i32, ROW_GROUP_ROWS)
                .with_field(Arc::new(item)),
            pending: 0,
            rows: 0,
        })
    }

    /// One row: the codes of image `key` seen through stored view number `view_id`.
    pub fn push(&mut self, key: &str, view_id: u8, view: View, codes: &[u16]) -> Result<()> {
        if codes.len() != self.codes_per_image {
            bail!("{}: key {key} view {view_id} has {} codes, the file holds {} per view", self.dest.display(), codes.len(), self.codes_per_image);
        }
        self.keys.append_value(key);
        self.views.append_value(view_id);
        self.xs.append_value(view.crop_x);
        self.ys.append_value(view.crop_y);
        self.flips.append_value(view.flip);
        self.codes.values().append_slice(codes);
        self.codes.append(true);
        self.pending += 1;
        if self.pending == ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.keys.finish()),
            Arc::new(self.views.finish()),
            Arc::new(self.xs.finish()),
            Arc::new(self.ys.finish()),
            Arc::new(self.flips.finish()),
            Arc::new(self.codes.finish()),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch).with_context(|| format!("writing {}", self.tmp.display()))?;
        self.rows += self.pending;
        self.pending = 0;
        Ok(())
    }

    /// Writes the footer, syncs and renames into place (`fsutil`'s rule); returns the number of rows.
    pub fn finish(mut self) -> Result<usize> {
        self.flush()?;
        let file = self.writer.into_inner().with_context(|| format!("finishing {}", self.tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(file);
        rename_durably(&self.tmp, &self.dest)?;
        Ok(self.rows)
    }
}

/// A directory of code files, indexed by shard; files are read when a shard is needed, so a rank
/// holds the codes of the shards it is reading, not the whole dataset's (ImageNet × 10 views is
/// about 6.5 GB of codes).
#[derive(Clone, Debug)]
pub struct ProxyCodeStore {
    dir: PathBuf,
    meta: CodeMeta,
    files: BTreeMap<String, PathBuf>,
}

impl ProxyCodeStore {
    /// Indexes every `*.parquet` in `dir` (footers only) and checks that they agree on the
    /// metadata.
    pub fn open(dir: &Path) -> Result<ProxyCodeStore> {
        let mut files = BTreeMap::new();
        let entries = fs::read_dir(dir).with_context(|| format!("reading the proxy-code directory {}", dir.display()))?;
        for e in entries {
            let path = e.with_context(|| format!("reading {}", dir.display()))?.path();
            if path.extension().is_some_and(|x| x == EXT) {
                let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                files.insert(name, path);
            }
        }
        let Some(first) = files.values().next() else {
            bail!("no *.{EXT} files in {}: run `sftok-prep proxy-codes` first", dir.display());
        };
        let meta = read_meta(first)?;
        for path in files.values().skip(1) {
            let m = read_meta(path)?;
            if m != meta {
                bail!("{} was made with different settings than {} ({m:?} vs {meta:?}): recompute it or move it out", path.display(), first.display());
            }
        }
        Ok(ProxyCodeStore { dir: dir.to_path_buf(), meta, files })
    }

    pub fn meta(&self) -> &CodeMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the store has a code file for this shard (`train-000003.tar`).
    pub fn has_shard(&self, shard_name: &str) -> bool {
        self.files.contains_key(&code_file_name(shard_name))
    }

    /// Reads the codes of one shard; None when the store has no file for it.
    pub fn load_shard(&self, shard_name: &str) -> Result<Option<ShardCodes>> {
        match self.files.get(&code_file_name(shard_name)) {
            Some(path) => read_codes(path, &self.meta).map(Some),
            None => Ok(None),
        }
    }
}

fn read_meta(path: &Path) -> Result<CodeMeta> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    CodeMeta::from_key_values(builder.metadata().file_metadata().key_value_metadata(), path)
}

/// One stored view of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredView<'a> {
    pub view_id: u8,
    pub view: View,
    pub codes: &'a [u16],
}

/// All rows of one code file, codes in one flat array.
#[derive(Clone, Debug, Default)]
pub struct ShardCodes {
    codes_per_image: usize,
    /// key → rows, sorted by view id.
    rows: HashMap<String, Vec<u32>>,
    views: Vec<(u8, View)>,
    codes: Vec<u16>,
}

impl ShardCodes {
    /// The stored views of `key`, by view id; None for an unknown key.
    pub fn get(&self, key: &str) -> Option<Vec<StoredView<'_>>> {
        let rows = self.rows.get(key)?;
        let n = self.codes_per_image;
        Some(
            rows.iter()
                .map(|&r| {
                    let (view_id, view) = self.views[r as usize];
                    StoredView { view_id, view, codes: &self.codes[r as usize * n..(r as usize + 1) * n] }
                })
                .collect(),
        )
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.rows.keys().map(String::as_str)
    }

    pub fn rows(&self) -> usize {
        self.views.len()
    }
}

/// Names and types equal, ignoring the list item's name (`item` from arrow-rs, `element` from
/// pyarrow's Parquet writer) and nullability (readers may relax it).
fn same_columns(actual: &Schema, expected: &Schema) -> bool {
    let kind = |t: &DataType| match t {
        DataType::FixedSizeList(item, n) => format!("list<{:?}>[{n}]", item.data_type()),
        t => format!("{t:?}"),
    };
    actual.fields().len() == expected.fields().len()
        && actual.fields().iter().zip(expected.fields()).all(|(a, e)| a.name() == e.name() && kind(a.data_type()) == kind(e.data_type()))
}

fn read_codes(path: &Path, meta: &CodeMeta) -> Result<ShardCodes> {
    let ctx = || format!("reading proxy codes {}", path.display());
    let file = File::open(path).with_context(ctx)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(ctx)?;
    let expected = schema(meta.codes_per_image);
    if !same_columns(builder.schema(), &expected) {
        bail!("{}: columns {:?} differ from the proxy-code schema {:?}", path.display(), builder.schema().fields(), expected.fields());
    }
    let mut out = ShardCodes { codes_per_image: meta.codes_per_image, ..Default::default() };
    for batch in builder.with_batch_size(ROW_GROUP_ROWS).build().with_context(ctx)? {
        let batch = batch.with_context(ctx)?;
        let keys = batch.column(0).as_string::<i32>();
        let view_ids = batch.column(1).as_primitive::<UInt8Type>();
        let xs = batch.column(2).as_primitive::<UInt16Type>();
        let ys = batch.column(3).as_primitive::<UInt16Type>();
        let flips = batch.column(4).as_boolean();
        let codes = batch.column(5).as_fixed_size_list();
        let values = codes.values().as_primitive::<UInt16Type>();
        let start = codes.offset() * meta.codes_per_image;
        out.codes.extend_from_slice(&values.values()[start..start + codes.len() * meta.codes_per_image]);
        for i in 0..batch.num_rows() {
            let row = out.views.len() as u32;
            out.views.push((view_ids.value(i), View { crop_x: xs.value(i), crop_y: ys.value(i), flip: flips.value(i) }));
            out.rows.entry(keys.value(i).to_string()).or_default().push(row);
        }
    }
    for (key, rows) in &mut out.rows {
        rows.sort_by_key(|&r| out.views[r as usize].0);
        if rows.windows(2).any(|w| out.views[w[0] as usize].0 == out.views[w[1] as usize].0) {
            bail!("{}: key {key} has a view id twice: the file is corrupt, recompute it", path.display());
        }
    }
    Ok(out)
}
