//! `sftok-eval`: FID-family metrics and reconstructions.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use sftok::bench_fid::FeatureBench;
use sftok::fid::FidOptions;
use sftok_model::inception::InputPipeline;
use sftok_model::recon::{ReconRequest, run};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sftok-eval", version, about = "Evaluate SFTok: FID-family metrics and reconstructions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--pipeline`: how uint8 images are resized to 299 and normalised (evaluation.md §3.4).
#[derive(Clone, Copy, ValueEnum)]
enum Pipeline {
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

/// The model to evaluate and how it decodes (shared by `recon` and `rfid`).
#[derive(clap::Args)]
struct ModelFlags {
    /// Weights: .safetensors / .bin / .pth, or a directory with config.json + model.safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Model config (YAML); default: config.json beside the checkpoint.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MaskGIT-VQGAN teacher for stage-1/2 checkpoints (a file, or random:SEED for smoke tests).
    #[arg(long)]
    teacher: Option<String>,
    /// Decoding steps (default: model.generator.num_steps, 8).
    #[arg(long)]
    steps: Option<i64>,
    /// Seed of the decoder's Gumbel sampling.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// Config overrides: section.key=value
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Reconstruct images (eval transform → 64 tokens → iterative decoding) and report PSNR.
    #[command(after_help = "Example:\n  sftok-eval recon --checkpoint sftok-b/ --images cat.jpg dog.png --out recon/ --steps 8\n\n\
        A stage-1/2 checkpoint also needs --teacher maskgit-vqgan-imagenet-f16-256.bin (its proxy codes\n\
        are decoded by the teacher). Tokens depend on the batch (OptVQ's Sinkhorn assignment is batch-wide).")]
    Recon {
        #[command(flatten)]
        model: ModelFlags,
        /// Images to reconstruct.
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        /// Output directory (grid.png, tokens.json).
        #[arg(long)]
        out: PathBuf,
        /// Images per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// Reconstruction FID on the val shards as the reference computes it (+ IS of the reconstructions, PSNR).
    #[command(after_help = "Example:\n  sftok-eval rfid --checkpoint sftok-b/ --shards shards/val --weights pt_inception-2015-12-05-6726825d.pth\n\n\
        Stage-1 models are evaluated with --steps 1 (single-step argmax, as the reference) and need --teacher.\n\
        Tokens depend on the batch (OptVQ's Sinkhorn): keep --batch fixed when comparing numbers.")]
    Rfid {
        #[command(flatten)]
        model: ModelFlags,
        /// Val shards: directory, manifest.json or brace pattern.
        #[arg(long)]
        shards: String,
        /// Use the first N images (default: all).
        #[arg(long)]
        num: Option<usize>,
        /// FID Inception weights (pytorch-fid's .pth or a safetensors copy).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Smoke tests only: a randomly initialised Inception (numbers meaningless).
        #[arg(long)]
        random_weights: Option<i64>,
        /// Inception in float32 (faster) instead of the reference evaluator's float64.
        #[arg(long)]
        float32: bool,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Also write originals/ and reconstructions/ PNGs here.
        #[arg(long)]
        save_images: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check that libtorch loads and computes correctly on the chosen device.
    #[command(after_help = "Example:\n  sftok-eval doctor --device auto")]
    Doctor {
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// FID, sFID, Inception Score and precision/recall (ADM definitions) between A (reference)
    /// and B (samples). Each is a folder of PNG/JPEG images, an .npz sample batch (`arr_0` uint8
    /// NHWC) or an ADM reference batch / saved statistics (`mu`, `sigma`, `mu_s`, `sigma_s`).
    #[command(after_help = "Example:\n  sftok-eval fid VIRTUAL_imagenet256_labeled.npz samples.npz \
        --weights pt_inception-2015-12-05-6726825d.safetensors\n  \
        sftok-eval fid val_256/ recon_256/ --weights inception.safetensors --save-stats val_256_stats.npz --json")]
    Fid {
        /// Reference side: image folder, .npz sample batch or statistics .npz.
        a: PathBuf,
        /// Sample side: image folder, .npz sample batch or statistics .npz.
        b: PathBuf,
        /// Write A's statistics (mu, sigma, mu_s, sigma_s; float64) as an ADM-layout .npz.
        #[arg(long, value_name = "OUT.npz")]
        save_stats: Option<PathBuf>,
        /// Write B's statistics likewise.
        #[arg(long, value_name = "OUT.npz")]
        save_stats_b: Option<PathBuf>,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Images per Inception batch.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        #[arg(long, value_enum, default_value = "tf1")]
        pipeline: Pipeline,
        /// Run the Inception in float64 (as the reference rFID evaluator) instead of float32.
        #[arg(long)]
        float64: bool,
        /// FID Inception weights (.safetensors converted from pytorch-fid's
        /// pt_inception-2015-12-05-6726825d.pth).
        #[arg(long, value_name = "PATH")]
        weights: Option<PathBuf>,
        /// Smoke tests only: a randomly initialised Inception (all numbers meaningless).
        #[arg(long, value_name = "SEED")]
        random_weights: Option<i64>,
        /// Skip unreadable images (counted and reported) instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// libtorch CPU threads (default: libtorch's choice).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Benchmark: Inception feature throughput with random weights (RESULT line).
    #[command(hide = true)]
    BenchFeatures {
        #[arg(long, default_value_t = 50)]
        batch: i64,
        #[arg(long, default_value_t = 2)]
        batches: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 256)]
        size: i64,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        float64: bool,
        #[arg(long, value_enum, default_value = "pytorch-fid")]
        pipeline: Pipeline,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
    /// Benchmark: Fréchet distance of two `mu`/`sigma` .npz files (RESULT line).
    #[command(hide = true)]
    BenchFrechet {
        a: PathBuf,
        b: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() {
    sftok::run_main(|| match Cli::parse().command {
        Command::Recon { model: m, images, out, batch } => {
            let device = sftok_model::device::parse_device(&m.device)?;
            let req = ReconRequest {
                checkpoint: m.checkpoint,
                config: m.config,
                overrides: m.overrides,
                teacher: m.teacher,
                images,
                out,
                steps: m.steps,
                seed: m.seed,
                batch,
                device,
            };
            recon(&req)
        }
        Command::Doctor { device } => sftok::doctor(&device),
        Command::Rfid { model: m, shards, num, weights, random_weights, float32, batch, save_images, json } => {
            sftok::rfid::run(&sftok::rfid::RfidOptions {
                checkpoint: m.checkpoint,
                config: m.config,
                overrides: m.overrides,
                teacher: m.teacher,
                shards,
                num,
                steps: m.steps,
                weights,
                random_weights,
                float32,
                batch,
                seed: m.seed,
                device: m.device,
                save_images,
                json,
            })
        }
        Command::Fid {
            a,
            b,
            save_stats,
            save_stats_b,
            json,
            device,
            batch,
            pipeline,
            float64,
            weights,
            random_weights,
            skip_bad,
            threads,
        } => sftok::fid::run(&FidOptions {
            a,
            b,
            save_stats,
            save_stats_b,
            json,
            device,
            batch,
            pipeline: pipeline.into(),
            float64,
            weights,
            random_weights,
            skip_bad,
            threads,
        }),
        Command::BenchFeatures { batch, batches, warmup, size, threads, float64, pipeline, seed } => {
            sftok::bench_fid::features(&FeatureBench {
                batch,
                batches,
                warmup,
                size,
                threads,
                float64,
                pipeline: pipeline.into(),
                seed,
            })
        }
        Command::BenchFrechet { a, b, threads } => sftok::bench_fid::frechet(&a, &b, threads),
    });
}

fn recon(req: &ReconRequest) -> Result<()> {
    let t0 = std::time::Instant::now();
    let report = run(req)?;
    for item in &report.images {
        println!("{:>7.2} dB  {}", item.psnr, item.source);
    }
    println!(
        "mean PSNR {:.2} dB over {} image(s), {} decoding steps, {:.2} s/image",
        report.mean_psnr,
        report.images.len(),
        report.steps,
        t0.elapsed().as_secs_f64() / report.images.len() as f64
    );
    println!("grid: {}  tokens: {}", report.grid.display(), req.out.join("tokens.json").display());
    Ok(())
}
