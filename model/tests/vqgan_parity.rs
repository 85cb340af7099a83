//! MaskGIT-VQGAN teacher vs ../shared/fixtures/maskgit-vqgan-tiny (reference outputs).

mod common;

use sftok_model::checkpoint::{self, StateDict};
use sftok_model::vqgan::{MaskgitVqgan, VqganConfig};
use tch::nn::{self, Module};
use tch::{Device, Kind};

fn tiny_config(sidecar: &serde_json::Value) -> VqganConfig {
    let c = &sidecar["config"];
    let i = |k: &str| c[k].as_i64().unwrap();
    VqganConfig {
        num_channels: i("num_channels"),
        hidden_channels: i("hidden_channels"),
        channel_mult: c["channel_mult"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect(),
        num_res_blocks: i("num_res_blocks"),
        z_channels: i("z_channels"),
        num_embeddings: 1024,
    }
}

#[test]
fn tiny_teacher_matches_the_reference() {
    let name = "maskgit-vqgan-tiny";
    let side = common::sidecar(name);
    let fx = common::load_fixture(name);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MaskgitVqgan::new(&vs.root(), &tiny_config(&side));
    let sd = StateDict { tensors: fx.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect() }.strip_prefix("weights.");
    assert_eq!(sd.tensors.len(), 168);
    checkpoint::load_into(&vs, &sd, true).unwrap(); // strict: exactly the reference's 168 keys

    let x = &fx["input.x"];
    let feats = tch::no_grad(|| model.encoder.forward(x));
    common::assert_close(&side, "expect.encoder.features", &feats, &fx["expect.encoder.features"]);
    let (z_q, _) = model.quantize.forward(&feats);
    common::assert_close(&side, "expect.quantize.z_q", &z_q, &fx["expect.quantize.z_q"]);
    let codes = model.encode(x);
    assert_eq!(codes.kind(), Kind::Int64);
    assert!(codes.equal(&fx["expect.codes"]), "codes differ from the reference");
    common::assert_close(&side, "expect.decoded", &model.decode(&codes).unwrap(), &fx["expect.decoded"]);
    common::assert_close(&side, "expect.decoded_raw", &model.decode_raw(&codes).unwrap(), &fx["expect.decoded_raw"]);
    let given = model.decode(&fx["input.codes_given"]).unwrap();
    common::assert_close(&side, "expect.decoded_given", &given, &fx["expect.decoded_given"]);
}

#[test]
fn full_size_teacher_has_the_reference_keys_and_parameter_count() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = MaskgitVqgan::new(&vs.root(), &VqganConfig::default());
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(common::repo_root().join("../shared/spec/keys/maskgit-vqgan.json")).unwrap()).unwrap();
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
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MaskgitVqgan::new(&vs.root(), &VqganConfig::default());
    let bad = tch::Tensor::zeros([2, 15], (Kind::Int64, Device::Cpu));
    assert!(model.quantize.codebook_entry(&bad).unwrap_err().to_string().contains("not a square"));
}
