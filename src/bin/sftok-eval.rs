//! `sftok-eval`: FID-family metrics and reconstructions.

use clap::{Parser, Subcommand};
use sftok::flags::{DeviceFlag, FidFlags, ModelFlags, Pipeline, SampleFlags};
use sftok_model::eval::bench::FeatureBench;
use sftok_model::eval::fid::FidOptions;
use sftok_model::eval::recon::ReconRequest;
use sftok_model::eval::rfid::RfidOptions;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sftok-eval", version, about = "Evaluate SFTok: FID-family metrics and reconstructions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Reconstruction FID on the val shards as the reference computes it (+ IS of the reconstructions, PSNR,
    /// codebook usage and entropy).
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
        #[command(flatten)]
        inception: FidFlags,
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
        #[command(flatten)]
        device: DeviceFlag,
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
        #[command(flatten)]
        device: DeviceFlag,
        /// Images per Inception batch.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        #[arg(long, value_enum, default_value = "tf1")]
        pipeline: Pipeline,
        /// Run the Inception in float64 (as the reference rFID evaluator) instead of float32.
        #[arg(long)]
        float64: bool,
        #[command(flatten)]
        inception: FidFlags,
        /// Skip unreadable images (counted and reported) instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// libtorch CPU threads (default: libtorch's choice).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Class-conditional samples of a trained generator, decoded by its tokenizer → an ADM sample batch
    /// (`arr_0` uint8 [N, S, S, 3]), 50 per class in the reference's row order; resumable, and splittable
    /// over processes (RANK / WORLD_SIZE, e.g. under torchrun) with a byte-identical result.
    #[command(after_help = "Example:\n  sftok-eval sample --generator outputs/sftok_maskgit_run1/ema_model \\\n      --tokenizer outputs/sftok_b64_stage3_run1/ema_model --num 50000 --out sftok-b.npz\n  \
        torchrun --nproc_per_node=8 --no-python -- sftok-eval sample ...   (same bytes as one process)\n\n\
        Defaults are the paper's gFID settings (generator-maskgit.md §8): the generator config's guidance (4.5,\n\
        constant), randomize_temperature 1.0, 8 steps, softmax temperature annealing ON (TiTok's sampling script;\n\
        the SFTok configs do not say). Chunks of --per-proc-batch images go to <out>.parts/ (a killed run resumes\n\
        there); the .npz appears only when complete, with <out>.json recording how it was made.")]
    Sample {
        #[command(flatten)]
        sample: SampleFlags,
    },
    /// gFID: FID, sFID, IS, precision and recall of a sample batch against ADM's reference batch
    /// (VIRTUAL_imagenet256_labeled.npz), ADM's definitions; samples from an .npz or made first.
    #[command(after_help = "Example:\n  sftok-eval gfid sftok-b.npz --ref VIRTUAL_imagenet256_labeled.npz --weights pt_inception-2015-12-05-6726825d.pth\n  \
        sftok-eval gfid --ref VIRTUAL_imagenet256_labeled.npz --weights pt_inception-2015-12-05-6726825d.pth \\\n      --generator gen/ema_model --tokenizer tok/ema_model --out sftok-b.npz   (sample, then evaluate)\n\n\
        Published: SFTok-B gFID 2.32, SFTok-L 2.29 (50,000 samples).")]
    Gfid {
        /// The sample batch (.npz with arr_0); omit it to sample first with --generator/--tokenizer.
        samples: Option<PathBuf>,
        /// ADM's reference batch: mu/sigma (+ mu_s/sigma_s, arr_0) — VIRTUAL_imagenet256_labeled.npz.
        #[arg(long = "ref")]
        reference: PathBuf,
        #[command(flatten)]
        inception: FidFlags,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Images per Inception batch.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        #[command(flatten)]
        sample: SampleFlags,
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
        Command::Recon { model, images, out, batch } => {
            let device = model.device.resolve()?;
            sftok_model::eval::recon::run(&ReconRequest { model: model.spec(), images, out, batch, device })
        }
        Command::Doctor { device } => sftok::doctor(&device.device),
        Command::Rfid { model, shards, num, inception, float32, batch, save_images, json } => {
            let device = model.device.resolve()?;
            sftok_model::eval::rfid::run(&RfidOptions {
                model: model.spec(),
                shards,
                num,
                weights: inception.weights,
                random_weights: inception.random_weights,
                float32,
                batch,
                device,
                save_images,
                json,
            })
        }
        Command::Fid { a, b, save_stats, save_stats_b, json, device, batch, pipeline, float64, inception, skip_bad, threads } => {
            sftok_model::eval::fid::run(&FidOptions {
                a,
                b,
                save_stats,
                save_stats_b,
                json,
                device: device.resolve()?,
                batch,
                pipeline: pipeline.into(),
                float64,
                weights: inception.weights,
                random_weights: inception.random_weights,
                skip_bad,
                threads,
                about_b: None,
            })
        }
        Command::Sample { sample } => sample.run().map(|_| ()),
        Command::Gfid { samples, reference, inception, json, batch, sample } => gfid(samples, reference, inception, json, batch, sample),
        Command::BenchFeatures { batch, batches, warmup, size, threads, float64, pipeline, seed } => {
            sftok_model::eval::bench::features(&FeatureBench {
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
        Command::BenchFrechet { a, b, threads } => sftok_model::eval::bench::frechet(&a, &b, threads),
    });
}

fn gfid(samples: Option<PathBuf>, reference: PathBuf, inception: FidFlags, json: bool, batch: usize, sample: SampleFlags) -> anyhow::Result<()> {
    let device = sample.device.resolve()?;
    let samples = match samples {
        Some(s) => s,
        None => {
            let report = sample.run()?;
            if !report.merged {
                return Ok(()); // ranks > 0 only generate; rank 0 evaluates
            }
            report.out
        }
    };
    let about_b = sftok_model::eval::sample::read_sidecar(&samples)?;
    sftok_model::eval::fid::run(&FidOptions {
        a: reference,
        b: samples,
        save_stats: None,
        save_stats_b: None,
        json,
        device,
        batch,
        pipeline: Pipeline::Tf1.into(),
        float64: false,
        weights: inception.weights,
        random_weights: inception.random_weights,
        skip_bad: false,
        threads: None,
        about_b,
    })
}
