//! Flag groups shared by the sftok binaries, each defined once: put one in a command with
//! `#[command(flatten)]` and every command spells, documents and parses those flags the same way.
//!
//! ```ignore
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     Doctor {
//!         #[command(flatten)]
//!         device: sftok::flags::DeviceFlag,
//!     },
//! }
//! // … Command::Doctor { device } => sftok::doctor(&device.device),
//! ```

use anyhow::Result;
use clap::{Args, ValueEnum};
use sftok_model::eval::recon::ModelSpec;
use sftok_model::inception::InputPipeline;
use std::path::PathBuf;

/// `--device auto|cpu|cuda|cuda:N` (default `auto`).
#[derive(Args, Clone, Debug)]
pub struct DeviceFlag {
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceFlag {
    /// The libtorch device; `auto` is CUDA device 0 when libtorch sees a GPU, else the CPU.
    pub fn resolve(&self) -> Result<tch::Device> {
        sftok_model::device::parse_device(&self.device)
    }
}

/// The tokenizer to evaluate and how it decodes: `--checkpoint`, `--config`, `--teacher`,
/// `--steps`, `--seed`, `--device` and trailing config overrides.
#[derive(Args, Clone, Debug)]
pub struct ModelFlags {
    /// Weights: .safetensors / .bin / .pth, or a directory with config.json + model.safetensors.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Model config (YAML); default: config.json beside the checkpoint.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// MaskGIT-VQGAN teacher for stage-1/2 checkpoints (a file, or random:SEED for smoke tests).
    #[arg(long)]
    pub teacher: Option<String>,
    /// Decoding steps (default: model.generator.num_steps, 8).
    #[arg(long)]
    pub steps: Option<i64>,
    /// Seed of the decoder's Gumbel sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Config overrides: section.key=value
    pub overrides: Vec<String>,
}

impl ModelFlags {
    /// The model part of the flags (the device is resolved separately, once per command).
    pub fn spec(self) -> ModelSpec {
        ModelSpec {
            checkpoint: self.checkpoint,
            config: self.config,
            overrides: self.overrides,
            teacher: self.teacher,
            steps: self.steps,
            seed: self.seed,
        }
    }
}

/// Where the FID Inception's weights come from: `--weights PATH` or `--random-weights SEED`.
/// (Precision and batch size stay with each command: `fid` follows ADM — float32, 50 images —
/// and `rfid` the reference's evaluator — float64, the training batch.)
#[derive(Args, Clone, Debug)]
pub struct FidFlags {
    /// FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth as it is, or a
    /// safetensors copy of it.
    #[arg(long, value_name = "PATH")]
    pub weights: Option<PathBuf>,
    /// Smoke tests only: a randomly initialised Inception (all numbers meaningless).
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<i64>,
}

/// `--pipeline`: how uint8 images are resized to 299 and normalised (evaluation.md §3.4).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Pipeline {
    /// TF1 legacy bilinear resize, (x − 128)/128: the TF graph / ADM / reference evaluator.
    Tf1,
    /// pytorch-fid: half-pixel bilinear resize of x/255, then 2x − 1.
    PytorchFid,
}

impl From<Pipeline> for InputPipeline {
    fn from(p: Pipeline) -> Self {
        match p {
            Pipeline::Tf1 => InputPipeline::Tf1,
            Pipeline::PytorchFid => InputPipeline::PytorchFid,
        }
    }
}
