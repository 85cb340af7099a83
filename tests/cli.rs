//! End-to-end tests of the built binaries (foundation: libtorch linking, synth, configs).

mod common;

use common::{bin, run as run_ok};
use sftok_testkit_tch::repo_root as repo;
use std::path::Path;
use std::process::Command;

#[test]
fn every_binary_runs_a_tch_computation_without_ld_library_path() {
    for name in ["sftok-prep", "sftok-train", "sftok-eval"] {
        let out = run_ok(bin(name).args(["doctor", "--device", "cpu"]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("doctor: ok") && text.contains("matmul f32 error"), "{name}: {text}");
    }
}

#[test]
fn binaries_need_no_ld_library_path_because_they_carry_an_rpath() {
    let out = Command::new("readelf").args(["-d", env!("CARGO_BIN_EXE_sftok-prep")]).output();
    let Ok(out) = out else { return }; // readelf absent: the run test above still covers it
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RUNPATH") || text.contains("RPATH"), "{text}");
    assert!(text.contains("libtorch_cpu.so"), "{text}");
}

fn dir_bytes(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                files.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn synth_is_byte_identical_for_a_seed_and_imagenet_shaped() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let args = |out: &Path, seed: &str| {
        vec!["synth".into(), "--out".into(), out.display().to_string(), "--classes".into(), "4".into(),
             "--per-class".into(), "12".into(), "--val".into(), "16".into(), "--seed".into(), seed.to_string()]
    };
    run_ok(bin("sftok-prep").args(args(&a, "3")).env("RAYON_NUM_THREADS", "2"));
    run_ok(bin("sftok-prep").args(args(&b, "3")).env("RAYON_NUM_THREADS", "1"));
    run_ok(bin("sftok-prep").args(args(&c, "4")));
    let (fa, fb, fc) = (dir_bytes(&a), dir_bytes(&b), dir_bytes(&c));
    assert_eq!(fa.len(), 4 * 12 + 16 + 2);
    assert!(fa == fb, "same seed, different thread count: outputs differ");
    assert!(fa != fc, "different seeds gave identical trees");

    // Layout: train/<synset>/<synset>_<id>.JPEG, val/ILSVRC2012_val_XXXXXXXX.JPEG, label files.
    let names: Vec<&str> = fa.iter().map(|f| f.0.as_str()).collect();
    assert!(names.contains(&"LOC_synset_mapping.txt") && names.contains(&"LOC_val_solution.csv"));
    assert!(names.contains(&"val/ILSVRC2012_val_00000016.JPEG"));
    let train: Vec<&&str> = names.iter().filter(|n| n.starts_with("train/")).collect();
    assert_eq!(train.len(), 48);
    for n in &train {
        let parts: Vec<&str> = n.split('/').collect();
        assert!(parts[2].starts_with(&format!("{}_", parts[1])) && parts[2].ends_with(".JPEG"), "{n}");
    }
    // Every JPEG decodes (with the image crate, an independent decoder) at its stated size.
    for (name, bytes) in fa.iter().filter(|f| f.0.ends_with(".JPEG")) {
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "{name}");
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).expect(name);
        assert!(img.width() >= 1 && img.height() >= 1);
    }
    // Val labels: header, one row per val image, first token of each prediction = a known synset.
    let csv = String::from_utf8(fa.iter().find(|f| f.0 == "LOC_val_solution.csv").unwrap().1.clone()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ImageId,PredictionString"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 16);
    for row in rows {
        let (id, pred) = row.split_once(',').unwrap();
        assert!(id.starts_with("ILSVRC2012_val_"));
        let toks: Vec<&str> = pred.split(' ').collect();
        assert_eq!(toks.len() % 5, 0, "{row}");
        assert!(toks[0].starts_with('n') && toks[0].len() == 9, "{row}");
    }
}

#[test]
fn synth_jpegs_average_like_imagenet() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fake");
    run_ok(bin("sftok-prep").args(["synth", "--out", out.to_str().unwrap(), "--classes", "10", "--per-class", "10",
                                   "--val", "0", "--seed", "0"]));
    let files = dir_bytes(&out);
    let jpegs: Vec<usize> = files.iter().filter(|f| f.0.ends_with(".JPEG")).map(|f| f.1.len()).collect();
    let mean_kb = jpegs.iter().sum::<usize>() as f64 / jpegs.len() as f64 / 1024.0;
    assert!((80.0..=150.0).contains(&mean_kb), "mean JPEG size {mean_kb:.1} KB outside 80–150 KB");
}

#[test]
fn every_shipped_config_parses() {
    let mut n = 0;
    for dir in ["configs", "configs/tiny"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let out = run_ok(bin("sftok-train").arg("config").arg(&p));
                assert!(String::from_utf8_lossy(&out.stdout).contains("per_gpu_batch_size"));
                n += 1;
            }
        }
    }
    assert!(n >= 9, "expected the 7 reference configs and the tiny ones, found {n}");
}

#[test]
fn shipped_configs_carry_the_reference_values_with_the_spec_fixes() {
    let show = |file: &str, ov: &[&str]| -> String {
        String::from_utf8(run_ok(bin("sftok-train").arg("config").arg(repo().join(file)).args(ov)).stdout).unwrap()
    };
    let s1 = show("configs/sftok_b64_stage1.yaml", &[]);
    assert!(s1.contains("single_step_generation: true") && s1.contains("max_train_steps: 200000"), "{s1}");
    let s2 = show("configs/sftok_b64_stage2.yaml", &[]);
    assert!(s2.contains("guided_mask: true") && s2.contains("max_train_steps: 800000") && s2.contains("replace_prob: 1.0"));
    let l3 = show("configs/sftok_l64_stage3.yaml", &[]);
    assert!(l3.contains("vit_dec_model_size: large") && l3.contains("finetune_decoder: true") && l3.contains("beta2: 0.999"));
    let g = show("configs/sftok_maskgit.yaml", &["optimizer.params.learning_rate=3e-4"]);
    assert!(g.contains("image_seq_len: 64") && g.contains("learning_rate: 0.0003"), "{g}");
}

#[test]
fn unknown_override_is_a_clear_error() {
    let out = bin("sftok-train")
        .args(["config", repo().join("configs/sftok_b64_stage1.yaml").to_str().unwrap(), "training.no_such_key=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown config key `training.no_such_key`") && err.contains("did you mean `training."), "{err}");
    assert!(err.contains("sftok_b64_stage1.yaml"), "{err}");
}

#[test]
fn help_shows_an_example_for_every_command() {
    for (b, sub) in [("sftok-prep", "synth"), ("sftok-prep", "doctor"), ("sftok-train", "config"), ("sftok-eval", "doctor")] {
        let out = run_ok(bin(b).args([sub, "--help"]));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Example:"), "{b} {sub}");
    }
}
