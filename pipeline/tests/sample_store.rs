//! The sample-batch chunk store: numpy (oracle) reads the merged `.npz`; a two-process fill gives
//! the same bytes as one process; resume, refusals and the temporary name of an unfinished merge.

use serde_json::json;
use sftok_pipeline::fsutil::{sha256_file, tmp_path};
use sftok_pipeline::sample_plan::SamplePlan;
use sftok_pipeline::sample_store::{ChunkStore, parts_dir};
use sftok_testkit::run_python;
use std::cell::Cell;
use std::fs;
use std::time::Duration;

const S: u32 = 8;

fn small_plan() -> SamplePlan {
    SamplePlan::new(40, 10, 5, 2).unwrap()
}

fn fingerprint() -> serde_json::Value {
    json!({"generator_sha256": "ab".repeat(32), "guidance_scale": 4.5, "num_steps": 8})
}

/// Pixel `k` of image `i` of chunk `c` (label `label`): a value that tells them all apart.
fn pixel(label: i64, chunk: usize, i: usize, k: usize) -> u8 {
    (label as usize * 37 + chunk * 11 + i * 5 + k * 3 + (k >> 5)) as u8
}

fn chunk_pixels(plan: &SamplePlan, chunk: usize) -> Vec<u8> {
    let row = (S * S * 3) as usize;
    let labels = plan.chunk_labels(chunk);
    (0..plan.per_proc_batch)
        .flat_map(|i| (0..row).map(move |k| (i, k)))
        .map(|(i, k)| pixel(labels[i], chunk, i, k))
        .collect()
}

fn fill(store: &ChunkStore, order: &[usize]) {
    for &c in order {
        store.write_chunk(c, &chunk_pixels(store.plan(), c)).unwrap();
    }
}

fn merge(store: &ChunkStore) {
    store.merge(&|_| {}).unwrap();
}

/// Checks dtype, shape, the `.npy` header bytes and every row against the expected pixels, whose
/// (chunk, image, label) per row are passed in a side file.
const CHECK: &str = r#"
import sys, io, json, zipfile, numpy as np
path, expect_path, S = sys.argv[1], sys.argv[2], int(sys.argv[3])
with zipfile.ZipFile(path) as z:
    assert z.namelist() == ["arr_0.npy"], z.namelist()
    info = z.getinfo("arr_0.npy")
    assert info.compress_type == zipfile.ZIP_STORED, info.compress_type
    raw = z.read("arr_0.npy")
d = np.load(path)
assert list(d.keys()) == ["arr_0"], list(d.keys())
a = d["arr_0"]
rows = json.load(open(expect_path))
N = len(rows)
assert a.dtype == np.uint8, a.dtype
assert a.shape == (N, S, S, 3), a.shape
assert a.flags["C_CONTIGUOUS"]
h = io.BytesIO()
np.lib.format.write_array_header_1_0(h, np.lib.format.header_data_from_array_1_0(a))
assert raw[:len(h.getvalue())] == h.getvalue(), (raw[:128], h.getvalue())
assert len(raw) == len(h.getvalue()) + a.nbytes
k = np.arange(S * S * 3)
for s, (c, i, label) in enumerate(rows):
    want = ((label * 37 + c * 11 + i * 5 + k * 3 + (k >> 5)) % 256).astype(np.uint8).reshape(S, S, 3)
    assert np.array_equal(a[s], want), (s, c, i, label)
print("ok", N)
"#;

#[test]
fn merged_npz_is_what_numpy_reads_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.npz");
    let plan = small_plan();
    let store = ChunkStore::open(&out, &plan, S, fingerprint()).unwrap();
    assert_eq!(store.missing(), (0..8).collect::<Vec<_>>());
    fill(&store, &(0..plan.num_chunks()).collect::<Vec<_>>());
    assert!(store.missing().is_empty());
    let rows = Cell::new(0u64);
    store.merge(&|k| rows.set(rows.get() + k)).unwrap();
    assert_eq!(rows.get(), 40);

    // Expected (chunk, image, label) per row; label_of_row must agree with the chunk's labels.
    let expect: Vec<(usize, usize, i64)> = (0..plan.num)
        .map(|s| {
            let (c, i) = plan.chunk_of_row(s);
            assert_eq!(plan.row_of(c, i), s);
            assert_eq!(plan.label_of_row(s), plan.chunk_labels(c)[i], "row {s}");
            (c, i, plan.label_of_row(s))
        })
        .collect();
    // Class-balanced: 4 of each of the 10 classes.
    for class in 0..10 {
        assert_eq!(expect.iter().filter(|r| r.2 == class).count(), 4);
    }
    let expect_path = dir.path().join("expect.json");
    fs::write(&expect_path, serde_json::to_vec(&expect).unwrap()).unwrap();
    let stdout = run_python(CHECK, &[out.to_str().unwrap(), expect_path.to_str().unwrap(), &S.to_string()]);
    assert_eq!(stdout.trim(), "ok 40");

    // read_row gives the chunk's own bytes; the parts stay until remove_parts.
    let mut row = vec![0u8; store.row_bytes()];
    store.read_row(5, 3, &mut row).unwrap();
    let r = store.row_bytes();
    assert_eq!(row, chunk_pixels(&plan, 5)[3 * r..4 * r]);
    assert!(parts_dir(&out).join("plan.json").exists());
    store.remove_parts().unwrap();
    assert!(!parts_dir(&out).exists());
    assert!(out.exists());
}

#[test]
fn two_processes_give_the_bytes_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan();
    let one = dir.path().join("one/samples.npz");
    let single = ChunkStore::open(&one, &plan, S, fingerprint()).unwrap();
    fill(&single, &plan.chunks_of_process(0, 1).unwrap());
    merge(&single);

    let two = dir.path().join("two/samples.npz");
    let rank0 = ChunkStore::open(&two, &plan, S, fingerprint()).unwrap();
    let rank1 = ChunkStore::open(&two, &plan, S, fingerprint()).unwrap();
    let (c0, c1) = (plan.chunks_of_process(0, 2).unwrap(), plan.chunks_of_process(1, 2).unwrap());
    assert_eq!(c0, [0, 2, 4, 6]);
    assert_eq!(c1, [1, 3, 5, 7]);
    // Rank 1 runs ahead of rank 0, which waits for it before merging.
    for (a, b) in c1.iter().rev().zip(&c0) {
        fill(&rank1, &[*a]);
        fill(&rank0, &[*b]);
    }
    rank0.wait_for_all(2, Duration::from_secs(5), Duration::from_millis(10)).unwrap();
    merge(&rank0);
    assert_eq!(sha256_file(&one).unwrap(), sha256_file(&two).unwrap());
}

#[test]
fn waiting_times_out_naming_the_processes_that_owe_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan();
    let store = ChunkStore::open(&dir.path().join("s.npz"), &plan, S, fingerprint()).unwrap();
    fill(&store, &plan.chunks_of_process(0, 3).unwrap()); // 0, 3, 6
    fill(&store, &[1]);
    let err = store.wait_for_all(3, Duration::from_millis(50), Duration::from_millis(10)).unwrap_err().to_string();
    // Missing: 2, 4, 5, 7 → process 1: 4, 7; process 2: 2, 5.
    assert!(err.contains("4 of 8 chunks"), "{err}");
    assert!(err.contains("process 1: 2") && err.contains("process 2: 2") && !err.contains("process 0"), "{err}");
    // Merging with chunks missing is refused, and leaves no file.
    let err = store.merge(&|_| {}).unwrap_err().to_string();
    assert!(err.contains("4 of 8 chunks are missing"), "{err}");
    assert!(!dir.path().join("s.npz").exists());
}

#[test]
fn reopening_resumes_and_other_runs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.npz");
    let plan = small_plan();
    let store = ChunkStore::open(&out, &plan, S, fingerprint()).unwrap();
    fill(&store, &[0, 3]);
    // A run killed while writing chunk 5 leaves only its temporary.
    let partial = tmp_path(&store.chunk_path(5));
    fs::write(&partial, &chunk_pixels(&plan, 5)[..100]).unwrap();
    drop(store);

    let store = ChunkStore::open(&out, &plan, S, fingerprint()).unwrap();
    assert!(store.has(0) && store.has(3));
    assert!(!store.has(5), "a temporary chunk file counts as present");
    assert_eq!(store.missing(), [1, 2, 4, 5, 6, 7]);
    // Rewriting the chunk replaces the temporary.
    fill(&store, &[5]);
    assert!(store.has(5) && !partial.exists());

    let refused = |r: anyhow::Result<ChunkStore>| {
        let msg = format!("{:#}", r.unwrap_err());
        assert!(msg.contains("another sampling run") && msg.contains("--out"), "{msg}");
        assert!(msg.contains(&parts_dir(&out).display().to_string()), "{msg}");
        msg
    };
    let mut other = fingerprint();
    other["guidance_scale"] = json!(3.0);
    let msg = refused(ChunkStore::open(&out, &plan, S, other));
    assert!(msg.contains("4.5") && msg.contains("3.0"), "names both: {msg}");
    refused(ChunkStore::open(&out, &SamplePlan::new(40, 10, 5, 4).unwrap(), S, fingerprint()));
    refused(ChunkStore::open(&out, &SamplePlan::new(40, 10, 4, 2).unwrap(), S, fingerprint()));
    refused(ChunkStore::open(&out, &plan, 16, fingerprint()));
    // The refusals changed nothing.
    let store = ChunkStore::open(&out, &plan, S, fingerprint()).unwrap();
    assert_eq!(store.missing(), [1, 2, 4, 6, 7]);
}

#[test]
fn wrong_chunk_length_or_index_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan();
    let store = ChunkStore::open(&dir.path().join("s.npz"), &plan, S, fingerprint()).unwrap();
    let good = chunk_pixels(&plan, 2);
    for bad in [&good[..good.len() - 1], &[good.as_slice(), &[0]].concat()[..], &[]] {
        let err = store.write_chunk(2, bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{} bytes given", bad.len())) && err.contains("960 bytes"), "{err}");
    }
    assert!(!store.has(2));
    assert!(store.write_chunk(8, &good).unwrap_err().to_string().contains("out of range"));
    let mut row = vec![0u8; store.row_bytes()];
    assert!(store.read_row(2, 0, &mut row).is_err(), "reading a missing chunk");
    store.write_chunk(2, &good).unwrap();
    assert!(store.read_row(2, 5, &mut row).is_err(), "image index past the chunk");
    assert!(store.read_row(2, 0, &mut row[1..]).is_err(), "short buffer");
}

#[test]
fn no_npz_exists_until_the_merge_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.npz");
    let plan = small_plan();
    let store = ChunkStore::open(&out, &plan, S, fingerprint()).unwrap();
    fill(&store, &(0..plan.num_chunks()).collect::<Vec<_>>());
    let seen = Cell::new(0);
    store
        .merge(&|_| {
            assert!(!out.exists(), "{} visible before the merge finished", out.display());
            assert!(store.merge_tmp_path().exists());
            seen.set(seen.get() + 1);
        })
        .unwrap();
    assert_eq!(seen.get(), 40);
    assert!(out.exists() && !store.merge_tmp_path().exists());
    assert_eq!(store.merge_tmp_path(), tmp_path(&out));
    // A merge that fails half-way (chunk 7, rows 31, 33, …, vanishes after row 0) leaves the
    // previous .npz, not a prefix.
    let before = sha256_file(&out).unwrap();
    let err = store.merge(&|_| {
        let _ = fs::remove_file(store.chunk_path(7));
    });
    assert!(format!("{:#}", err.unwrap_err()).contains("chunk-000007"));
    assert_eq!(sha256_file(&out).unwrap(), before);
}

/// A sample batch over 4 GiB (22,000 images at 256²) is a ZIP64 member numpy reads; rows past the
/// 4 GiB mark are where they belong. Needs ~9 GB of disk and a minute: `--ignored` to run.
#[test]
#[ignore]
fn over_4_gib_is_zip64_and_numpy_reads_it() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let out = dir.path().join("big.npz");
    let plan = SamplePlan::new(22_000, 1000, 125, 8).unwrap();
    let store = ChunkStore::open(&out, &plan, 256, fingerprint()).unwrap();
    for c in 0..plan.num_chunks() {
        // Image i of chunk c: every byte (c + 7·i) mod 256, one byte distinct per image.
        let pixels: Vec<u8> =
            (0..plan.per_proc_batch).flat_map(|i| std::iter::repeat_n((c + 7 * i) as u8, store.row_bytes())).collect();
        store.write_chunk(c, &pixels).unwrap();
    }
    store.merge(&|_| {}).unwrap();
    let rows: Vec<String> = [0, 1, 21_844, 21_846, 21_999]
        .iter()
        .map(|&s| {
            let (c, i) = plan.chunk_of_row(s);
            format!("{s}:{}", (c + 7 * i) % 256)
        })
        .collect();
    const BIG: &str = r#"
import sys, zipfile, numpy as np
from numpy.lib import format as fmt
path, rows = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(path) as z:
    info = z.getinfo("arr_0.npy")
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 2**32, info
    with z.open("arr_0.npy") as f:
        assert fmt.read_magic(f) == (1, 0)
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
        assert (shape, fortran, dtype) == ((22000, 256, 256, 3), False, np.uint8), (shape, fortran, dtype)
        start = f.tell()
        for r in rows:
            s, v = map(int, r.split(":"))
            f.seek(start + s * 256 * 256 * 3)
            a = np.frombuffer(f.read(256 * 256 * 3), np.uint8)
            assert a.size == 256 * 256 * 3 and (a == v).all(), (s, v, a[:4])
print("ok")
"#;
    let mut args = vec![out.to_str().unwrap()];
    args.extend(rows.iter().map(String::as_str));
    assert_eq!(run_python(BIG, &args).trim(), "ok");
}
