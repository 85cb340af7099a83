//! The model tests' shared helpers live in `sftok-testkit-tch` (testkit/tch): fixtures, sidecars,
//! tolerances, the Python oracle. This module keeps the names `train.rs` uses and the training
//! tests' data: a fixed synth batch served forever.
#![allow(unused_imports)]

pub use sftok_testkit_tch::{max_abs_diff, python, repo_root, rng_lock};

use sftok_model::train::fit::DataFactory;
use sftok_pipeline::batch::{Batch, BatchStream};
use tch::Device;

/// A fixed batch of synth images at the tiny size, repeated (test data).
pub struct FixedBatches {
    batch: Batch,
    served: u64,
}

impl BatchStream for FixedBatches {
    fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        self.served += 1;
        Ok(Some(self.batch.clone()))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "served": self.served })
    }
}

/// Synth images at the tiny size with the proxy codes of a seeded random teacher, computed once.
pub fn fixed_batch(n: usize) -> Batch {
    let dir = tempfile::tempdir().unwrap();
    let opts = sftok_pipeline::synth::SynthOptions { out: dir.path().to_path_buf(), classes: 1, per_class: 1, val: n, seed: 5 };
    sftok_pipeline::synth::synth_imagenet(&opts, &|| {}).unwrap();
    let mut images = Vec::new();
    for i in 1..=n {
        let bytes = std::fs::read(dir.path().join(format!("val/ILSVRC2012_val_{i:08}.JPEG"))).unwrap();
        let img = sftok_pipeline::transform::decode_rgb(&bytes).unwrap();
        images.extend(sftok_pipeline::transform::eval_transform(&img, 64, 64).unwrap().data);
    }
    let mut batch = Batch { images, size: 64, labels: vec![0; n], keys: (0..n).map(|i| format!("k{i}")).collect(), codes: None, codes_per_image: 0, views: None };
    let (_vs, teacher) = sftok_model::vqgan::load_teacher("random:0", Device::Cpu).unwrap();
    let codes = teacher.encode(&sftok_model::handoff::images(&batch, Device::Cpu));
    batch.codes = Some(Vec::<i64>::try_from(codes.flatten(0, -1)).unwrap().into_iter().map(|c| c as u16).collect());
    batch.codes_per_image = 16;
    batch
}

pub fn data(batch: Batch) -> DataFactory {
    Box::new(move |state| {
        let served = state.and_then(|s| s["served"].as_u64()).unwrap_or(0);
        Ok(Box::new(FixedBatches { batch: batch.clone(), served }) as Box<dyn BatchStream>)
    })
}

/// `key` of every row of `metrics.jsonl`.
/// (Rows without it are skipped: stage 3 logs the discriminator's keys from discriminator_start on.)
pub fn losses(out: &std::path::Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[key].as_f64()).collect()
}
