//! Proxy-code Parquet files: pyarrow (oracle) reads what CodeWriter wrote with the exact schema
//! and metadata; ProxyCodeStore reads back what was written and what pyarrow wrote.

use sftok_pipeline::codes::{CodeContent, CodeMeta, CodeWriter, ProxyCodeStore, code_file_name};
use sftok_pipeline::view::{View, views_for};

fn meta(n: usize) -> CodeMeta {
    CodeMeta {
        content: CodeContent::ProxyCodes,
        encoder_sha256: "ab".repeat(32),
        batching: String::new(),
        image_size: 256,
        resize: "shorter-edge 256, bicubic+antialias, long side truncated".into(),
        views_per_image: 4,
        tool_version: "sftok 0.1.0".into(),
        codes_per_image: n,
    }
}

/// Row r, code i: a value that exercises all 16 bits.
fn code(r: usize, i: usize) -> u16 {
    ((r * 7919 + i * 104_729) % 65_536) as u16
}

const CHECK: &str = r#"
import sys, json, pyarrow as pa, pyarrow.parquet as pq
path, n = sys.argv[1], int(sys.argv[2])
f = pq.ParquetFile(path)
t = f.read()
want = pa.schema([("key", pa.string(), False), ("view", pa.uint8(), False), ("crop_x", pa.uint16(), False),
                  ("crop_y", pa.uint16(), False), ("flip", pa.bool_(), False),
                  ("codes", pa.list_(pa.field("item", pa.uint16(), False), n), False)])
assert t.schema.remove_metadata().equals(want), t.schema
md = {k.decode(): v.decode() for k, v in f.metadata.metadata.items() if k.decode().startswith("sftok.")}
codes = t.column("codes").combine_chunks().values.to_numpy().reshape(-1, n)
print(json.dumps(dict(meta=md, rows=t.num_rows, row_groups=f.num_row_groups,
    compression=f.metadata.row_group(0).column(5).compression,
    keys=t.column("key").to_pylist()[:3], view=t.column("view").to_pylist()[:5],
    crop_x=t.column("crop_x").to_pylist()[:5], crop_y=t.column("crop_y").to_pylist()[:5],
    flip=t.column("flip").to_pylist()[:5], codes_sum=int(codes.astype("int64").sum()),
    codes_row1=codes[1].tolist())))
"#;

#[test]
fn pyarrow_reads_our_file_with_the_exact_schema_and_metadata_and_the_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let n = 16;
    let path = dir.path().join(code_file_name("train-000003.tar"));
    assert!(path.ends_with("train-000003.parquet"));
    let views = views_for(341, 256, 256, 4).unwrap();
    let images = 2100; // 8400 rows: two row groups
    let mut w = CodeWriter::create(&path, &meta(n)).unwrap();
    let mut expected_sum = 0i64;
    for img in 0..images {
        for (v, view) in views.iter().enumerate() {
            let r = img * 4 + v;
            let codes: Vec<u16> = (0..n).map(|i| code(r, i)).collect();
            expected_sum += codes.iter().map(|&c| c as i64).sum::<i64>();
            w.push(&format!("n00000001_{img}"), v as u8, *view, &codes).unwrap();
        }
    }
    assert!(w.push("bad", 0, views[0], &[1, 2]).is_err());
    assert_eq!(w.finish().unwrap(), images * 4);
    assert!(!dir.path().join("train-000003.parquet.tmp").exists());

    let out = sftok_testkit::run_python(CHECK, &[path.to_str().unwrap(), &n.to_string()]);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["rows"], images * 4);
    assert_eq!(got["row_groups"], 2);
    assert_eq!(got["compression"], "ZSTD");
    assert_eq!(got["codes_sum"], expected_sum);
    assert_eq!(got["codes_row1"], serde_json::json!((0..n).map(|i| code(1, i)).collect::<Vec<_>>()));
    assert_eq!(got["keys"], serde_json::json!(["n00000001_0", "n00000001_0", "n00000001_0"]));
    assert_eq!(got["view"], serde_json::json!([0, 1, 2, 3, 0]));
    assert_eq!(got["crop_x"], serde_json::json!([0, 0, 85, 85, 0]));
    assert_eq!(got["crop_y"], serde_json::json!([0, 0, 0, 0, 0]));
    assert_eq!(got["flip"], serde_json::json!([false, true, false, true, false]));
    let m = &got["meta"];
    assert_eq!(m["sftok.teacher_sha256"], "ab".repeat(32));
    assert_eq!(m["sftok.image_size"], "256");
    assert_eq!(m["sftok.views_per_image"], "4");
    assert_eq!(m["sftok.codes_per_image"], "16");
    assert_eq!(m["sftok.tool_version"], "sftok 0.1.0");
    assert!(m["sftok.resize"].as_str().unwrap().starts_with("shorter-edge 256"));

    let store = ProxyCodeStore::open(dir.path()).unwrap();
    assert_eq!(store.meta(), &meta(n));
    assert!(store.has_shard("train-000003.tar") && !store.has_shard("train-000004.tar"));
    assert!(store.load_shard("train-000004.tar").unwrap().is_none());
    let shard = store.load_shard("train-000003.tar").unwrap().unwrap();
    assert_eq!(shard.rows(), images * 4);
    let v = shard.get("n00000001_1234").unwrap();
    assert_eq!(v.iter().map(|s| s.view_id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(v.iter().map(|s| s.view).collect::<Vec<_>>(), views);
    let r = 1234 * 4 + 2;
    assert_eq!(v[2].codes, (0..n).map(|i| code(r, i)).collect::<Vec<_>>().as_slice());
    assert!(shard.get("n00000001_99999").is_none());
}

const PY_WRITE: &str = r#"
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
path, n = sys.argv[1], int(sys.argv[2])
codes = np.arange(3 * n, dtype=np.uint16)
t = pa.table({"key": pa.array(["b", "a", "a"]), "view": pa.array([0, 1, 0], pa.uint8()),
              "crop_x": pa.array([5, 7, 9], pa.uint16()), "crop_y": pa.array([0, 3, 0], pa.uint16()),
              "flip": pa.array([False, True, False]),
              "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes), n)})
t = t.cast(pa.schema([(f.name, f.type, False) for f in t.schema]).with_metadata({
    "sftok.teacher_sha256": "cd", "sftok.image_size": "256", "sftok.resize": "r", "sftok.views_per_image": "2",
    "sftok.tool_version": "py", "sftok.codes_per_image": str(n)}))
t = t.cast(pa.schema([pa.field(f.name, pa.list_(pa.field("item", pa.uint16(), False), n) if f.name == "codes" else f.type, False)
                      for f in t.schema]).with_metadata(t.schema.metadata))
pq.write_table(t, path)
"#;

#[test]
fn the_store_reads_a_file_pyarrow_wrote_and_refuses_mixed_settings() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4;
    sftok_testkit::run_python(PY_WRITE, &[dir.path().join("s-000000.parquet").to_str().unwrap(), &n.to_string()]);
    let store = ProxyCodeStore::open(dir.path()).unwrap();
    assert_eq!(store.meta().encoder_sha256, "cd");
    let shard = store.load_shard("s-000000.tar").unwrap().unwrap();
    let a = shard.get("a").unwrap();
    // Sorted by view id although pyarrow stored view 1 first.
    assert_eq!(a[0].view, View { crop_x: 9, crop_y: 0, flip: false });
    assert_eq!(a[0].codes, [8, 9, 10, 11]);
    assert_eq!(a[1].view, View { crop_x: 7, crop_y: 3, flip: true });
    assert_eq!(a[1].codes, [4, 5, 6, 7]);
    assert_eq!(shard.get("b").unwrap()[0].codes, [0, 1, 2, 3]);

    let mut other = meta(n);
    other.encoder_sha256 = "ee".into();
    let mut w = CodeWriter::create(&dir.path().join("s-000001.parquet"), &other).unwrap();
    w.push("c", 0, View { crop_x: 0, crop_y: 0, flip: false }, &[1, 2, 3, 4]).unwrap();
    w.finish().unwrap();
    let err = format!("{:#}", ProxyCodeStore::open(dir.path()).unwrap_err());
    assert!(err.contains("s-000001.parquet") && err.contains("different settings"), "{err}");
}
