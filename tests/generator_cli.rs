//! The generator path end to end on fake ImageNet with a tiny tokenizer (random weights, the tiny
//! stage-3 config): `sftok-prep tokenize` → `sftok-train generator` (learning, kill -9 + resume)
//! → `sftok-eval sample` (1 process vs 2 under torchrun, resume, numpy) → `sftok-eval gfid`, and bad input.

mod common;

use common::{bin, metric_rows, run_ok, shards};
use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSES: usize = 4;

/// Shards, a random-weight tiny stage-3 tokenizer and its stored tokens under `dir`.
fn setup(dir: &Path) {
    shards(dir, CLASSES, 8, 8);
    let tok_cfg = common::repo().join("configs/tiny/sftok_tiny_stage3.yaml");
    run_ok(bin("sftok-train").current_dir(dir).args(["init", tok_cfg.to_str().unwrap(), "--out", "tok", "--seed", "3"]));
    run_ok(bin("sftok-prep").current_dir(dir).args([
        "tokenize", "--checkpoint", "tok", "--shards", "shards/train", "--out", "tokens/train", "--resize-shorter", "64", "--crop", "64",
        "--batch", "16", "--device", "cpu",
    ]));
}

fn generator(dir: &Path, out: &str, steps: u64, extra: &[&str]) -> Command {
    let mut c = bin("sftok-train");
    let config = common::repo().join("configs/tiny/sftok_tiny_maskgit.yaml");
    c.current_dir(dir).args([
        "generator", "--config", config.to_str().unwrap(), "--device", "cpu", "--workers", "1", "--tokenizer", "tok",
        &format!("experiment.output_dir={out}"),
        &format!("training.max_train_steps={steps}"),
        &format!("model.img_generator.condition_num_classes={CLASSES}"),
        "experiment.log_every=1",
    ]);
    c.args(extra);
    c
}

/// H(0.9·q + 0.1·u): the smallest label-smoothed cross-entropy any predictor that knows only the
/// token frequencies q (no class, no context) can reach. Computed with pyarrow from the stored tokens.
fn unigram_bound(tokens: &Path, codebook: usize, smoothing: f64) -> f64 {
    let out = sftok_testkit_tch::run_python(
        r#"
import sys, glob, numpy as np, pyarrow.parquet as pq
d, k, eps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ids = np.concatenate([np.stack(pq.read_table(f).column("codes").to_numpy(zero_copy_only=False)).ravel() for f in sorted(glob.glob(d + "/*.parquet"))])
q = np.bincount(ids.astype(np.int64), minlength=k) / ids.size
p = (1 - eps) * q + eps / k
print(-(p * np.log(p)).sum())
"#,
        &[tokens.to_str().unwrap(), &codebook.to_string(), &smoothing.to_string()],
    );
    out.trim().parse().unwrap()
}

fn mean(rows: &[serde_json::Value], key: &str) -> f64 {
    rows.iter().map(|r| r[key].as_f64().unwrap()).sum::<f64>() / rows.len() as f64
}

#[test]
fn the_generator_learns_below_the_unigram_bound_of_its_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let text = run_ok(&mut generator(dir, "g", 300, &["experiment.save_every=300", "experiment.generate_every=300"]));
    assert!(text.contains("generator finished at step 300"), "{text}");
    let rows = metric_rows(&dir.join("g/metrics.jsonl"));
    let bound = unigram_bound(&dir.join("tokens/train"), 64, 0.1);
    let (first, last) = (mean(&rows[..10], "train/masked_loss"), mean(&rows[rows.len() - 30..], "train/masked_loss"));
    println!("masked-token loss: first 10 steps {first:.3}, last 30 steps {last:.3}; unigram bound {bound:.3}");
    assert!(first > bound, "the start ({first}) is already below the bound ({bound}): the test would prove nothing");
    assert!(last < bound - 0.1, "masked-token loss {last} not below the unigram bound {bound}");
    // The preview is a class-conditional grid: one row of 4 samples per class, 64 px cells, 2 px
    // gaps, in train_images/ and in TensorBoard under "Train Generated" (read by tensorboard itself).
    let (w, h) = (4 * 64 + 3 * 2, CLASSES as u32 * 64 + (CLASSES as u32 - 1) * 2);
    let png = image::open(dir.join("g/train_images/00000300.png")).unwrap();
    assert_eq!((png.width(), png.height()), (w, h));
    let tb = sftok_testkit_tch::run_python(
        "import sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator as E\n\
         a = E(sys.argv[1], size_guidance={'images': 0}); a.Reload(); i = a.Images('Train Generated')[-1]\n\
         print(a.Tags()['scalars'], i.step, i.width, i.height)",
        &[dir.join("g/logs").to_str().unwrap()],
    );
    assert!(tb.contains("'train/masked_loss'") && tb.contains("'train/correct_tokens'"), "{tb}");
    assert!(tb.trim().ends_with(&format!("300 {w} {h}")), "{tb}");
}

#[test]
fn generator_resume_after_kill_continues_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let extra = ["experiment.save_every=3", "experiment.generate_every=0", "training.per_gpu_batch_size=4"];
    run_ok(&mut generator(dir, "a", 6, &extra));
    let child = generator(dir, "b", 6, &extra).env("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT", "3").spawn().unwrap();
    common::kill_when_exists(child, &dir.join("b/checkpoint-3/trainer_state.json"), 600);
    assert!(!dir.join("b/checkpoint-6").exists());
    let text = run_ok(&mut generator(dir, "b", 6, &extra));
    assert!(text.contains("resumed from") && text.contains("at step 3"), "{text}");
    for file in ["model/model.safetensors", "ema_model/model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        let (a, b) = (dir.join("a/checkpoint-6").join(file), dir.join("b/checkpoint-6").join(file));
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{file} differs after resume");
    }
    let (la, lb) = (metric_rows(&dir.join("a/metrics.jsonl")), metric_rows(&dir.join("b/metrics.jsonl")));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "loss logs differ");
    // The weights carry the reference's key names, readable by safetensors/torch.
    let keys = sftok_testkit_tch::run_python(
        "import sys; from safetensors.torch import load_file; sd = load_file(sys.argv[1]); print(len(sd), sorted(sd)[0], 'model.lm_head.weight' in sd)",
        &[dir.join("a/ema_model/model.safetensors").to_str().unwrap()],
    );
    assert_eq!(keys.trim(), "39 model.embeddings.LayerNorm.bias True");
}

/// A trained (a few steps) generator in `dir/g/ema_model`.
fn trained_generator(dir: &Path) -> PathBuf {
    run_ok(&mut generator(dir, "g", 4, &["experiment.save_every=4", "experiment.generate_every=0"]));
    dir.join("g/ema_model")
}

fn sample(dir: &Path, out: &str, extra: &[&str]) -> Command {
    let mut c = bin("sftok-eval");
    c.current_dir(dir).args([
        "sample", "--generator", "g/ema_model", "--tokenizer", "tok", "--num", "32", "--per-proc-batch", "4", "--virtual-ranks", "2", "--device", "cpu",
        "--out", out,
    ]);
    c.args(extra);
    c
}

#[test]
fn two_sampling_processes_write_the_bytes_of_one_and_a_rerun_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    trained_generator(dir);
    let text = run_ok(&mut sample(dir, "one.npz", &["--keep-parts"]));
    assert!(text.contains("8 chunk(s) generated"), "{text}");
    // Two processes under torchrun (the real launcher: it sets RANK / WORLD_SIZE) into one output.
    let torchrun = sftok_testkit_tch::python_path().with_file_name("torchrun");
    let mut launch = Command::new(&torchrun);
    launch.current_dir(dir).args(["--nproc_per_node=2", "--no-python", "--"]);
    let s = sample(dir, "two.npz", &[]);
    launch.arg(s.get_program()).args(s.get_args()).env_remove("LD_LIBRARY_PATH");
    let text = run_ok(&mut launch);
    assert!(text.contains("rank 1: 4 chunk(s) generated") && text.contains("rank 0: 4 chunk(s) generated"), "{text}");
    let (one, two) = (std::fs::read(dir.join("one.npz")).unwrap(), std::fs::read(dir.join("two.npz")).unwrap());
    assert!(one == two, "1 process and 2 processes wrote different sample batches");
    assert!(!dir.join("two.npz.parts").exists(), "the parts are removed after the merge without --keep-parts");

    // numpy reads it; the sidecar's labels are class-balanced and follow the rows.
    let check = sftok_testkit_tch::run_python(
        "import sys, json, numpy as np; a = np.load(sys.argv[1]); x = a['arr_0']; j = json.load(open(sys.argv[1] + '.json'));\
         print(list(a.keys()), x.dtype, x.shape, sorted(np.bincount(j['labels']).tolist()))",
        &[dir.join("one.npz").to_str().unwrap()],
    );
    assert_eq!(check.trim(), format!("['arr_0'] uint8 (32, 64, 64, 3) {:?}", vec![32 / CLASSES; CLASSES]));

    // A killed run resumes: finished chunks are kept, the missing one is made again, same bytes.
    std::fs::remove_file(dir.join("one.npz")).unwrap();
    std::fs::remove_file(dir.join("one.npz.parts/chunk-000005.u8")).unwrap();
    let text = run_ok(&mut sample(dir, "one.npz", &["--keep-parts"]));
    assert!(text.contains("1 chunk(s) generated, 7 kept"), "{text}");
    assert!(std::fs::read(dir.join("one.npz")).unwrap() == one, "the resumed batch differs");

    // Other settings are not mixed into the same parts.
    let out = sample(dir, "one.npz", &["--guidance-scale", "2.0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one.npz.parts"), "{err}");

    // gFID smoke (random Inception weights: the numbers mean nothing, the plumbing is exercised):
    // FID, sFID, IS, P/R are reported, and so is how the samples were made.
    let report = run_ok(bin("sftok-eval").current_dir(dir).args(["gfid", "one.npz", "--ref", "one.npz", "--random-weights", "0", "--json", "--device", "cpu"]));
    let start = report.find('{').unwrap();
    let v: serde_json::Value = serde_json::from_str(&report[start..report.rfind('}').unwrap() + 1]).unwrap();
    assert!(v["fid"].as_f64().unwrap().is_finite() && v["precision"].is_number() && v["sfid"].is_number(), "{v}");
    assert_eq!(v["b_made_by"]["made_by"]["sampling"]["softmax_temperature_annealing"], true);
}

#[test]
fn bad_input_is_refused_naming_the_key_or_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let err = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(!o.status.success(), "{c:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Codebook sizes of tokenizer and generator disagree.
    let e = err(&mut generator(dir, "x", 2, &["model.vq_model.codebook_size=32"]));
    assert!(e.contains("codebook") && e.contains("model.vq_model.codebook_size"), "{e}");
    // A class id beyond condition_num_classes.
    let e = err(&mut generator(dir, "x", 2, &["model.img_generator.condition_num_classes=2"]));
    assert!(e.contains("condition_num_classes"), "{e}");
    // Proxy codes where tokens are expected.
    run_ok(bin("sftok-prep").current_dir(dir).args(["proxy-codes", "--teacher", "random:0", "--shards", "shards/train", "--out", "codes", "--views", "2", "--resize-shorter", "64", "--crop", "64", "--device", "cpu"]));
    let e = err(&mut generator(dir, "x", 2, &["dataset.params.pretokenization=codes"]));
    assert!(e.contains("sftok-prep tokenize"), "{e}");

    trained_generator(dir);
    // A --num the layout cannot split.
    let e = err(&mut sample(dir, "s.npz", &["--num", "30"]));
    assert!(e.contains("--num"), "{e}");
    // A truncated sample batch.
    run_ok(&mut sample(dir, "s.npz", &[]));
    let bytes = std::fs::read(dir.join("s.npz")).unwrap();
    std::fs::write(dir.join("cut.npz"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err(bin("sftok-eval").current_dir(dir).args(["gfid", "cut.npz", "--ref", "s.npz", "--random-weights", "0", "--device", "cpu"]));
    assert!(e.contains("cut.npz"), "{e}");
    // A reference without statistics or images.
    Command::new(sftok_testkit_tch::python_path()).current_dir(dir).args(["-c", "import numpy as np; np.savez('bad_ref.npz', other=np.zeros(3))"]).status().unwrap();
    let e = err(bin("sftok-eval").current_dir(dir).args(["gfid", "s.npz", "--ref", "bad_ref.npz", "--random-weights", "0", "--device", "cpu"]));
    assert!(e.contains("bad_ref.npz") && (e.contains("mu") || e.contains("arr_0")), "{e}");
}

/// `sftok-prep tokenize` encodes `--batch` consecutive views of a shard per call; the generator's
/// on-the-fly path (one call per micro-batch) gives the same ids for a micro-batch of those views.
#[test]
fn stored_tokens_equal_the_on_the_fly_tokens_of_the_same_views() {
    use sftok_model::eval::recon::ModelSpec;
    use sftok_model::eval::sample::TokenDecoder;
    use sftok_model::train::generator::{GeneratorOptions, GeneratorTask};
    use sftok_pipeline::batch::Batch;
    use sftok_pipeline::codes::ProxyCodeStore;
    use sftok_pipeline::transform::{decode_rgb, resize_view_into, resized_size};
    use sftok_pipeline::view::views_for;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir); // 8 images per shard, 2 views each, --batch 16: each shard is one encoder call
    let store = ProxyCodeStore::open(&dir.join("tokens/train")).unwrap();
    let (views, crop) = (store.meta().views_per_image, store.meta().image_size);
    assert!(store.meta().batching.starts_with("16 consecutive views"), "{:?}", store.meta());
    let shard = dir.join("shards/train/train-000000.tar");
    let stored = store.load_shard("train-000000.tar").unwrap().unwrap();

    // The shard's views in tokenize's order (images in shard order, views in view order).
    let mut batch = Batch { size: crop, ..Default::default() };
    let mut expected: Vec<i64> = Vec::new();
    sftok_pipeline::loader::tar_samples::for_each_sample(&shard, |s| {
        let img = decode_rgb(s.image.as_ref().unwrap())?;
        let (rw, rh) = resized_size(img.width, img.height, 64);
        for (i, v) in views_for(rw, rh, crop, views)?.into_iter().enumerate() {
            let mut px = vec![0u8; (crop * crop * 3) as usize];
            resize_view_into(&img, (rw, rh), crop, v, &mut px)?;
            batch.images.extend(px);
            batch.keys.push(s.key.clone());
            batch.labels.push(String::from_utf8(s.cls.clone().unwrap()).unwrap().trim().parse().unwrap());
            let row = stored.get(&s.key).unwrap()[i];
            assert_eq!((row.view_id as usize, row.view), (i, v));
            expected.extend(row.codes.iter().map(|&c| c as i64));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(batch.len(), 16);

    let spec = |p: &str| ModelSpec { checkpoint: dir.join(p), config: None, overrides: vec![], teacher: None, steps: None, seed: 0 };
    let cfg_path = common::repo().join("configs/tiny/sftok_tiny_maskgit.yaml");
    let overrides = ["dataset.params.pretokenization=".to_string(), format!("model.img_generator.condition_num_classes={CLASSES}")];
    let config = sftok_model::config::Config::load(&cfg_path, &overrides).unwrap();
    let tokenizer = TokenDecoder::load(&spec("tok"), tch::Device::Cpu).unwrap();
    let task = GeneratorTask::new(GeneratorOptions { config, device: tch::Device::Cpu, tokenizer: Some(tokenizer), init: None }).unwrap();
    let on_the_fly: Vec<i64> = Vec::try_from(task.targets(&batch, tch::Device::Cpu).unwrap().reshape([-1])).unwrap();
    assert_eq!(on_the_fly, expected, "on-the-fly ids differ from the stored ones for the same micro-batch");

    // The grouping matters (OptVQ's Sinkhorn is batch-wide): the same views in calls of 4.
    let quarter = |q: usize| {
        let per = (crop * crop * 3) as usize;
        let b = Batch { images: batch.images[q * 4 * per..(q + 1) * 4 * per].to_vec(), keys: batch.keys[q * 4..(q + 1) * 4].to_vec(), labels: batch.labels[q * 4..(q + 1) * 4].to_vec(), size: crop, ..Default::default() };
        Vec::<i64>::try_from(task.targets(&b, tch::Device::Cpu).unwrap().reshape([-1])).unwrap()
    };
    let regrouped: Vec<i64> = (0..4).flat_map(quarter).collect();
    let differing = regrouped.iter().zip(&expected).filter(|(a, b)| a != b).count();
    println!("encoded 4 views per call instead of 16: {differing} of {} ids differ", expected.len());
}
