//! Where a run's numbers go: the console and `log.txt` (lines), TensorBoard (`logs/`) and
//! `metrics.jsonl` (one row per logged step: `step` plus every scalar). In a data-parallel job only
//! rank 0 logs; the other ranks hold a [`RunLog::silent`] one and write nothing.

use super::task::Metrics;
use super::tensorboard::EventWriter;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct RunLog {
    dir: PathBuf,
    /// None on a silent log.
    sinks: Option<Sinks>,
}

struct Sinks {
    tb: EventWriter,
    jsonl: File,
}

impl RunLog {
    /// Opens the logs of `dir`. A resumed run (`resumed_at`) drops the metric rows after its step, which
    /// it rewrites; a fresh run moves an earlier run's `metrics.jsonl` aside rather than mixing them.
    pub fn open(dir: &Path, resumed_at: Option<u64>) -> Result<RunLog> {
        let jsonl_path = dir.join("metrics.jsonl");
        match resumed_at {
            Some(step) => truncate_jsonl(&jsonl_path, step)?,
            None if jsonl_path.exists() => {
                let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let aside = dir.join(format!("metrics.before-{stamp}.jsonl"));
                std::fs::rename(&jsonl_path, &aside).with_context(|| format!("moving the earlier {} aside", jsonl_path.display()))?;
                eprintln!("a fresh run in {}: the earlier metrics.jsonl is now {}", dir.display(), aside.display());
            }
            None => {}
        }
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl_path)
            .with_context(|| format!("opening {}", jsonl_path.display()))?;
        Ok(RunLog { dir: dir.to_path_buf(), sinks: Some(Sinks { tb: EventWriter::create(&dir.join("logs"))?, jsonl }) })
    }

    /// A log that prints and writes nothing (data-parallel ranks other than 0).
    pub fn silent(dir: &Path) -> RunLog {
        RunLog { dir: dir.to_path_buf(), sinks: None }
    }

    pub fn jsonl_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// A line on stderr and in `log.txt`.
    pub fn line(&self, line: &str) {
        if self.sinks.is_none() {
            return;
        }
        eprintln!("{line}");
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("log.txt")) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Scalars of `step` to TensorBoard and one `metrics.jsonl` row.
    pub fn scalars(&mut self, step: u64, values: &Metrics) -> Result<()> {
        self.tensorboard_only(step, values)?;
        let Some(sinks) = &mut self.sinks else { return Ok(()) };
        let mut row = serde_json::Map::new();
        row.insert("step".into(), step.into());
        for (k, v) in values {
            row.insert(k.clone(), serde_json::json!(v));
        }
        writeln!(sinks.jsonl, "{}", serde_json::Value::Object(row)).context("writing metrics.jsonl")?;
        Ok(())
    }

    /// Scalars too many for the JSONL rows and the plot (per-parameter gradient norms).
    pub fn tensorboard_only(&mut self, step: u64, values: &Metrics) -> Result<()> {
        let Some(sinks) = &mut self.sinks else { return Ok(()) };
        for (k, v) in values {
            sinks.tb.scalar(k, step as i64, *v as f32)?;
        }
        Ok(())
    }

    pub fn image(&mut self, tag: &str, step: u64, png: &[u8], width: u32, height: u32) -> Result<()> {
        match &mut self.sinks {
            Some(sinks) => sinks.tb.image(tag, step as i64, png, width, height),
            None => Ok(()),
        }
    }

    pub fn flush(&mut self) -> Result<()> {
        let Some(sinks) = &mut self.sinks else { return Ok(()) };
        sinks.tb.flush()?;
        sinks.jsonl.flush().context("flushing metrics.jsonl")
    }
}

/// Drops metric rows after `step` (a resumed run rewrites them).
fn truncate_jsonl(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    sftok_pipeline::fsutil::write_atomic(path, kept.as_bytes())
}
