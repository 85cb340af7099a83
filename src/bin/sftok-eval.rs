//! `sftok-eval`: FID-family metrics and reconstructions.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sftok_model::recon::{ReconRequest, run};
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
        /// Weights: .safetensors / .bin / .pth, or a directory with config.json + model.safetensors.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Model config (YAML); default: config.json beside the checkpoint.
        #[arg(long)]
        config: Option<PathBuf>,
        /// MaskGIT-VQGAN teacher for stage-1/2 checkpoints (a file, or random:SEED for smoke tests).
        #[arg(long)]
        teacher: Option<String>,
        /// Images to reconstruct.
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        /// Output directory (grid.png, tokens.json).
        #[arg(long)]
        out: PathBuf,
        /// Decoding steps (default: model.generator.num_steps, 8).
        #[arg(long)]
        steps: Option<i64>,
        /// Seed of the decoder's Gumbel sampling.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Images per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Config overrides: section.key=value
        overrides: Vec<String>,
    },
    /// Check that libtorch loads and computes correctly on the chosen device.
    #[command(after_help = "Example:\n  sftok-eval doctor --device auto")]
    Doctor {
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn main() {
    sftok::run_main(|| match Cli::parse().command {
        Command::Recon { checkpoint, config, teacher, images, out, steps, seed, batch, device, overrides } => {
            let device = sftok_model::device::parse_device(&device)?;
            let req = ReconRequest { checkpoint, config, overrides, teacher, images, out, steps, seed, batch, device };
            recon(&req)
        }
        Command::Doctor { device } => sftok::doctor(&device),
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
