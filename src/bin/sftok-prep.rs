//! `sftok-prep`: data preparation — synthetic ImageNet, sharding, proxy codes.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sftok::progress::Progress;
use sftok_pipeline::synth::{SynthOptions, synth_imagenet};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sftok-prep", version, about = "Prepare data for SFTok: ImageNet folders → shards → proxy codes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic fake ImageNet tree (train/<synset>/*.JPEG, val/, LOC_* label files).
    #[command(after_help = "Example:\n  sftok-prep synth --out fake-imagenet --classes 10 --per-class 20 --val 50 --seed 0")]
    Synth {
        /// Output root (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Number of classes (synsets n00000001, n00000002, …).
        #[arg(long, default_value_t = 20)]
        classes: usize,
        /// Training images per class.
        #[arg(long, default_value_t = 50)]
        per_class: usize,
        /// Validation images (labels in LOC_val_solution.csv).
        #[arg(long, default_value_t = 200)]
        val: usize,
        /// Random seed: the same seed gives byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Check that libtorch loads and computes correctly on the chosen device.
    #[command(after_help = "Example:\n  sftok-prep doctor --device auto")]
    Doctor {
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn main() {
    sftok::run_main(|| match Cli::parse().command {
        Command::Synth { out, classes, per_class, val, seed } => synth(out, classes, per_class, val, seed),
        Command::Doctor { device } => sftok::doctor(&device),
    });
}

fn synth(out: PathBuf, classes: usize, per_class: usize, val: usize, seed: u64) -> Result<()> {
    let total = (classes * per_class + val) as u64;
    let progress = Progress::new("synth", total, "images");
    let opts = SynthOptions { out: out.clone(), classes, per_class, val, seed };
    let summary = synth_imagenet(&opts, &|| progress.inc(1))?;
    progress.finish();
    println!(
        "wrote {} images ({} train, {} val) to {}: mean {:.1} KB, mean {:.0}x{:.0} px",
        summary.train_images + summary.val_images,
        summary.train_images,
        summary.val_images,
        out.display(),
        summary.mean_kb(),
        summary.mean_width,
        summary.mean_height
    );
    Ok(())
}
