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
    /// The libtorch device; `auto` is CUDA device 0 when libtorch sees a GPU, else the CPU. Under
    /// torchrun / srun, `auto` and `cuda` mean this process's GPU (LOCAL_RANK / SLURM_LOCALID).
    pub fn resolve(&self) -> Result<tch::Device> {
        let local_rank = sftok_pipeline::launch_env::ProcessEnv::from_env()?.local_rank;
        sftok_model::device::parse_device_for_local_rank(&self.device, local_rank)
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

/// What `sftok-eval sample` (and `gfid` when it samples first) needs: the generator, its
/// tokenizer, the sampling settings (each defaults to the generator config's value, except
/// softmax annealing: on, TiTok's sampling script), the sample layout and the output.
#[derive(Args, Clone, Debug)]
pub struct SampleFlags {
    /// The generator's weights: a directory with model.safetensors + config.json (sftok-train generator's ema_model/), or a file.
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// The generator's config when there is no config.json beside it (configs/sftok_maskgit.yaml).
    #[arg(long)]
    pub generator_config: Option<PathBuf>,
    /// The SFTok tokenizer that decodes the tokens (a stage-3 ema_model/ directory, or a file with --tokenizer-config).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub tokenizer_config: Option<PathBuf>,
    /// MaskGIT-VQGAN teacher, only for a stage-1/2 tokenizer (no pixel decoder of its own).
    #[arg(long)]
    pub teacher: Option<String>,
    /// CFG scale (reference convention: lc + g·(lc − lu)). Default: model.img_generator.guidance_scale.
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// constant | linear | power-cosine. Default: model.img_generator.guidance_decay.
    #[arg(long)]
    pub guidance_decay: Option<String>,
    /// Exponent of power-cosine. Default: model.img_generator.guidance_scale_pow.
    #[arg(long)]
    pub guidance_scale_pow: Option<f64>,
    /// Gumbel temperature at step 0. Default: model.img_generator.randomize_temperature.
    #[arg(long)]
    pub randomize_temperature: Option<f64>,
    /// Divide the logits by 0.5 + 0.8·(1 − r): true (TiTok's sampling script) or false (the SFTok configs' default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub softmax_temperature_annealing: bool,
    /// Sampling steps. Default: model.img_generator.num_steps.
    #[arg(long)]
    pub num_steps: Option<i64>,
    /// Samples in all (class-balanced: a multiple of the class count).
    #[arg(long, default_value_t = 50_000)]
    pub num: usize,
    /// Images per generation call (the reference's per_proc_batch_size).
    #[arg(long, default_value_t = 125)]
    pub per_proc_batch: usize,
    /// Images per tokenizer decode call (bounds memory; part of what makes the samples, recorded in <out>.json).
    #[arg(long, default_value_t = 8)]
    pub decode_batch: usize,
    /// The process count whose layout fixes the row order (the reference's torchrun --nproc_per_node=8),
    /// independent of how many processes really run.
    #[arg(long, default_value_t = 8)]
    pub virtual_ranks: usize,
    /// Chunk c is generated after manual_seed(seed + c).
    #[arg(long, default_value_t = 42)]
    pub seed: i64,
    /// The sample batch to write.
    #[arg(long, default_value = "samples.npz")]
    pub out: PathBuf,
    /// Keep <out>.parts/ (the per-chunk files) after writing the .npz.
    #[arg(long)]
    pub keep_parts: bool,
    /// Minutes rank 0 waits for the other processes' chunks before giving up.
    #[arg(long, default_value_t = 600.0)]
    pub wait_minutes: f64,
    #[command(flatten)]
    pub device: DeviceFlag,
}

impl SampleFlags {
    /// Samples as the flags say (RANK / WORLD_SIZE from the environment) and prints a summary.
    pub fn run(self) -> Result<sftok_model::eval::sample::SampleReport> {
        use anyhow::Context;
        let generator = self.generator.context("sampling needs --generator <sftok-train generator output>/ema_model")?;
        let tokenizer = self.tokenizer.context("sampling needs --tokenizer <stage-3 output>/ema_model (the tokenizer the generator was trained on)")?;
        let device = self.device.resolve()?;
        let settings = sftok_model::maskgit_sampler::SamplingOverrides {
            guidance_scale: self.guidance_scale,
            guidance_decay: self.guidance_decay,
            guidance_scale_pow: self.guidance_scale_pow,
            randomize_temperature: self.randomize_temperature,
            softmax_temperature_annealing: Some(self.softmax_temperature_annealing),
            num_steps: self.num_steps,
        };
        let sftok_pipeline::launch_env::ProcessEnv { rank, world_size, .. } = sftok_pipeline::launch_env::ProcessEnv::from_env()?;
        let req = sftok_model::eval::sample::SampleRequest {
            generator,
            generator_config: self.generator_config,
            tokenizer: ModelSpec { checkpoint: tokenizer, config: self.tokenizer_config, overrides: vec![], teacher: self.teacher, steps: None, seed: 0 },
            settings,
            num: self.num,
            per_proc_batch: self.per_proc_batch,
            decode_batch: self.decode_batch,
            virtual_ranks: self.virtual_ranks,
            seed: self.seed,
            out: self.out,
            rank,
            world_size,
            device,
            keep_parts: self.keep_parts,
            wait: std::time::Duration::from_secs_f64(self.wait_minutes * 60.0),
        };
        let r = sftok_model::eval::sample::run_sample(&req)?;
        sftok_pipeline::progress::status_line(&format!(
            "rank {rank}: {} chunk(s) generated, {} kept from an earlier run; {:.1} images/s; peak RSS {:.0} MB",
            r.chunks_done_here, r.chunks_kept, r.images_per_second, r.peak_rss_mb
        ));
        if r.merged {
            println!("samples: {} ({} images, arr_0 uint8; how they were made: {})", r.out.display(), req.num, sftok_model::eval::sample::sidecar_path(&r.out).display());
        }
        Ok(r)
    }
}
