//! `sftok-prep proxy-codes`: Parquet files that pyarrow reads with the issue's schema, codes that
//! equal the teacher applied to the loader's pixels for the stored view, and kill-and-resume.

mod common;

use common::{bin, run_ok, shards};
use sftok_pipeline::batch::BatchStream;
use sftok_pipeline::loader::{Loader, LoaderConfig};
use sftok_testkit_tch::python;
use std::path::Path;
use tch::Device;

fn codes_cmd(shards: &Path, out: &Path) -> std::process::Command {
    codes_cmd_with(shards, out, 4, 16)
}

fn codes_cmd_with(shards: &Path, out: &Path, views: usize, batch: usize) -> std::process::Command {
    let mut c = bin("sftok-prep");
    c.args(["proxy-codes", "--teacher", "random:0", "--shards", shards.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--views", &views.to_string(), "--resize-shorter", "64", "--crop", "64", "--device", "cpu", "--batch", &batch.to_string()]);
    c
}

const PY_SCHEMA: &str = r#"
import sys, pyarrow.parquet as pq, pyarrow as pa
t = pq.read_table(sys.argv[1])
s = t.schema
assert s.field("key").type == pa.string(), s
assert s.field("view").type == pa.uint8(), s
assert s.field("crop_x").type == pa.uint16() and s.field("crop_y").type == pa.uint16(), s
assert s.field("flip").type == pa.bool_(), s
assert s.field("codes").type.list_size == 16 and s.field("codes").type.value_type == pa.uint16(), s
meta = {k.decode(): v.decode() for k, v in pq.read_metadata(sys.argv[1]).metadata.items()}
assert meta["sftok.teacher_sha256"] == "random:0", meta
assert meta["sftok.views_per_image"] == "4" and meta["sftok.image_size"] == "64", meta
rows = t.to_pylist()
assert len(rows) == 4 * len(set(r["key"] for r in rows)), len(rows)
assert sorted(set(r["view"] for r in rows)) == [0, 1, 2, 3]
assert all(r["flip"] == bool(r["view"] % 2) for r in rows)
assert all(all(0 <= c < 1024 for c in r["codes"]) for r in rows)
print("OK", len(rows))
"#;

#[test]
fn codes_are_readable_by_pyarrow_and_equal_the_teacher_on_the_loaders_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let train = shards(tmp.path(), 2, 6, 6);
    let out = tmp.path().join("codes");
    let text = run_ok(&mut codes_cmd(&train, &out));
    assert!(text.contains("2 shard(s) written") && text.contains("12 images, 48 views"), "{text}");
    let check = run_ok(python().arg("-c").arg(PY_SCHEMA).arg(out.join("train-000000.parquet")));
    assert!(check.contains("OK 24"), "{check}");
    // The teacher's quantizer is a per-cell nearest-neighbour search: the batch size changes nothing.
    let small = tmp.path().join("codes_batch3");
    run_ok(&mut codes_cmd_with(&train, &small, 4, 3));
    for name in ["train-000000.parquet", "train-000001.parquet"] {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(small.join(name)).unwrap(), "{name}: codes depend on the batch size");
    }

    // The loader with the store attached: every sample comes with one stored view and its codes;
    // the teacher applied to exactly those pixels must give exactly those codes.
    let mut lc = LoaderConfig::eval(vec![train.display().to_string()]);
    lc.batch_size = 4;
    lc.resize_shorter_edge = 64;
    lc.crop_size = 64;
    lc.codes = Some(out.clone());
    lc.workers = 1;
    let mut loader = Loader::new(lc).unwrap();
    let (_vs, teacher) = sftok_model::vqgan::load_teacher("random:0", Device::Cpu).unwrap();
    let mut checked = 0;
    while let Some(batch) = loader.next_batch().unwrap() {
        let x = sftok_model::handoff::images(&batch, Device::Cpu);
        let codes = Vec::<i64>::try_from(teacher.encode(&x).flatten(0, -1)).unwrap();
        let stored: Vec<i64> = batch.codes.as_ref().unwrap().iter().map(|&c| c as i64).collect();
        assert_eq!(codes, stored, "stored codes differ from the teacher on the loader's pixels ({:?})", batch.keys);
        checked += batch.len();
    }
    assert_eq!(checked, 12);
}

#[test]
fn proxy_codes_resume_after_kill_ends_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let train = shards(tmp.path(), 3, 4, 4); // 3 shards
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&mut codes_cmd(&train, &a));
    let child = codes_cmd(&train, &b).env("SFTOK_TEST_PAUSE_AFTER_SHARDS", "1").spawn().unwrap();
    common::kill_when_exists(child, &b.join("train-000000.parquet"), 120);
    let kept = std::fs::read(b.join("train-000000.parquet")).unwrap();
    let text = run_ok(&mut codes_cmd(&train, &b));
    assert!(text.contains("2 shard(s) written, 1 kept"), "{text}");
    assert_eq!(std::fs::read(b.join("train-000000.parquet")).unwrap(), kept, "a finished file was rewritten");
    for i in 0..3 {
        let name = format!("train-{i:06}.parquet");
        assert_eq!(std::fs::read(a.join(&name)).unwrap(), std::fs::read(b.join(&name)).unwrap(), "{name} differs");
    }
    assert!(std::fs::read_dir(&b).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    // A different view rule into the same directory is refused instead of mixing codes.
    let out = codes_cmd_with(&train, &b, 2, 16).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("made differently"), "{}", String::from_utf8_lossy(&out.stderr));
}
