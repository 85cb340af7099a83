//! `sftok-prep`: data preparation — synthetic ImageNet, sharding, proxy codes.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sftok::progress::Progress;
use sftok_pipeline::loader::LoaderConfig;
use sftok_pipeline::loader::bench::{BenchOptions, bench_load as run_bench, load1};
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
    /// Time the training loader on shards (RESULT lines, comparable with bench_load_py.py).
    #[command(after_help = "Example:\n  sftok-prep bench-load SHARDS/train --batch 64 --workers 2")]
    BenchLoad {
        /// Shard directory, manifest.json, .tar file or brace pattern (repeatable).
        #[arg(required = true)]
        shards: Vec<String>,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Decode threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Untimed batches first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Timed batches.
        #[arg(long, default_value_t = 30)]
        batches: usize,
        /// Eval transform (Resize + CenterCrop, no shuffling) instead of the train transform.
        #[arg(long)]
        eval: bool,
        /// Shuffle buffer (train).
        #[arg(long, default_value_t = 5000)]
        shuffle_buf: usize,
        /// Images for the in-memory decode-only and decode+transform rates (0 = skip).
        #[arg(long, default_value_t = 300)]
        decode_images: usize,
        /// Free-form label echoed in the RESULT lines.
        #[arg(long, default_value = "")]
        tag: String,
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
        Command::BenchLoad { shards, batch, workers, warmup, batches, eval, shuffle_buf, decode_images, tag } => {
            bench_load(shards, batch, workers, warmup, batches, eval, shuffle_buf, decode_images, &tag)
        }
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

#[allow(clippy::too_many_arguments)]
fn bench_load(shards: Vec<String>, batch: usize, workers: usize, warmup: usize, batches: usize, eval: bool, shuffle_buf: usize, decode_images: usize, tag: &str) -> Result<()> {
    let mut loader = if eval { LoaderConfig::eval(shards) } else { LoaderConfig::train(shards) };
    (loader.batch_size, loader.workers, loader.epochs) = (batch, workers, None);
    if !eval {
        loader.shuffle_buffer = shuffle_buf;
    }
    let report = run_bench(&BenchOptions { loader, warmup, batches, decode_images })?;
    let tag = if tag.is_empty() { String::new() } else { format!(" tag={tag}") };
    let mode = if eval { "eval" } else { "train" };
    let r = &report.loader;
    println!(
        "RESULT load_rust{tag} transform={mode} batch={batch} workers={workers} images={} seconds={:.3} images_per_s={:.1} cpu_s={:.2} images_per_cpu_s={:.1} peak_rss_mb={:.0} load1={:.2}",
        r.images, r.seconds, r.images_per_s(), r.cpu_s, r.images_per_cpu_s(), report.peak_rss_mb, load1()
    );
    for (name, rate) in [("load_rust_decode_only", &report.decode), ("load_rust_decode_transform", &report.transform)] {
        if let Some(d) = rate {
            println!(
                "RESULT {name}{tag} workers={workers} images={} seconds={:.3} images_per_s={:.1} cpu_s={:.2} images_per_cpu_s={:.1} loader_fraction={:.3} load1={:.2}",
                d.images, d.seconds, d.images_per_s(), d.cpu_s, d.images_per_cpu_s(), r.images_per_s() / d.images_per_s(), load1()
            );
        }
    }
    Ok(())
}
