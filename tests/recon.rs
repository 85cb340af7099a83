//! `sftok-eval recon` end to end: a tiny stage-1/2 model (fixture weights) + a seeded random
//! teacher on synth images; outputs checked with Python/PIL as an independent reader. Image size,
//! token count and codebook size come from the fixture's sidecar config.

mod common;

use common::run_ok;
use sftok_testkit_tch::{self as tk, Sidecar, python, repo_root as repo};
use std::path::Path;
use std::process::Command;

const TINY: &str = "sftok-tiny-stage12";

/// Writes the stage-1/2 fixture's weights + its config as a checkpoint directory, with Python;
/// the eval transform resizes the shorter side to the crop size.
fn tiny_checkpoint(dir: &Path) {
    let script = r#"
import sys, json
from safetensors.torch import load_file, save_file
weights, sidecar, out = sys.argv[1:4]
t = load_file(weights)
save_file({k[len("weights."):]: v.contiguous() for k, v in t.items() if k.startswith("weights.")}, out + "/model.safetensors")
side = json.load(open(sidecar))
cfg = side["config"]; cfg["model"]["size_tables"] = side["size_tables"]
pre = cfg["dataset"]["preprocessing"]
pre["resize_shorter_edge"] = pre["crop_size"]
json.dump(cfg, open(out + "/config.json", "w"))
"#;
    run_ok(python().arg("-c").arg(script).arg(tk::safetensors_path(TINY)).arg(tk::sidecar_path(TINY)).arg(dir));
}

/// Arguments: output dir, image count, image side (crop size), tokens per image, codebook size,
/// then the source images.
const CHECK: &str = r#"
import sys, json, numpy as np
from PIL import Image
out = sys.argv[1]; n, side, n_tokens, codebook = map(int, sys.argv[2:6]); sources = sys.argv[6:]
gap = 4  # grid layout: [original | reconstruction] rows, 4 px apart
grid = np.asarray(Image.open(out + "/grid.png").convert("RGB")).astype(np.float64)
rep = json.load(open(out + "/tokens.json"))
assert len(rep["images"]) == n, rep
assert grid.shape == (n * side + (n - 1) * gap, side * 2 + gap, 3), grid.shape
worst_mean, worst_max = 0, 0
for i, (item, src) in enumerate(zip(rep["images"], sources)):
    y0 = i * (side + gap)
    orig, rec = grid[y0:y0 + side, :side], grid[y0:y0 + side, side + gap:2 * side + gap]
    mse = ((orig - rec) / 255.0) ** 2
    psnr = -10 * np.log10(mse.mean())
    assert abs(psnr - item["psnr"]) < 1e-6, (psnr, item["psnr"])
    assert len(item["tokens"]) == n_tokens and all(0 <= t < codebook for t in item["tokens"]), item
    # The left column is the eval transform: PIL Resize(side, bicubic) + CenterCrop(side).
    im = Image.open(src).convert("RGB"); w, h = im.size
    nw, nh = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    im = im.resize((nw, nh), Image.BICUBIC)
    l, t = int(round((nw - side) / 2.0)), int(round((nh - side) / 2.0))
    ref = np.asarray(im.crop((l, t, l + side, t + side))).astype(np.float64)
    d = np.abs(ref - orig); worst_mean = max(worst_mean, d.mean()); worst_max = max(worst_max, d.max())
assert worst_mean <= 0.5 and worst_max <= 8, (worst_mean, worst_max)
print("OK", rep["mean_psnr"], worst_mean, worst_max)
"#;

#[test]
fn recon_writes_grid_tokens_and_psnr_that_an_independent_reader_confirms() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, data, out) = (tmp.path().join("ckpt"), tmp.path().join("data"), tmp.path().join("out"));
    std::fs::create_dir_all(&ckpt).unwrap();
    tiny_checkpoint(&ckpt);
    run_ok(Command::new(env!("CARGO_BIN_EXE_sftok-prep")).args(["synth", "--out", data.to_str().unwrap(), "--classes", "1", "--per-class", "1", "--val", "3"]));
    let imgs: Vec<String> = (1..=3).map(|i| data.join(format!("val/ILSVRC2012_val_{i:08}.JPEG")).display().to_string()).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sftok-eval"));
    cmd.args(["recon", "--checkpoint", ckpt.to_str().unwrap(), "--teacher", "random:0", "--device", "cpu", "--out", out.to_str().unwrap(), "--images"]);
    cmd.args(&imgs);
    let text = run_ok(&mut cmd);
    assert!(text.contains("mean PSNR"), "{text}");
    let side = Sidecar::load(TINY);
    let sizes = ["/config/dataset/preprocessing/crop_size", "/config/model/vq_model/num_latent_tokens", "/config/model/vq_model/codebook_size"]
        .map(|p| side.i64_at(p).to_string());
    let check = run_ok(python().arg("-c").arg(CHECK).arg(&out).arg(imgs.len().to_string()).args(&sizes).args(&imgs));
    assert!(check.contains("OK"), "{check}");
    // Same seed → same output; the decoding is stochastic but seeded.
    let first = std::fs::read(out.join("grid.png")).unwrap();
    run_ok(&mut cmd);
    assert_eq!(first, std::fs::read(out.join("grid.png")).unwrap());
}

#[test]
fn recon_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    tiny_checkpoint(&ckpt);
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sftok-eval"))
            .args(["recon", "--device", "cpu", "--out", tmp.path().join("o").to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--checkpoint", ckpt.to_str().unwrap(), "--teacher", "random:0", "--images", bad.to_str().unwrap()]);
    assert!(err.contains("broken.jpg") && err.contains("not a readable image"), "{err}");
    let some_img = repo().join("README.md"); // exists, irrelevant: config fails first
    let lone = tmp.path().join("lone.safetensors");
    std::fs::copy(ckpt.join("model.safetensors"), &lone).unwrap();
    let err = run(&["--checkpoint", lone.to_str().unwrap(), "--images", some_img.to_str().unwrap()]);
    assert!(err.contains("--config"), "{err}");
    let err = run(&["--checkpoint", ckpt.to_str().unwrap(), "--config", repo().join("configs/sftok_b64_stage1.yaml").to_str().unwrap(),
                    "--images", repo().join("README.md").to_str().unwrap()]);
    assert!(err.contains("README.md"), "{err}");
    let tiny_img = tmp.path().join("t.png");
    image::save_buffer(&tiny_img, &[0u8; 64 * 64 * 3], 64, 64, image::ExtendedColorType::Rgb8).unwrap();
    let err = run(&["--checkpoint", ckpt.to_str().unwrap(), "--config", repo().join("configs/sftok_b64_stage1.yaml").to_str().unwrap(),
                    "--images", tiny_img.to_str().unwrap()]);
    assert!(err.contains("does not match the model") && err.contains("with a different shape"), "{err}");
    let err = run(&["--checkpoint", ckpt.to_str().unwrap(), "--images", tiny_img.to_str().unwrap()]);
    assert!(err.contains("--teacher"), "{err}");
}
