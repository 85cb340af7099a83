//! The loader end to end on small synthetic shards: transform parity with PIL + torchvision
//! (Python oracle), stored views matching their codes, exact resume in a fresh process, disjoint
//! ranks, bad input.

mod common;

use common::{Item, diff, oracle, synth_items, write_shards, write_tar};
use sftok_pipeline::batch::{Batch, BatchStream};
use sftok_pipeline::codes::{CodeContent, CodeMeta, CodeWriter, code_file_name};
use sftok_pipeline::loader::{Loader, LoaderConfig};
use sftok_pipeline::rng::Rng;
use sftok_pipeline::transform::{decode_rgb, decode_view_into, eval_transform, reach, resized_size, view_transform};
use sftok_pipeline::view::{View, views_for};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn all_batches(loader: &mut Loader) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch().unwrap() {
        out.push(b);
    }
    out
}

fn assert_close(what: &str, ours: &[u8], theirs: &[u8]) {
    let (mean, max) = diff(ours, theirs);
    println!("{what}: mean {mean:.3}, max {max}");
    assert!(mean <= 0.5 && max <= 8, "{what}: mean {mean:.3} max {max} exceed the 0.5 / 8 tolerance");
}

#[test]
fn train_and_eval_transforms_match_pil_and_torchvision() {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 4, 6, 11);
    let (mut ours_eval, mut ours_train, mut req_eval, mut req_train) = (vec![], vec![], vec![], vec![]);
    for (i, it) in items.iter().enumerate() {
        let img = decode_rgb(&std::fs::read(&it.path).unwrap()).unwrap();
        ours_eval.extend(eval_transform(&img, 256, 256).unwrap().data);
        req_eval.push((it.path.clone(), None));
        let (rw, rh) = resized_size(img.width, img.height, 256);
        let view = View::random(&mut Rng::keyed(&[i as u64]), rw, rh, 256, true, i % 2 == 0).unwrap();
        ours_train.extend(view_transform(&img, 256, 256, view).unwrap().data);
        req_train.push((it.path.clone(), Some((view.crop_x, view.crop_y, view.flip))));
    }
    assert_close("eval transform", &ours_eval, &oracle(tmp.path(), 256, 256, &req_eval));
    assert_close("train transform", &ours_train, &oracle(tmp.path(), 256, 256, &req_train));
    // A larger resize than crop: the center crop then moves on both axes.
    let img = decode_rgb(&std::fs::read(&items[0].path).unwrap()).unwrap();
    let ours = eval_transform(&img, 288, 224).unwrap().data;
    assert_close("eval 288→224", &ours, &oracle(tmp.path(), 288, 224, &[(items[0].path.clone(), None)]));

    // Through the loader: eval batches equal the oracle's center crops, key by key.
    let shards = tmp.path().join("shards");
    write_shards(&shards, &items, 7);
    let mut cfg = LoaderConfig::eval(vec![shards.display().to_string()]);
    cfg.batch_size = 5;
    cfg.workers = 2;
    let batches = all_batches(&mut Loader::new(cfg).unwrap());
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [5, 5, 5, 5, 4]);
    let by_key: BTreeMap<&str, &Item> = items.iter().map(|it| (it.key.as_str(), it)).collect();
    let (mut ours, mut reqs) = (vec![], vec![]);
    for b in &batches {
        ours.extend_from_slice(&b.images);
        for (k, l) in b.keys.iter().zip(&b.labels) {
            assert_eq!(by_key[k.as_str()].class, *l, "label of {k}");
            reqs.push((by_key[k.as_str()].path.clone(), None));
        }
    }
    assert_eq!(reqs.len(), items.len());
    assert_close("eval loader", &ours, &oracle(tmp.path(), 256, 256, &reqs));
}

/// PIL's decode, `Image.open(path).convert("RGB")`, of each file: raw HWC bytes, concatenated.
const PIL_DECODE: &str = r#"
import sys, numpy as np
from PIL import Image
out = open(sys.argv[1], "wb")
for path in sys.argv[2:]:
    out.write(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).tobytes())
"#;

#[test]
fn jpeg_pixels_are_pils_and_decoding_only_the_needed_rows_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut items = synth_items(tmp.path(), 4, 8, 23);
    // A grayscale JPEG too: PIL decodes it as L and replicates it to RGB.
    let gray = tmp.path().join("gray.jpg");
    let luma: Vec<u8> = (0..300 * 410).map(|i| ((i % 300) ^ (i / 300)) as u8).collect();
    jpeg_encoder::Encoder::new(std::fs::File::create(&gray).unwrap(), 90).encode(&luma, 300, 410, jpeg_encoder::ColorType::Luma).unwrap();
    items.push(Item { key: "gray".into(), class: 0, path: gray });
    // And a progressive one (PIL-written): column ranges and early stops work on those too.
    let progressive = tmp.path().join("progressive.jpg");
    sftok_testkit::run_python(
        "import sys; from PIL import Image; Image.open(sys.argv[1]).save(sys.argv[2], quality=90, progressive=True, subsampling='4:2:0')",
        &[items[0].path.to_str().unwrap(), progressive.to_str().unwrap()],
    );
    items.push(Item { key: "progressive".into(), class: 0, path: progressive });

    let out = tmp.path().join("pil.bin");
    let mut args = vec![out.to_str().unwrap().to_string()];
    args.extend(items.iter().map(|it| it.path.display().to_string()));
    sftok_testkit::run_python(PIL_DECODE, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let pil = std::fs::read(&out).unwrap();
    let ours: Vec<u8> = items.iter().flat_map(|it| decode_rgb(&std::fs::read(&it.path).unwrap()).unwrap().data).collect();
    assert_eq!(ours.len(), pil.len(), "decoded sizes differ from PIL's");
    assert_eq!(diff(&ours, &pil), (0.0, 0), "libjpeg-turbo decode differs from PIL's");

    // The loader's path (decode_view_into decodes only the rows and columns the resize reads)
    // equals the full decode + view_transform, for views at the edges, both settings.
    let (mut partial_rows, mut partial_cols) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let bytes = std::fs::read(&it.path).unwrap();
        let full = decode_rgb(&bytes).unwrap();
        for (resize, crop) in [(256, 256), (288, 224)] {
            let (rw, rh) = resized_size(full.width, full.height, resize);
            if rw.min(rh) < crop {
                continue;
            }
            let mut rng = Rng::keyed(&[i as u64, resize as u64]);
            let bottom = View { crop_x: (rw - crop) as u16, crop_y: (rh - crop) as u16, flip: true };
            let top_left = View { crop_x: 0, crop_y: 0, flip: false };
            let views = [bottom, top_left, View::center(rw, rh, crop).unwrap(), View::random(&mut rng, rw, rh, crop, true, true).unwrap()];
            for view in views {
                let mut got = vec![0u8; (crop * crop * 3) as usize];
                let used = decode_view_into(&bytes, resize, crop, |_, _| Ok(view), &mut got).unwrap();
                assert_eq!(used, view);
                let want = view_transform(&full, resize, crop, view).unwrap();
                assert!(got == want.data, "{}: view {view:?} at {resize}/{crop} differs after a partial decode", it.key);
                partial_rows += (reach(full.height, rh, crop, view.crop_y).end < full.height) as usize;
                partial_cols += (reach(full.width, rw, crop, view.crop_x) != (0..full.width)) as usize;
            }
        }
    }
    println!("{partial_rows} views decoded fewer rows, {partial_cols} fewer columns than the image has");
    assert!(partial_rows >= 10 && partial_cols >= 10, "the partial decode paths are barely tested");
}

/// Codes that identify (key, view): the test can tell which stored row a batch carries.
fn fake_codes(key: &str, view: u8, n: usize) -> Vec<u16> {
    let h = key.bytes().fold(view as u16, |h, b| h.wrapping_mul(31).wrapping_add(b as u16));
    (0..n as u16).map(|i| h.wrapping_add(i)).collect()
}

/// A code store for `items` in shards of `per_shard`: `v` views per image from `views_for`, `n`
/// codes per view, nothing for `skip_key`.
struct StoreSpec<'a> {
    per_shard: usize,
    resize: u32,
    crop: u32,
    v: usize,
    n: usize,
    skip_key: Option<&'a str>,
}

fn write_store(dir: &Path, items: &[Item], spec: StoreSpec) -> BTreeMap<String, Vec<View>> {
    let StoreSpec { per_shard, resize, crop, v, n, skip_key } = spec;
    std::fs::create_dir_all(dir).unwrap();
    let meta = CodeMeta {
        content: CodeContent::ProxyCodes,
        encoder_sha256: "00".repeat(32),
        batching: String::new(),
        image_size: crop,
        resize: format!("shorter-edge {resize}"),
        views_per_image: v,
        tool_version: "test".into(),
        codes_per_image: n,
    };
    let mut views = BTreeMap::new();
    for (i, chunk) in items.chunks(per_shard).enumerate() {
        let mut w = CodeWriter::create(&dir.join(code_file_name(&format!("train-{i:06}.tar"))), &meta).unwrap();
        for it in chunk.iter().filter(|it| Some(it.key.as_str()) != skip_key) {
            let img = decode_rgb(&std::fs::read(&it.path).unwrap()).unwrap();
            let (rw, rh) = resized_size(img.width, img.height, resize);
            let vs = views_for(rw, rh, crop, v).unwrap();
            for (id, view) in vs.iter().enumerate() {
                w.push(&it.key, id as u8, *view, &fake_codes(&it.key, id as u8, n)).unwrap();
            }
            views.insert(it.key.clone(), vs);
        }
        w.finish().unwrap();
    }
    views
}

#[test]
fn with_codes_each_sample_is_cut_exactly_as_its_stored_view() {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 3, 4, 5);
    let shards = tmp.path().join("shards");
    write_shards(&shards, &items, 5);
    let views = write_store(&tmp.path().join("codes"), &items, StoreSpec { per_shard: 5, resize: 256, crop: 256, v: 10, n: 16, skip_key: None });
    let mut loader = Loader::new(loader_cfg_of(&shards, &tmp.path().join("codes"))).unwrap();
    assert_eq!(loader.code_meta().unwrap().views_per_image, 10);
    let batches = all_batches(&mut loader);
    assert_eq!(batches.len(), 6);
    let paths: BTreeMap<&str, PathBuf> = items.iter().map(|it| (it.key.as_str(), it.path.clone())).collect();
    let (mut ours, mut reqs, mut ids) = (vec![], vec![], vec![]);
    for b in &batches {
        ours.extend_from_slice(&b.images);
        let (codes, vids) = (b.codes.as_ref().unwrap(), b.views.as_ref().unwrap());
        assert_eq!(b.codes_per_image, 16);
        for (i, k) in b.keys.iter().enumerate() {
            let id = vids[i];
            assert_eq!(&codes[i * 16..(i + 1) * 16], fake_codes(k, id, 16).as_slice(), "codes of {k} view {id}");
            let v = views[k.as_str()][id as usize];
            reqs.push((paths[k.as_str()].clone(), Some((v.crop_x, v.crop_y, v.flip))));
            ids.push(id);
        }
    }
    ids.sort();
    ids.dedup();
    assert!(ids.len() >= 5, "view ids drawn: {ids:?}");
    assert_close("stored views", &ours, &oracle(tmp.path(), 256, 256, &reqs));

    // Without pixels (generator training from stored tokens): the same keys, labels, views and
    // codes in the same order, and no image bytes.
    let mut cfg = loader_cfg_of(&shards, &tmp.path().join("codes"));
    cfg.decode_pixels = false;
    let bare = all_batches(&mut Loader::new(cfg).unwrap());
    assert_eq!(bare.len(), batches.len());
    for (a, b) in batches.iter().zip(&bare) {
        assert!(b.images.is_empty());
        assert_eq!((&a.keys, &a.labels, &a.codes, &a.views), (&b.keys, &b.labels, &b.codes, &b.views));
    }
}

/// The configuration `with_codes_each_sample_is_cut_exactly_as_its_stored_view` reads with.
fn loader_cfg_of(shards: &Path, codes: &Path) -> LoaderConfig {
    let mut cfg = LoaderConfig::train(vec![shards.display().to_string()]);
    cfg.batch_size = 4;
    cfg.shuffle_buffer = 5;
    cfg.epochs = Some(2);
    cfg.codes = Some(codes.to_path_buf());
    cfg
}

/// Small images and batches: the resume tests are about the stream, not the pixels.
fn resume_cfg(shards: &Path, codes: Option<PathBuf>) -> LoaderConfig {
    let mut c = LoaderConfig::train(vec![shards.display().to_string()]);
    c.batch_size = 5;
    c.shuffle_buffer = 6;
    c.resize_shorter_edge = 72;
    c.crop_size = 64;
    c.seed = 42;
    c.workers = 2;
    c.prefetch = 2;
    c.codes = codes;
    c
}

fn batch_bytes(b: &Batch) -> Vec<u8> {
    let mut out = serde_json::to_vec(&(&b.keys, &b.labels, &b.codes, &b.views, b.size, b.codes_per_image)).unwrap();
    out.extend_from_slice(&b.images);
    out
}

const CHILD_ENV: &str = "SFTOK_TEST_RESUME_CHILD";

/// Not a test: the fresh process of `resume_*` (restores a saved state, writes 6 batches).
#[test]
#[ignore = "helper run in a child process by the resume tests"]
fn resume_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let codes = spec["codes"].as_str().map(PathBuf::from);
    let cfg = resume_cfg(Path::new(spec["shards"].as_str().unwrap()), codes);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(spec["state"].as_str().unwrap()).unwrap()).unwrap();
    let mut loader = Loader::restore(cfg, &state).unwrap();
    let out: Vec<Vec<u8>> = (0..6).map(|_| batch_bytes(&loader.next_batch().unwrap().unwrap())).collect();
    std::fs::write(spec["out"].as_str().unwrap(), serde_json::to_vec(&out).unwrap()).unwrap();
}

fn resume_in_a_fresh_process(with_codes: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 3, 8, 9);
    let shards = tmp.path().join("shards");
    write_shards(&shards, &items, 8);
    let codes = with_codes.then(|| {
        write_store(&tmp.path().join("codes"), &items, StoreSpec { per_shard: 8, resize: 72, crop: 64, v: 4, n: 8, skip_key: None });
        tmp.path().join("codes")
    });
    // 24 samples, batch 5, last partial dropped: 4 batches an epoch, so 10 batches span 3 epochs
    // and the state after batch 4 sits at the end of epoch 0.
    let mut loader = Loader::new(resume_cfg(&shards, codes.clone())).unwrap();
    let mut first = Vec::new();
    let mut state_after_4 = None;
    for i in 1..=10 {
        first.push(batch_bytes(&loader.next_batch().unwrap().unwrap()));
        if i == 4 {
            state_after_4 = Some(loader.state());
        }
    }
    let state = state_after_4.unwrap();
    assert_eq!((state["epoch"].as_u64(), state["consumed"].as_u64()), (Some(0), Some(20)), "{state}");
    drop(loader);
    let state_file = tmp.path().join("state.json");
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let out_file = tmp.path().join("child.json");
    let spec = serde_json::json!({"shards": shards, "codes": codes, "state": state_file, "out": out_file});
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, spec.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let resumed: Vec<Vec<u8>> = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    for (i, (a, b)) in first[4..].iter().zip(&resumed).enumerate() {
        assert!(a == b, "batch {} differs after the restore", i + 5);
    }
    // Epochs differ (views, order), so identical batches are not an accident of a fixed stream.
    assert_ne!(first[0], first[4]);

    // A restore under different settings is refused rather than silently diverging.
    let mut other = resume_cfg(&shards, codes);
    other.batch_size = 6;
    let err = Loader::restore(other, &state).err().expect("batch size change refused");
    assert!(format!("{err:#}").contains("other settings"), "{err:#}");
}

#[test]
fn resume_in_a_fresh_process_gives_identical_batches() {
    resume_in_a_fresh_process(false);
}

#[test]
fn resume_in_a_fresh_process_gives_identical_batches_with_codes() {
    resume_in_a_fresh_process(true);
}

#[test]
fn two_ranks_see_every_sample_of_an_epoch_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 3, 7, 2);
    let shards = tmp.path().join("shards");
    write_shards(&shards, &items, 4); // 6 shards, the last with 1 sample
    let pattern = format!("{}/train-{{000000..000005}}.tar", shards.display());
    let keys_of = |rank: usize, world: usize, epochs: u64| {
        let mut cfg = resume_cfg(&shards, None);
        cfg.sources = vec![pattern.clone()];
        (cfg.rank, cfg.world_size, cfg.epochs, cfg.drop_last) = (rank, world, Some(epochs), false);
        let mut loader = Loader::new(cfg).unwrap();
        let keys: Vec<String> = all_batches(&mut loader).into_iter().flat_map(|b| b.keys).collect();
        let reports = loader.epoch_reports();
        assert_eq!(reports.len() as u64, epochs);
        (keys, reports)
    };
    let (k0, r0) = keys_of(0, 2, 1);
    let (k1, r1) = keys_of(1, 2, 1);
    assert!(!k0.is_empty() && !k1.is_empty());
    assert_eq!(r0[0].samples + r1[0].samples, items.len() as u64);
    let mut all: Vec<String> = k0.into_iter().chain(k1).collect();
    all.sort();
    let want: Vec<String> = items.iter().map(|it| it.key.clone()).collect();
    assert_eq!(all, want);
    // One rank, two epochs: each epoch is a different permutation of all samples.
    let (k, _) = keys_of(0, 1, 2);
    let (e0, e1) = k.split_at(items.len());
    assert_ne!(e0, e1);
    for e in [e0, e1] {
        let mut e = e.to_vec();
        e.sort();
        assert_eq!(e, want);
    }
}

#[test]
fn bad_samples_are_skipped_and_counted_and_broken_tars_and_missing_codes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 1, 3, 4);
    let jpg = |i: usize| std::fs::read(&items[i].path).unwrap();
    let shards = tmp.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let mut truncated = jpg(2);
    truncated.truncate(300);
    write_tar(&shards.join("train-000000.tar"), &[
        ("good1.jpg".into(), jpg(0)), ("good1.cls".into(), b"3".to_vec()),
        ("garbage.jpg".into(), b"not a jpeg at all".to_vec()), ("garbage.cls".into(), b"1".to_vec()),
        ("cut.jpg".into(), truncated), ("cut.cls".into(), b"1".to_vec()),
        ("nolabel.jpg".into(), jpg(1)),
        ("good2.jpg".into(), jpg(1)), ("good2.cls".into(), b"4".to_vec()), ("good2.json".into(), b"{}".to_vec()),
    ]);
    let mut cfg = LoaderConfig::eval(vec![shards.display().to_string()]);
    cfg.batch_size = 8;
    let mut loader = Loader::new(cfg.clone()).unwrap();
    let batches = all_batches(&mut loader);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].keys, ["good1", "good2"]);
    assert_eq!(batches[0].labels, [3, 4]);
    let report = &loader.epoch_reports()[0];
    assert_eq!((report.samples, report.skipped, report.batches), (5, 3, 1));

    // Proxy codes missing for a key: an error naming it, or skipped and counted on request.
    let good: Vec<Item> = items[..2].to_vec();
    let codes_shards = tmp.path().join("codes-shards");
    write_shards(&codes_shards, &good, 8);
    write_store(&tmp.path().join("codes"), &good, StoreSpec { per_shard: 8, resize: 256, crop: 256, v: 2, n: 4, skip_key: Some(&good[1].key) });
    let mut with_codes = LoaderConfig::eval(vec![codes_shards.display().to_string()]);
    with_codes.codes = Some(tmp.path().join("codes"));
    let err = all_batches_err(&mut Loader::new(with_codes.clone()).unwrap());
    assert!(err.contains(&good[1].key) && err.contains("no proxy codes"), "{err}");
    with_codes.skip_missing_codes = true;
    let mut loader = Loader::new(with_codes).unwrap();
    assert_eq!(all_batches(&mut loader).iter().map(Batch::len).sum::<usize>(), 1);
    assert_eq!(loader.epoch_reports()[0].skipped, 1);

    // A truncated tar: the error names the file.
    let path = shards.join("train-000000.tar");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let err = all_batches_err(&mut Loader::new(cfg).unwrap());
    assert!(err.contains("train-000000.tar") && err.contains("truncated"), "{err}");
}

fn all_batches_err(loader: &mut Loader) -> String {
    loop {
        match loader.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => return format!("{e:#}"),
        }
    }
}

#[test]
fn recycled_batch_buffers_do_not_change_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 3, 5, 31);
    let shards = tmp.path().join("shards");
    write_shards(&shards, &items, 4);
    let mut cfg = LoaderConfig::train(vec![shards.display().to_string()]);
    (cfg.batch_size, cfg.shuffle_buffer, cfg.epochs, cfg.workers) = (4, 6, Some(2), 2);
    let plain = all_batches(&mut Loader::new(cfg.clone()).unwrap());
    let mut loader = Loader::new(cfg).unwrap();
    let mut recycled = Vec::new();
    while let Some(b) = loader.next_batch().unwrap() {
        recycled.push(b.clone());
        loader.recycle(b); // its buffer comes back holding a later batch
    }
    assert_eq!(plain.len(), 6);
    assert!(plain == recycled, "recycling batch buffers changed the batches");
}

#[test]
fn a_rank_with_less_than_one_training_batch_is_an_error_not_an_endless_read() {
    let tmp = tempfile::tempdir().unwrap();
    let items = synth_items(tmp.path(), 2, 3, 5);
    let shards = tmp.path().join("shards");
    write_shards(&shards, &items, 3); // 2 shards of 3
    let mut cfg = resume_cfg(&shards, None);
    (cfg.rank, cfg.world_size, cfg.batch_size, cfg.drop_last, cfg.epochs) = (1, 2, 4, true, None);
    let err = Loader::new(cfg).unwrap().next_batch().expect_err("3 samples cannot make a batch of 4").to_string();
    assert!(err.contains("rank 1 of 2") && err.contains("3 usable sample(s)") && err.contains("per_gpu_batch_size"), "{err}");
}
