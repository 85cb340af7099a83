//! The stage 2 → 3 hand-off (../shared/spec/sftok-training.md §8) against the reference's own key
//! bookkeeping in ../shared/fixtures/sftok-tiny-stage3-train (`stage2_to_stage3_handoff`) and the
//! key inventories of ../shared/spec/keys: the renames, the counts, the merged key set and shapes.

use sftok_model::checkpoint::StateDict;
use sftok_model::train::stage3::stage3_handoff;
use sftok_testkit_tch::{Sidecar, spec_dir};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// key → shape of a `../shared/spec/keys/*.json` inventory.
fn inventory(name: &str) -> BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string(spec_dir().join("keys").join(name)).unwrap();
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    map.into_iter().map(|(k, v)| (k, v.as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect())).collect()
}

/// A state dict with the inventory's names and shapes (broadcast zeros: no memory per tensor).
fn placeholder(inv: &BTreeMap<String, Vec<i64>>) -> StateDict {
    let zero = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
    StateDict { tensors: inv.iter().map(|(k, s)| (k.clone(), if s.is_empty() { zero.reshape([]) } else { zero.expand(s.as_slice(), false) })).collect() }
}

#[test]
fn sftok_b_handoff_matches_the_reference_bookkeeping() {
    let side = Sidecar::load("sftok-tiny-stage3-train");
    let h = side.at("/stage2_to_stage3_handoff/sftok_b");
    let teacher = inventory("maskgit-vqgan.json");
    let stage2 = inventory("sftok-b-stage12.json");
    let stage3 = inventory("sftok-b-stage3.json");
    assert_eq!(teacher.len() as u64, h["teacher_keys"].as_u64().unwrap());
    assert_eq!(stage2.len() as u64, h["stage2_keys"].as_u64().unwrap());
    assert_eq!(stage3.len() as u64, h["stage3_keys"].as_u64().unwrap());

    let merged = stage3_handoff(placeholder(&stage2), &placeholder(&teacher)).unwrap();
    let got: BTreeMap<String, Vec<i64>> = merged.tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    assert_eq!(got.len() as u64, h["merged_keys"].as_u64().unwrap());
    // Exactly the stage-3 model's keys with its shapes: nothing missing, nothing unexpected.
    assert_eq!(got, stage3);

    // Every rename the reference made, and no other: the non-stage-2 keys are the renamed ones.
    let renames: BTreeMap<String, String> = h["renames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    let added: Vec<&String> = got.keys().filter(|k| !stage2.contains_key(*k)).collect();
    assert_eq!(added.len(), renames.len());
    for (from, to) in &renames {
        assert!(got.contains_key(to), "{to} (from the teacher's {from}) missing");
        assert_eq!(got[to], teacher[from], "{to}: shape differs from the teacher's {from}");
    }
    let dropped = teacher.keys().filter(|k| !renames.contains_key(*k)).count() as u64;
    assert_eq!(dropped, h["teacher_dropped_encoder_keys"].as_u64().unwrap());
}

#[test]
fn handoff_refuses_a_stage3_checkpoint_as_stage2_weights() {
    let teacher = inventory("maskgit-vqgan.json");
    let stage3 = inventory("sftok-b-stage3.json");
    let err = match stage3_handoff(placeholder(&stage3), &placeholder(&teacher)) {
        Ok(_) => panic!("a stage-3 state dict was accepted as stage-2 weights"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("pixel_decoder.") && err.contains("stage-3 checkpoint"), "{err}");
}
