//! MaskGIT-VQGAN teacher vs ../shared/fixtures/maskgit-vqgan-tiny (reference outputs); sizes from
//! the sidecar (`config`, `quantizer`, `tensors`).

use sftok_model::device::cpu;
use sftok_model::checkpoint::{self, StateDict};
use sftok_model::conv_layout;
use sftok_model::vqgan::{MaskgitVqgan, VqganConfig};
use sftok_testkit_tch::{self as tk, Sidecar};
use tch::nn::{self, Module};
use tch::{Device, Kind};

fn tiny_config(side: &Sidecar) -> VqganConfig {
    let i = |k: &str| side.i64_at(&format!("/config/{k}"));
    VqganConfig {
        num_channels: i("num_channels"),
        hidden_channels: i("hidden_channels"),
        channel_mult: side.at("/config/channel_mult").as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect(),
        num_res_blocks: i("num_res_blocks"),
        z_channels: i("z_channels"),
        num_embeddings: side.i64_at("/quantizer/num_embeddings"),
    }
}

/// The teacher against the fixture: `channels_last` converts its conv weights first, as a CUDA
/// device does (`conv_layout`), so the layout the GPU runs is checked here on the CPU.
fn teacher_matches_the_reference(channels_last: bool) {
    let fx = tk::Fixture::load("maskgit-vqgan-tiny");
    let vs = nn::VarStore::new(cpu().unwrap());
    let model = MaskgitVqgan::new(&vs.root(), &tiny_config(&fx.side));
    let sd = StateDict { tensors: fx.with_prefix("weights.") };
    // Strict: exactly the reference's keys, as many as the sidecar lists.
    assert_eq!(sd.tensors.len(), fx.side.tensor_names("weights.").len());
    assert_eq!(vs.variables().len(), sd.tensors.len());
    if channels_last {
        let n = conv_layout::to_channels_last(&vs, "").unwrap();
        assert_eq!(n, vs.variables().values().filter(|t| t.dim() == 4).count());
    }
    checkpoint::load_into(&vs, &sd, true).unwrap();
    // Loading copies into the weights, which keeps their layout (a 1×1 kernel is both layouts at once).
    let convs: Vec<tch::Tensor> = vs.variables().into_values().filter(|t| t.dim() == 4).collect();
    assert!(convs.iter().all(|t| if channels_last { conv_layout::is_channels_last(t) } else { t.is_contiguous() }));
    assert!(channels_last || convs.iter().any(|t| !conv_layout::is_channels_last(t)));

    let x = fx.get("input.x");
    let feats = tch::no_grad(|| model.encoder.forward(x));
    if channels_last {
        assert!(conv_layout::is_channels_last(&feats), "the layout runs through the net");
    }
    fx.assert_close("expect.encoder.features", &feats);
    let (z_q, _) = model.quantize.forward(&feats);
    fx.assert_close("expect.quantize.z_q", &z_q);
    let codes = model.encode(x);
    assert_eq!(codes.kind(), Kind::Int64);
    fx.assert_exact("expect.codes", &codes);
    fx.assert_close("expect.decoded", &model.decode(&codes).unwrap());
    fx.assert_close("expect.decoded_raw", &model.decode_raw(&codes).unwrap());
    let given = model.decode(fx.get("input.codes_given")).unwrap();
    fx.assert_close("expect.decoded_given", &given);
}

#[test]
fn tiny_teacher_matches_the_reference() {
    teacher_matches_the_reference(false);
}

#[test]
fn tiny_teacher_in_channels_last_matches_the_reference() {
    teacher_matches_the_reference(true);
}

#[test]
fn full_size_teacher_has_the_reference_keys_and_parameter_count() {
    let vs = nn::VarStore::new(cpu().unwrap());
    let _model = MaskgitVqgan::new(&vs.root(), &VqganConfig::default());
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(tk::spec_dir().join("keys/maskgit-vqgan.json")).unwrap()).unwrap();
    let vars = vs.variables();
    let mut ours: Vec<&String> = vars.keys().collect();
    ours.sort();
    let mut theirs: Vec<&String> = keys.keys().collect();
    theirs.sort();
    assert_eq!(ours, theirs);
    for (k, shape) in &keys {
        let shape: Vec<i64> = shape.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(vars[k].size(), shape, "{k}");
    }
    let total: i64 = vars.values().map(|t| t.numel() as i64).sum();
    assert_eq!(total, 54_515_587);
}

#[test]
fn codebook_entry_rejects_bad_shapes() {
    let vs = nn::VarStore::new(cpu().unwrap());
    let model = MaskgitVqgan::new(&vs.root(), &VqganConfig::default());
    let bad = tch::Tensor::zeros([2, 15], (Kind::Int64, Device::Cpu));
    assert!(model.quantize.codebook_entry(&bad).unwrap_err().to_string().contains("not a square"));
}
