//! `sftok-eval rfid`: its rFID and IS equal what `sftok-eval fid` (checked against the metric
//! fixtures) computes on the very images rfid saved — originals vs reconstructions rounded to 8 bits;
//! its codebook usage and entropy equal a recount of the tokens `sftok-eval recon` assigns them.

mod common;

use common::{bin, run_ok, shards};

#[test]
fn rfid_agrees_with_fid_on_the_saved_originals_and_reconstructions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let train = shards(d, 2, 5, 5);
    let ckpt = d.join("ckpt");
    run_ok(bin("sftok-train").args(["init", sftok_testkit_tch::repo_root().join("configs/tiny/sftok_tiny_stage1.yaml").to_str().unwrap(), "--out",
        ckpt.to_str().unwrap(), "--seed", "3"]));
    let saved = d.join("saved");
    let out = run_ok(bin("sftok-eval").args(["rfid", "--checkpoint", ckpt.to_str().unwrap(), "--teacher", "random:0", "--shards",
        train.to_str().unwrap(), "--random-weights", "0", "--float32", "--device", "cpu", "--batch", "4", "--num", "9", "--json",
        "--save-images", saved.to_str().unwrap()]));
    let json_start = out.find('{').unwrap();
    let r: serde_json::Value = serde_json::from_str(&out[json_start..out.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(r["images"], 9, "{out}");
    assert!(out.contains("MEANINGLESS") && out.contains("not comparable"), "{out}");
    let fid = run_ok(bin("sftok-eval").args(["fid", saved.join("originals").to_str().unwrap(), saved.join("reconstructions").to_str().unwrap(),
        "--random-weights", "0", "--device", "cpu", "--batch", "4", "--json"]));
    let f: serde_json::Value = serde_json::from_str(&fid[fid.find('{').unwrap()..fid.rfind('}').unwrap() + 1]).unwrap();
    let (a, b) = (r["rfid"].as_f64().unwrap(), f["fid"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "rfid {a} vs fid {b}");
    let is_b = f["b"]["inception_score_reference_evaluator"].as_f64().unwrap();
    assert!((r["inception_score"].as_f64().unwrap() - is_b).abs() < 1e-9);
    assert!(r["psnr"].as_f64().unwrap().is_finite());

    // Codebook usage and entropy (evaluation.md §1.7), recounted here from the token ids that
    // `recon` assigns to the saved originals in the same batches of 4 (tokens depend only on the
    // encoder's input; the PNGs are the evaluated pixels, at crop size, so the eval transform
    // leaves them as they are).
    let mut originals: Vec<_> = std::fs::read_dir(saved.join("originals")).unwrap().map(|e| e.unwrap().path()).collect();
    originals.sort();
    let rec = d.join("recon");
    run_ok(bin("sftok-eval").args(["recon", "--checkpoint", ckpt.to_str().unwrap(), "--teacher", "random:0", "--device", "cpu",
        "--batch", "4", "--out", rec.to_str().unwrap(), "--images"]).args(&originals));
    let tokens: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rec.join("tokens.json")).unwrap()).unwrap();
    let ids: Vec<i64> = tokens["images"].as_array().unwrap().iter()
        .flat_map(|i| i["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap())).collect();
    assert_eq!(ids.len(), 9 * 8, "8 tokens per image");
    let mut counts = std::collections::BTreeMap::new();
    for id in &ids {
        *counts.entry(*id).or_insert(0usize) += 1;
    }
    let codebook_size = 64.0; // model.vq_model.codebook_size of configs/tiny
    let usage = r["codebook_usage"].as_f64().unwrap();
    assert!(usage > 0.0 && usage <= 1.0, "{out}");
    assert_eq!(usage, counts.len() as f64 / codebook_size, "{out}");
    let entropy = r["codebook_entropy_bits"].as_f64().unwrap();
    assert!((0.0..=codebook_size.log2()).contains(&entropy), "{out}");
    let n = ids.len() as f64;
    let expected: f64 = counts.values().map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum();
    assert!((entropy - expected).abs() < 1e-5, "entropy {entropy} vs {expected} recounted");
}

#[test]
fn fid_reads_webdataset_shards_with_the_eval_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let train = shards(tmp.path(), 2, 3, 3);
    let t = train.to_str().unwrap();
    let out = run_ok(bin("sftok-eval").args(["fid", t, t, "--random-weights", "0", "--device", "cpu", "--batch", "4", "--json"]));
    let j: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..out.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(j["a"]["images"], 6, "{out}");
    assert!(j["fid"].as_f64().unwrap().abs() < 1e-4, "identical sets must give FID ≈ 0: {out}");
    // A damaged shard is an error naming it, not a silently smaller FID.
    let shard = train.join("train-000000.tar");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let o = bin("sftok-eval").args(["fid", t, t, "--random-weights", "0", "--device", "cpu"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("train-000000.tar"), "{}", String::from_utf8_lossy(&o.stderr));
}
