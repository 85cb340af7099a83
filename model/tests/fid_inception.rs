//! FID Inception parity against the `fid-inception-f16` fixture (reference code, random float16
//! weights): both input pipelines, the trunk taps, pool3 and the sFID tap, float32 and float64;
//! plus the key set of spec/keys/fid-inception.json and the loader's errors. Image counts and
//! feature widths come from the fixture (its inputs and the sidecar's `tensors`).

use sftok_model::device::cpu;
use sftok_model::inception::{FidInception, FidInceptionConfig, InputPipeline, load_inception};
use sftok_testkit_tch::{self as tk, Fixture};
use std::collections::BTreeSet;
use tch::{Device, Kind, Tensor};

const FX: &str = "fid-inception-f16";

/// The fixture's `weights.*` (float16) under their state-dict names, plus an `fc` the fixture
/// does not store (pool3 does not depend on it): `[num_classes, pool3 width]`.
fn fixture_state_dict(fx: &Fixture) -> Vec<(String, Tensor)> {
    let mut sd = fx.with_prefix("weights.");
    assert!(sd.iter().all(|(_, t)| t.kind() == Kind::Half), "fixture weights are float16");
    let classes = FidInceptionConfig::default().num_classes;
    let width = fx.side.dim("expect.pytorch_fid.pool3", 1);
    sd.push(("fc.weight".into(), Tensor::zeros([classes, width], (Kind::Half, Device::Cpu))));
    sd.push(("fc.bias".into(), Tensor::zeros([classes], (Kind::Half, Device::Cpu))));
    sd
}

fn net(fx: &Fixture, kind: Kind) -> FidInception {
    let mut net = FidInception::new(FidInceptionConfig::default(), cpu().unwrap(), kind).unwrap();
    net.load_tensors(fixture_state_dict(fx), FX).unwrap();
    net
}

fn check(got: &Tensor, fx: &Fixture, key: &str) {
    fx.assert_close(key, got);
}

/// The first images of a batch, as many as the fixture's expected tensor `key` holds
/// (`resized_img0`: the first image only).
fn leading(x: &Tensor, fx: &Fixture, key: &str) -> Tensor {
    x.narrow(0, 0, fx.side.dim(key, 0))
}

#[test]
fn pytorch_fid_pipeline_matches_fixture() {
    let fx = Fixture::load(FX);
    let net = net(&fx, Kind::Float);
    let images = fx.get("input.images_u8_nhwc");
    let x = net.preprocess(images, InputPipeline::PytorchFid);
    let key = "expect.pytorch_fid.resized_img0";
    check(&leading(&x, &fx, key), &fx, key);
    let out = net.forward(&x);
    for (i, tap) in ["block0_mean", "block1_mean", "block2_mean"].iter().enumerate() {
        check(&out.block_means[i], &fx, &format!("expect.pytorch_fid.{tap}"));
    }
    check(&out.pool3, &fx, "expect.pytorch_fid.pool3");
}

#[test]
fn tf1_pipeline_matches_fixture_in_float32_and_float64() {
    let fx = Fixture::load(FX);
    let images = fx.get("input.images_u8_nhwc");
    for (kind, suffix) in [(Kind::Float, "f32"), (Kind::Double, "f64")] {
        let net = net(&fx, kind);
        assert_eq!(net.kind(), kind);
        let x = net.preprocess(images, InputPipeline::Tf1);
        assert_eq!(x.kind(), kind);
        if kind == Kind::Float {
            let key = "expect.tf1.resized_img0_f32";
            check(&leading(&x, &fx, key), &fx, key);
        }
        let out = net.forward(&x);
        for (i, tap) in ["feat64", "feat192", "feat768"].iter().enumerate() {
            check(&out.block_means[i], &fx, &format!("expect.tf1.{tap}_{suffix}"));
        }
        check(&out.pool3, &fx, &format!("expect.tf1.pool3_{suffix}"));
        check(&out.spatial, &fx, &format!("expect.tf1.spatial_mixed6d_{suffix}"));
        assert_eq!(out.logits_unbiased.size(), [images.size()[0], FidInceptionConfig::default().num_classes]);
    }
}

#[test]
fn parameter_names_are_the_spec_key_list() {
    let path = tk::spec_dir().join("keys/fid-inception.json");
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
    let mut net = FidInception::new(FidInceptionConfig::default(), cpu().unwrap(), Kind::Float).unwrap();
    net.load_tensors(sd, "spec keys").unwrap();
    // … and a missing key must be named.
    let fx = Fixture::load(FX);
    let sd: Vec<(String, Tensor)> =
        fixture_state_dict(&fx).into_iter().filter(|(k, _)| k != "Mixed_6d.branch7x7_2.conv.weight").collect();
    let err = net.load_tensors(sd, "partial").unwrap_err().to_string();
    assert!(err.contains("Mixed_6d.branch7x7_2.conv.weight") && err.contains("1 missing"), "{err}");
}

#[test]
fn num_batches_tracked_is_optional_and_the_legacy_pth_format_loads() {
    let fx = Fixture::load(FX);
    let mut sd = fixture_state_dict(&fx);
    sd.push(("Conv2d_1a_3x3.bn.num_batches_tracked".into(), Tensor::from(0i64)));
    let mut net = FidInception::new(FidInceptionConfig::default(), cpu().unwrap(), Kind::Float).unwrap();
    net.load_tensors(sd, "with counters").unwrap();
    let err = load_inception("pt_inception-2015-12-05-6726825d.pth".as_ref(), cpu().unwrap(), Kind::Float)
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
classes, width = int(sys.argv[3]), int(sys.argv[4])
sd["fc.weight"] = torch.zeros(classes, width); sd["fc.bias"] = torch.zeros(classes)  # as in fixture_state_dict
torch.save(sd, sys.argv[2], _use_new_zipfile_serialization=False)
"#;
    let (classes, width) = (FidInceptionConfig::default().num_classes, fx.side.dim("expect.pytorch_fid.pool3", 1));
    let fixture = tk::safetensors_path(FX);
    tk::run_python(script, &[fixture.to_str().unwrap(), pth.to_str().unwrap(), &classes.to_string(), &width.to_string()]);
    let from_pth = load_inception(&pth, cpu().unwrap(), Kind::Float).unwrap();
    let mut from_fx = FidInception::new(FidInceptionConfig::default(), cpu().unwrap(), Kind::Float).unwrap();
    from_fx.load_tensors(fixture_state_dict(&fx), "fixture").unwrap();
    let x = fx.get("input.images_u8_nhwc").narrow(0, 0, 1);
    let (a, b) = (from_pth.features(&x, InputPipeline::PytorchFid), from_fx.features(&x, InputPipeline::PytorchFid));
    assert!(a.pool3.equal(&b.pool3), "legacy .pth and safetensors give different features");
}
