//! Training checkpoints (`output_dir/checkpoint-{step}/`), written to `checkpoint-{step}.tmp/` and
//! renamed when complete, so a killed run never leaves a checkpoint that looks usable:
//!
//! ```text
//! checkpoint-{step}/
//!   model/      model.safetensors + config.json   raw weights (the reference's unwrapped_model)
//!   ema_model/  model.safetensors + config.json   EMA weights (what evaluation and the next stage use)
//!   optimizer.safetensors                         AdamW moments, exp_avg.<name> / exp_avg_sq.<name>
//!   trainer_state.json                            step counters, loader position, seeds, counters
//! ```

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimiser steps taken (the reference's `global_step`).
    pub global_step: u64,
    /// EMA updates taken (equals `global_step`; kept separately like the reference).
    pub ema_step: u64,
    /// Micro-batches consumed.
    pub micro_step: u64,
    /// Steps skipped because the loss was NaN/Inf.
    pub skipped_nonfinite: u64,
    /// Dynamic fp16 loss scale (1 when not used).
    pub loss_scale: f64,
    pub loss_scale_good_steps: u64,
    /// The loader's position after the last consumed batch (rank 0's in a data-parallel job).
    pub loader: serde_json::Value,
    /// Processes of the run that wrote the checkpoint; a resume needs as many.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Every rank's loader position, by rank (data-parallel runs only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_loaders: Vec<serde_json::Value>,
    pub seed: u64,
    pub stage: String,
}

fn one() -> usize {
    1
}

pub fn checkpoint_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

/// Complete checkpoints, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Ok(found) };
    for e in entries {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<u64>().ok())
            && path.join("trainer_state.json").is_file()
        {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a checkpoint through `fill(tmp_dir)`, then renames it into place and prunes old ones.
pub fn save_checkpoint(output_dir: &Path, step: u64, keep_last: u64, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(output_dir, step);
    let tmp = output_dir.join(format!("checkpoint-{step}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fill(&tmp)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    sftok_pipeline::fsutil::rename_durably(&tmp, &final_dir)?;
    if keep_last > 0 {
        let all = list_checkpoints(output_dir)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep_last as usize)) {
            std::fs::remove_dir_all(old).with_context(|| format!("pruning {}", old.display()))?;
        }
    }
    Ok(final_dir)
}

pub fn write_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let json = serde_json::to_string_pretty(state)?;
    sftok_pipeline::fsutil::write_atomic(&dir.join("trainer_state.json"), json.as_bytes())
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `--resume auto|PATH|never` → the checkpoint to continue from, if any.
pub fn resolve_resume(output_dir: &Path, resume: &str) -> Result<Option<PathBuf>> {
    match resume {
        "never" | "no" | "false" => Ok(None),
        "auto" => Ok(list_checkpoints(output_dir)?.pop().map(|(_, p)| p)),
        path => {
            let p = PathBuf::from(path);
            if !p.join("trainer_state.json").is_file() {
                bail!("--resume {path}: not a complete checkpoint directory (no trainer_state.json)");
            }
            Ok(Some(p))
        }
    }
}
