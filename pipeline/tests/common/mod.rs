//! The pipeline tests' own helpers: synthetic ImageNet images packed into small webdataset shards,
//! and the PIL/torchvision transform oracle. The Python oracle itself (the project venv) and the
//! other shared helpers are in `sftok-testkit` (testkit/, without libtorch).
#![allow(dead_code)] // each test binary uses a different subset

use sftok_pipeline::synth::{SynthOptions, synth_imagenet};
use sftok_testkit::run_python;
use std::path::{Path, PathBuf};

/// One synthetic image: its key (the file stem, no dots), class and JPEG path.
#[derive(Clone, Debug)]
pub struct Item {
    pub key: String,
    pub class: i64,
    pub path: PathBuf,
}

/// `classes × per_class` synth train images under `root/data`, sorted by key.
pub fn synth_items(root: &Path, classes: usize, per_class: usize, seed: u64) -> Vec<Item> {
    let data = root.join("data");
    let opts = SynthOptions { out: data.clone(), classes, per_class, val: 0, seed };
    synth_imagenet(&opts, &|| {}).unwrap();
    let mut items = Vec::new();
    for c in 0..classes {
        let dir = data.join("train").join(sftok_pipeline::synth::synset(c));
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let key = path.file_stem().unwrap().to_string_lossy().into_owned();
            items.push(Item { key, class: c as i64, path });
        }
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    items
}

/// Writes `items` as webdataset shards `dir/train-NNNNNN.tar` of `per_shard` samples
/// (`KEY.jpg`, `KEY.cls`); returns the shard paths.
pub fn write_shards(dir: &Path, items: &[Item], per_shard: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    items
        .chunks(per_shard)
        .enumerate()
        .map(|(i, chunk)| {
            let path = dir.join(format!("train-{i:06}.tar"));
            let members: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .flat_map(|it| {
                    [(format!("{}.jpg", it.key), std::fs::read(&it.path).unwrap()), (format!("{}.cls", it.key), it.class.to_string().into_bytes())]
                })
                .collect();
            write_tar(&path, &members);
            path
        })
        .collect()
}

pub fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap();
}

/// (mean, max) absolute difference of two equally long byte arrays.
pub fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len().max(1) as f64, max)
}

/// The reference transform in Python, on the original JPEG files: PIL decode, torchvision
/// `Resize(size, bicubic, antialias=True)`, then either `CenterCrop(crop)` (`x` = "c") or a crop at
/// (x, y), then an optional horizontal flip. Each request line: `path x y flip`. Output: the raw
/// uint8 HWC bytes of every result, concatenated, written to `out`.
pub const ORACLE: &str = r#"
import sys, numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F
size, crop, reqs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
resize = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
chunks = []
for line in open(reqs):
    path, x, y, flip = line.rstrip("\n").rsplit(" ", 3)
    img = resize(Image.open(path).convert("RGB"))
    img = T.CenterCrop(crop)(img) if x == "c" else F.crop(img, int(y), int(x), crop, crop)
    if flip == "1":
        img = F.hflip(img)
    a = np.asarray(img, dtype=np.uint8)
    assert a.shape == (crop, crop, 3), a.shape
    chunks.append(a.tobytes())
open(out, "wb").write(b"".join(chunks))
"#;

/// One oracle request: the JPEG, and `Some((x, y, flip))` or `None` for the center crop.
pub type Request = (PathBuf, Option<(u16, u16, bool)>);

/// Oracle pixels for the requests, concatenated.
pub fn oracle(dir: &Path, size: u32, crop: u32, requests: &[Request]) -> Vec<u8> {
    let reqs = dir.join("oracle-requests.txt");
    let out = dir.join("oracle-out.bin");
    let text: String = requests
        .iter()
        .map(|(p, v)| match v {
            Some((x, y, f)) => format!("{} {x} {y} {}\n", p.display(), *f as u8),
            None => format!("{} c c 0\n", p.display()),
        })
        .collect();
    std::fs::write(&reqs, text).unwrap();
    run_python(ORACLE, &[&size.to_string(), &crop.to_string(), reqs.to_str().unwrap(), out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}
