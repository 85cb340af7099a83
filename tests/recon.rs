//! `sftok-eval recon` end to end: a tiny stage-1/2 model (fixture weights) + a seeded random
//! teacher on synth images; outputs checked with Python/PIL as an independent reader.

mod common;

use common::{python, repo, run_ok};
use std::path::Path;
use std::process::Command;

/// Writes the stage-1/2 fixture's weights + its config as a checkpoint directory, with Python.
fn tiny_checkpoint(dir: &Path) {
    let script = r#"
import sys, json
from safetensors.torch import load_file, save_file
fx = sys.argv[1]; out = sys.argv[2]
t = load_file(fx + "/sftok-tiny-stage12.safetensors")
save_file({k[8:]: v.contiguous() for k, v in t.items() if k.startswith("weights.")}, out + "/model.safetensors")
side = json.load(open(fx + "/sftok-tiny-stage12.json"))
cfg = side["config"]; cfg["model"]["size_tables"] = side["size_tables"]
cfg["dataset"]["preprocessing"].update({"resize_shorter_edge": 64})
json.dump(cfg, open(out + "/config.json", "w"))
"#;
    let fx = repo().join("../shared/fixtures/sftok-tiny-stage12");
    run_ok(python().arg("-c").arg(script).arg(&fx).arg(dir));
}

const CHECK: &str = r#"
import sys, json, numpy as np
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2]); sources = sys.argv[3:]
grid = np.asarray(Image.open(out + "/grid.png").convert("RGB")).astype(np.float64)
rep = json.load(open(out + "/tokens.json"))
assert len(rep["images"]) == n, rep
assert grid.shape == (n * 64 + (n - 1) * 4, 64 * 2 + 4, 3), grid.shape
worst_mean, worst_max = 0, 0
for i, (item, src) in enumerate(zip(rep["images"], sources)):
    y0 = i * 68
    orig, rec = grid[y0:y0 + 64, :64], grid[y0:y0 + 64, 68:132]
    mse = ((orig - rec) / 255.0) ** 2
    psnr = -10 * np.log10(mse.mean())
    assert abs(psnr - item["psnr"]) < 1e-6, (psnr, item["psnr"])
    assert len(item["tokens"]) == 8 and all(0 <= t < 64 for t in item["tokens"]), item
    # The left column is the eval transform: PIL Resize(64, bicubic) + CenterCrop(64).
    im = Image.open(src).convert("RGB"); w, h = im.size; s = min(w, h)
    nw, nh = (64, int(64 * h / w)) if w <= h else (int(64 * w / h), 64)
    im = im.resize((nw, nh), Image.BICUBIC)
    l, t = int(round((nw - 64) / 2.0)), int(round((nh - 64) / 2.0))
    ref = np.asarray(im.crop((l, t, l + 64, t + 64))).astype(np.float64)
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
    let check = run_ok(python().arg("-c").arg(CHECK).arg(&out).arg("3").args(&imgs));
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
    let some_img = repo().join("../shared/fixtures/README.md"); // exists, irrelevant: config fails first
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
