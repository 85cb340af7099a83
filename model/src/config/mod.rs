//! The reference's configuration tree (OmegaConf YAML: experiment / model / losses / dataset /
//! optimizer / lr_scheduler / training), typed, with OmegaConf-style dotted overrides
//! (`training.per_gpu_batch_size=32`) and `${a.b}` interpolation.
//!
//! Every key of the reference's SFTok, TiTok and MaskGIT-generator configs is accepted (some are
//! inert in the reference and here too; they are documented as such). An unknown key — in a file
//! or an override — is an error naming the key and the nearest valid one.
//! Numbers may use `_` separators (`1_281_167`) and bare exponents (`1e-4`) as in the reference.
//!
//! `schema` holds the typed sections and their defaults, `engine` the OmegaConf-style work on the
//! YAML tree; this module ties them together.

mod engine;
mod schema;

pub use schema::{
    Dataset, DatasetParams, DecoderConfig, Experiment, ImgGenerator, Losses, LrScheduler, LrSchedulerParams,
    MaskSchedule, MixedPrecision, Model, Optimizer, OptimizerParams, PixelDecoder, Preprocessing, SamplingConfig, Training,
    TransformerSize, VqModel,
};

use anyhow::{Context, Result, anyhow};
use engine::{apply_override, check_keys, lookup, normalize_numbers, resolve_interpolations};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

/// The whole tree: one field per top-level YAML section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub experiment: Experiment,
    pub model: Model,
    pub losses: Losses,
    pub dataset: Dataset,
    pub optimizer: Optimizer,
    pub lr_scheduler: LrScheduler,
    pub training: Training,
}

impl Config {
    /// Loads a YAML file and applies `key=value` overrides (in order), then resolves `${…}`.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {} (check the path; shipped configs are in configs/)", path.display()))?;
        Self::from_yaml_str(&text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    /// As [`Config::load`], from a YAML string (an empty string gives the defaults).
    pub fn from_yaml_str(text: &str, overrides: &[String]) -> Result<Config> {
        let mut tree: Value = serde_yaml_ng::from_str(text).context("parsing YAML")?;
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        let schema = serde_yaml_ng::to_value(Config::default()).expect("default config serialises");
        check_keys(&tree, &schema, "")?;
        for ov in overrides {
            apply_override(&mut tree, &schema, ov)?;
        }
        // The reference's configs tie the scheduler's base LR to the optimizer's; a config that
        // leaves it out gets the same link, so `optimizer.params.learning_rate=…` moves both.
        if lookup(&tree, "lr_scheduler.params.learning_rate").is_none() && lookup(&tree, "optimizer.params.learning_rate").is_some() {
            apply_override(&mut tree, &schema, "lr_scheduler.params.learning_rate='${optimizer.params.learning_rate}'")?;
        }
        normalize_numbers(&mut tree);
        let root = tree.clone();
        resolve_interpolations(&mut tree, &root, 0)?;
        // serde_path_to_error: a bad value names its key (`training.seed: invalid type …`).
        serde_path_to_error::deserialize(tree).map_err(|e| anyhow!("config key `{}`: {}", e.path(), e.inner()))
    }

    /// The effective config as YAML (saved next to checkpoints).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_reported_with_their_key() {
        let err = Config::from_yaml_str("training:\n  mask_schedule: arccoss\n", &[]).unwrap_err().to_string();
        assert!(err.contains("arccoss") && err.contains("arccos"), "{err}");
        let err = Config::from_yaml_str("training:\n  seed: forty-two\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`training.seed`") && err.contains("forty-two"), "{err}");
    }

    #[test]
    fn scheduler_lr_follows_the_optimizer_lr_unless_set() {
        let cfg = Config::from_yaml_str("", &["optimizer.params.learning_rate=3e-3".into()]).unwrap();
        assert_eq!(cfg.lr_scheduler.params.learning_rate, 3e-3);
        let cfg = Config::from_yaml_str("lr_scheduler:\n  params:\n    learning_rate: 1e-5\n", &["optimizer.params.learning_rate=3e-3".into()]).unwrap();
        assert_eq!(cfg.lr_scheduler.params.learning_rate, 1e-5);
    }

    #[test]
    fn effective_config_round_trips() {
        let cfg = Config::from_yaml_str("", &["training.seed=7".into()]).unwrap();
        let again = Config::from_yaml_str(&cfg.to_yaml(), &[]).unwrap();
        assert_eq!(cfg, again);
    }
}
