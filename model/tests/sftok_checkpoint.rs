//! SFTok checkpoint I/O: reference key names and parameter counts for B and L, bit-exact save →
//! load, the legacy key alias, and a strict load of our files by Python torch (oracle). The tiny
//! model is the sftok-tiny-stage12 fixture (config and key count from its sidecar).

use sftok_model::device::cpu;
use sftok_model::checkpoint::{self, StateDict};
use sftok_model::config::Config;
use sftok_model::sftok::{LoadedSFTok, SFTok, SFTokConfig, resolve_config};
use sftok_testkit_tch::{self as tk, Sidecar};
use std::collections::BTreeMap;
use tch::{Kind, nn};

const TINY: &str = "sftok-tiny-stage12";

fn reference_config(file: &str) -> Config {
    Config::load(&tk::repo_root().join("configs").join(file), &[]).unwrap()
}

fn key_file(name: &str) -> BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string(tk::spec_dir().join("keys").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ours(vs: &nn::VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect()
}

fn count(keys: &BTreeMap<String, Vec<i64>>, skip_buffer: bool) -> i64 {
    keys.iter().filter(|(k, _)| !(skip_buffer && k.as_str() == "quantize.index_offset")).map(|(_, s)| s.iter().product::<i64>()).sum()
}

#[test]
fn sftok_b_and_l_have_the_reference_keys_shapes_and_parameter_counts() {
    for (cfg_file, keys_file, params) in [
        ("sftok_b64_stage1.yaml", "sftok-b-stage12.json", 175_104_832),
        ("sftok_b64_stage3.yaml", "sftok-b-stage3.json", 205_845_315),
        ("sftok_l64_stage3.yaml", "sftok-l-stage3.json", 424_896_835),
    ] {
        let vs = nn::VarStore::new(cpu().unwrap());
        let _m = SFTok::new(&vs.root(), &SFTokConfig::from_config(&reference_config(cfg_file)).unwrap());
        let got = ours(&vs);
        assert_eq!(got, key_file(keys_file), "{cfg_file} vs {keys_file}");
        assert_eq!(count(&got, true), params, "{cfg_file}");
        assert_eq!(vs.variables()["quantize.index_offset"].kind(), Kind::Int64);
        if cfg_file.starts_with("sftok_l64") {
            // Stages 1–2 of L = stage 3 without the pixel modules.
            let l12: BTreeMap<_, _> = got.into_iter().filter(|(k, _)| !k.starts_with("pixel_")).collect();
            assert_eq!(l12, key_file("sftok-l-stage12.json"));
            assert_eq!(count(&l12, true), 394_156_352);
        }
    }
}

fn tiny_from_fixture(dir: &std::path::Path) -> (nn::VarStore, Config, StateDict) {
    let side = Sidecar::load(TINY);
    let mut tree = side.config().clone();
    tree["model"]["size_tables"] = side.at("/size_tables").clone();
    let cfg = Config::from_yaml_str(&tree.to_string(), &[]).unwrap();
    let vs = nn::VarStore::new(cpu().unwrap());
    let _m = SFTok::new(&vs.root(), &SFTokConfig::from_config(&cfg).unwrap());
    let fx = checkpoint::read(&tk::safetensors_path(TINY)).unwrap();
    let sd = fx.strip_prefix("weights.");
    checkpoint::load_into(&vs, &sd, true).unwrap();
    LoadedSFTok::save_dir(&vs, &cfg, dir).unwrap();
    (vs, cfg, sd)
}

#[test]
fn save_then_load_is_bit_exact_and_finds_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, _cfg, _) = tiny_from_fixture(dir.path());
    assert!(!dir.path().join("model.safetensors.tmp").exists());
    let cfg = resolve_config(dir.path(), None, &[]).unwrap();
    let loaded = LoadedSFTok::load(dir.path(), cfg, cpu().unwrap()).unwrap();
    let a = vs.variables();
    let b = loaded.vs.variables();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} changed in the round trip");
    }
    // A weights file alone (no config.json beside it, no --config) is a clear error.
    let lone = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("model.safetensors"), lone.path().join("w.safetensors")).unwrap();
    let err = resolve_config(&lone.path().join("w.safetensors"), None, &[]).err().unwrap().to_string();
    assert!(err.contains("--config") && err.contains("w.safetensors"), "{err}");
}

#[test]
fn legacy_positional_embedding_name_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (_vs, cfg, sd) = tiny_from_fixture(dir.path());
    let renamed: Vec<(String, tch::Tensor)> = sd
        .tensors
        .iter()
        .map(|(n, t)| (n.replace("decoder.learnable_embedding_positional_embedding", "decoder.embedding_positional_embedding"), t.shallow_clone()))
        .collect();
    assert!(renamed.iter().any(|(n, _)| n == "decoder.embedding_positional_embedding"));
    let path = dir.path().join("legacy.safetensors");
    tch::Tensor::write_safetensors(&renamed, &path).unwrap();
    let loaded = LoadedSFTok::load(&path, cfg, cpu().unwrap()).unwrap();
    let want = sd.get("decoder.learnable_embedding_positional_embedding").unwrap();
    assert!(loaded.vs.variables()["decoder.learnable_embedding_positional_embedding"].equal(want));
}

const PY_STRICT_LOAD: &str = r#"
import sys, torch
from safetensors.torch import load_file
ours = load_file(sys.argv[1])
ref = {k[len("weights."):]: v for k, v in load_file(sys.argv[2]).items() if k.startswith("weights.")}
# A module tree that mirrors the reference's state-dict names (not the reference code).
root = torch.nn.Module()
for name, t in ref.items():
    *path, leaf = name.split(".")
    m = root
    for p in path:
        if p not in m._modules:
            m.add_module(p, torch.nn.Module())
        m = m._modules[p]
    if t.dtype == torch.int64:
        m.register_buffer(leaf, torch.zeros_like(t))
    else:
        m.register_parameter(leaf, torch.nn.Parameter(torch.zeros(t.shape, dtype=torch.float32)))
print(root.load_state_dict(ours, strict=True))
for k, v in ref.items():
    got = root.state_dict()[k]
    assert got.dtype == (torch.int64 if v.dtype == torch.int64 else torch.float32), k
    assert torch.equal(got, v.to(got.dtype)), k
print("OK", len(ref))
"#;

#[test]
fn python_torch_loads_our_checkpoint_strictly() {
    let dir = tempfile::tempdir().unwrap();
    tiny_from_fixture(dir.path());
    let out = tk::python()
        .arg("-c")
        .arg(PY_STRICT_LOAD)
        .arg(dir.path().join("model.safetensors"))
        .arg(tk::safetensors_path(TINY))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let side = Sidecar::load(TINY);
    let n_weights = side.tensor_names("weights.").len();
    assert!(text.contains("All keys matched successfully") && text.contains(&format!("OK {n_weights}\n")), "{text}");
    // And the config.json we wrote is the reference layout (an OmegaConf-style tree).
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    for key in ["/model/vq_model/codebook_size", "/model/decoder/num_proxy_codes", "/model/vq_model/num_latent_tokens"] {
        assert_eq!(cfg.pointer(key), Some(side.at(&format!("/config{key}"))), "{key}");
    }
}
