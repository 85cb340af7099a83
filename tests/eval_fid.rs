//! End-to-end `sftok-eval fid` on tiny inputs with the fid-inception-f16 fixture's weights
//! (float16 safetensors under pytorch-fid's key names, upcast on load): every input kind, the
//! report, --save-stats read back by numpy, bad images, and the refusals. Feature widths (pool3,
//! the sFID tap) come from the fixture's sidecar.

mod common;

use sftok_testkit_tch::{Sidecar, python};
use std::path::Path;
use std::process::{Command, Output};

const FX: &str = "fid-inception-f16";

fn eval(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sftok-eval"));
    cmd.env_remove("LD_LIBRARY_PATH").arg("fid").args(args).args(["--device", "cpu", "--batch", "4"]);
    cmd.output().expect("spawn sftok-eval")
}

fn ok_json(args: &[&str]) -> (serde_json::Value, String) {
    let out = eval(&[args, &["--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sftok-eval fid {args:?} failed:\n{stderr}");
    (serde_json::from_slice(&out.stdout).expect("JSON report"), stderr)
}

fn failure(args: &[&str]) -> String {
    let out = eval(args);
    assert!(!out.status.success(), "sftok-eval fid {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// 6 PNGs per set (32×32 noise on a per-image colour) and the same images of set A as an
/// ADM sample batch `a.npz` (numpy writes it).
fn write_images(dir: &Path) {
    let py = r#"
import sys, os, numpy as np
from PIL import Image
d = sys.argv[1]
rng = np.random.default_rng(3)
for name, base in (("A", 60), ("B", 150)):
    os.makedirs(os.path.join(d, name))
    imgs = []
    for i in range(6):
        img = np.clip(base + 40 * i % 97 + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(d, name, "%03d.png" % i))
        imgs.append(img)
    if name == "A":
        np.savez(os.path.join(d, "a.npz"), arr_0=np.stack(imgs))
"#;
    let out = python().arg("-c").arg(py).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fid_end_to_end_with_fixture_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let weights = d.join("inception.safetensors");
    common::write_fid_fixture_weights(&weights);
    write_images(d);
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    let w = p("inception.safetensors");

    // A folder against the very same images as an .npz sample batch: every metric must say
    // "identical" — FID and sFID ≈ 0, precision = recall = 1, equal Inception Scores.
    let (same, stderr) = ok_json(&[&p("A"), &p("a.npz"), "--weights", &w, "--save-stats", &p("a_stats.npz")]);
    assert!(stderr.contains("WARNING") && stderr.contains("50000"), "small-N warning missing:\n{stderr}");
    let fid = same["fid"].as_f64().unwrap();
    let sfid = same["sfid"].as_f64().unwrap();
    println!("identical sets: fid {fid:e}, sfid {sfid:e}");
    assert!(fid.abs() < 1e-3 && sfid.abs() < 1e-3, "identical sets: fid {fid}, sfid {sfid}");
    assert_eq!(same["precision"].as_f64(), Some(1.0));
    assert_eq!(same["recall"].as_f64(), Some(1.0));
    let is = |v: &serde_json::Value, side: &str| v[side]["inception_score_adm"].as_f64().unwrap();
    assert!((is(&same, "a") - is(&same, "b")).abs() < 1e-9);
    assert_eq!(same["a"]["images"].as_u64(), Some(6));

    // Two different sets, then the same comparison from A's saved statistics: same FID.
    let (diff, _) = ok_json(&[&p("A"), &p("B"), "--weights", &w]);
    let fid_ab = diff["fid"].as_f64().unwrap();
    assert!(fid_ab > 1.0, "different sets should be far apart, got {fid_ab}");
    let (from_stats, _) = ok_json(&[&p("a_stats.npz"), &p("B"), "--weights", &w]);
    let fid_stats = from_stats["fid"].as_f64().unwrap();
    assert!((fid_stats - fid_ab).abs() <= 1e-9 * fid_ab, "{fid_stats} vs {fid_ab}");
    assert!(from_stats["sfid"].is_f64() && from_stats["precision"].is_null(), "{from_stats}");

    // --save-stats is ADM's layout, float64, readable by numpy; widths: pool3 and the sFID tap.
    let check = r#"
import sys, numpy as np
d, d_s = int(sys.argv[2]), int(sys.argv[3])
with np.load(sys.argv[1]) as f:
    assert sorted(f.files) == ["mu", "mu_s", "sigma", "sigma_s"], f.files
    assert f["mu"].shape == (d,) and f["sigma"].shape == (d, d), f["sigma"].shape
    assert f["mu_s"].shape == (d_s,) and f["sigma_s"].shape == (d_s, d_s)
    assert all(f[k].dtype == np.float64 for k in f.files)
    assert np.allclose(f["sigma"], f["sigma"].T)
print("ok")
"#;
    let side = Sidecar::load(FX);
    let (width, width_s) = (side.dim("expect.tf1.pool3_f64", 1), side.dim("expect.tf1.spatial_mixed6d_f64", 1));
    let out = python().arg("-c").arg(check).arg(p("a_stats.npz")).arg(width.to_string()).arg(width_s.to_string()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // An unreadable image is an error naming it; --skip-bad counts it.
    std::fs::write(d.join("B/zzz_broken.png"), b"not a png").unwrap();
    let err = failure(&[&p("A"), &p("B"), "--weights", &w]);
    assert!(err.contains("zzz_broken.png") && err.contains("--skip-bad"), "{err}");
    let (skipped, stderr) = ok_json(&[&p("A"), &p("B"), "--weights", &w, "--skip-bad"]);
    assert_eq!(skipped["b"]["skipped"].as_u64(), Some(1));
    assert!(stderr.contains("skipped 1 unreadable"), "{stderr}");
    assert_eq!(skipped["fid"].as_f64(), diff["fid"].as_f64());

    // Random weights are labelled as meaningless in the table.
    let out = eval(&[&p("A"), &p("B"), "--random-weights", "0", "--skip-bad"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("RANDOM WEIGHTS: meaningless"));
}

#[test]
fn fid_refuses_without_weights_and_names_a_missing_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("imgs");
    std::fs::create_dir(&img).unwrap();
    image::RgbImage::new(8, 8).save(img.join("x.png")).unwrap();
    let i = img.to_str().unwrap();
    let err = failure(&[i, i]);
    assert!(err.contains("pt_inception-2015-12-05-6726825d.pth") && err.contains("safetensors"), "{err}");
    let err = failure(&[i, i, "--weights", "pt_inception-2015-12-05-6726825d.pth"]);
    assert!(err.contains("pt_inception-2015-12-05-6726825d.pth") && err.contains("check the path"), "{err}");
}
