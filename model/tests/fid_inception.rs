//! FID Inception parity against the `fid-inception-f16` fixture (reference code, random float16
//! weights): both input pipelines, the trunk taps, pool3 and the sFID tap, float32 and float64;
//! plus the key set of spec/keys/fid-inception.json and the loader's errors.

mod common;

use common::{assert_close_atol as assert_close, load_fixture, fixtures, get, tolerance};
use sftok_model::inception::{FidInception, FidInceptionConfig, InputPipeline, load_inception};
use std::collections::{BTreeSet, HashMap};
use tch::{Device, Kind, Tensor};

const FX: &str = "fid-inception-f16";

/// The fixture's `weights.*` (float16) under their state-dict names, plus an `fc` the fixture
/// does not store (pool3 does not depend on it).
fn fixture_state_dict(fx: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut sd: Vec<(String, Tensor)> = fx
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("weights.").map(|name| (name.to_string(), v.shallow_clone())))
        .collect();
    assert!(sd.iter().all(|(_, t)| t.kind() == Kind::Half), "fixture weights are float16");
    sd.push(("fc.weight".into(), Tensor::zeros([1008, 2048], (Kind::Half, Device::Cpu))));
    sd.push(("fc.bias".into(), Tensor::zeros([1008], (Kind::Half, Device::Cpu))));
    sd
}

fn net(fx: &HashMap<String, Tensor>, kind: Kind) -> FidInception {
    let mut net = FidInception::new(FidInceptionConfig::default(), Device::Cpu, kind).unwrap();
    net.load_tensors(fixture_state_dict(fx), FX).unwrap();
    net
}

fn check(name: &str, got: &Tensor, fx: &HashMap<String, Tensor>, key: &str) {
    assert_close(name, got, get(fx, key), tolerance(FX, key));
}

#[test]
fn pytorch_fid_pipeline_matches_fixture() {
    let fx = load_fixture(FX);
    let net = net(&fx, Kind::Float);
    let images = get(&fx, "input.images_u8_nhwc");
    let x = net.preprocess(images, InputPipeline::PytorchFid);
    check("pytorch_fid.resized_img0", &x.narrow(0, 0, 1), &fx, "expect.pytorch_fid.resized_img0");
    let out = net.forward(&x);
    for (i, tap) in ["block0_mean", "block1_mean", "block2_mean"].iter().enumerate() {
        let key = format!("expect.pytorch_fid.{tap}");
        check(&key, &out.block_means[i], &fx, &key);
    }
    check("pytorch_fid.pool3", &out.pool3, &fx, "expect.pytorch_fid.pool3");
}

#[test]
fn tf1_pipeline_matches_fixture_in_float32_and_float64() {
    let fx = load_fixture(FX);
    let images = get(&fx, "input.images_u8_nhwc");
    for (kind, suffix) in [(Kind::Float, "f32"), (Kind::Double, "f64")] {
        let net = net(&fx, kind);
        assert_eq!(net.kind(), kind);
        let x = net.preprocess(images, InputPipeline::Tf1);
        assert_eq!(x.kind(), kind);
        if kind == Kind::Float {
            check("tf1.resized_img0_f32", &x.narrow(0, 0, 1), &fx, "expect.tf1.resized_img0_f32");
        }
        let out = net.forward(&x);
        for (i, tap) in ["feat64", "feat192", "feat768"].iter().enumerate() {
            let key = format!("expect.tf1.{tap}_{suffix}");
            check(&key, &out.block_means[i], &fx, &key);
        }
        let key = format!("expect.tf1.pool3_{suffix}");
        check(&key, &out.pool3, &fx, &key);
        let key = format!("expect.tf1.spatial_mixed6d_{suffix}");
        check(&key, &out.spatial, &fx, &key);
        assert_eq!(out.logits_unbiased.size(), [4, 1008]);
    }
}

#[test]
fn parameter_names_are_the_spec_key_list() {
    let path = fixtures().join("../spec/keys/fid-inception.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys = json.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_else(|| {
        json["keys"].as_object().expect("key → shape map").keys().cloned().collect()
    });
    let spec: BTreeSet<String> = keys.into_iter().filter(|k| !k.ends_with("num_batches_tracked")).collect();
    assert_eq!(spec.len(), 472);
    // Loading exactly the spec's keys (shapes from the spec) must succeed …
    let shapes = |k: &str| -> Vec<i64> {
        let v = json.get(k).or_else(|| json["keys"].get(k)).unwrap();
        let arr = v.as_array().or_else(|| v["shape"].as_array()).expect("shape list");
        arr.iter().map(|d| d.as_i64().unwrap()).collect()
    };
    let sd: Vec<(String, Tensor)> =
        spec.iter().map(|k| (k.clone(), Tensor::zeros(shapes(k), (Kind::Float, Device::Cpu)))).collect();
    let mut net = FidInception::new(FidInceptionConfig::default(), Device::Cpu, Kind::Float).unwrap();
    net.load_tensors(sd, "spec keys").unwrap();
    // … and a missing key must be named.
    let fx = load_fixture(FX);
    let sd: Vec<(String, Tensor)> =
        fixture_state_dict(&fx).into_iter().filter(|(k, _)| k != "Mixed_6d.branch7x7_2.conv.weight").collect();
    let err = net.load_tensors(sd, "partial").unwrap_err().to_string();
    assert!(err.contains("Mixed_6d.branch7x7_2.conv.weight") && err.contains("1 missing"), "{err}");
}

#[test]
fn num_batches_tracked_is_optional_and_the_legacy_pth_format_loads() {
    let fx = load_fixture(FX);
    let mut sd = fixture_state_dict(&fx);
    sd.push(("Conv2d_1a_3x3.bn.num_batches_tracked".into(), Tensor::from(0i64)));
    let mut net = FidInception::new(FidInceptionConfig::default(), Device::Cpu, Kind::Float).unwrap();
    net.load_tensors(sd, "with counters").unwrap();
    let err = load_inception("pt_inception-2015-12-05-6726825d.pth".as_ref(), Device::Cpu, Kind::Float)
        .err()
        .expect("a missing file must fail")
        .to_string();
    assert!(err.contains("pt_inception-2015-12-05-6726825d.pth") && err.contains("torch.load"), "{err}");

    // pytorch-fid's weights file predates torch 1.6: the legacy format, written here by Python torch
    // from the fixture's weights (with the counters pytorch-fid's file has), must load and give the
    // same network as the safetensors copy.
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("inception_legacy.pth");
    let script = r#"
import sys, torch
from safetensors.torch import load_file
sd = {k[len("weights."):]: v.float() for k, v in load_file(sys.argv[1]).items() if k.startswith("weights.")}
sd.update({k.rsplit(".", 1)[0] + ".num_batches_tracked": torch.tensor(0) for k in list(sd) if k.endswith("bn.running_mean")})
sd["fc.weight"] = torch.zeros(1008, 2048); sd["fc.bias"] = torch.zeros(1008)  # as in fixture_state_dict
torch.save(sd, sys.argv[2], _use_new_zipfile_serialization=False)
"#;
    let out = std::process::Command::new(common::python_path())
        .arg("-c")
        .arg(script)
        .arg(fixtures().join(FX).join(format!("{FX}.safetensors")))
        .arg(&pth)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_pth = load_inception(&pth, Device::Cpu, Kind::Float).unwrap();
    let mut from_fx = FidInception::new(FidInceptionConfig::default(), Device::Cpu, Kind::Float).unwrap();
    from_fx.load_tensors(fixture_state_dict(&fx), "fixture").unwrap();
    let x = get(&fx, "input.images_u8_nhwc").narrow(0, 0, 1);
    let (a, b) = (from_pth.features(&x, InputPipeline::PytorchFid), from_fx.features(&x, InputPipeline::PytorchFid));
    assert!(a.pool3.equal(&b.pool3), "legacy .pth and safetensors give different features");
}
