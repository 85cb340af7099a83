//! `sftok-prep`: data preparation — synthetic ImageNet, sharding, proxy codes.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sftok_pipeline::progress::Progress;
use sftok_pipeline::imagenet::class_map;
use sftok_pipeline::manifest;
use sftok_pipeline::part::Part;
use sftok_pipeline::procstat::{cpu_seconds, load_average, peak_rss_mb};
use sftok_pipeline::shard::{Job, ShardOptions, VerifyLevel};
use sftok_pipeline::loader::LoaderConfig;
use sftok_pipeline::loader::bench::{BenchOptions, bench_load as run_bench};
use sftok_pipeline::synth::{SynthOptions, synth_imagenet};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// Convert an ImageNet folder into webdataset shards (+ manifest.json per split).
    ///
    /// Samples are globally shuffled with --seed; the shards are byte-identical for the same input
    /// and options whatever --workers is. Rerunning the same command after an interruption keeps
    /// the finished shards (checked against their sha256) and writes the rest.
    #[command(after_help = "Example:\n  sftok-prep shard imagenet/ --out shards --split all --shard-size 1000 --seed 0\n  \
        sftok-prep shard imagenet/ --out shards --part 2/4   # this machine writes every 4th shard\n  \
        sftok-prep merge-manifests shards                    # after all 4 parts")]
    Shard {
        /// ImageNet root: holds train/<synset>/*.JPEG, val/, LOC_val_solution.csv, LOC_synset_mapping.txt.
        root: PathBuf,
        /// Output folder; shards go to OUT/<split>/<split>-000000.tar …
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = SplitArg::All)]
        split: SplitArg,
        /// Samples per shard.
        #[arg(long, default_value_t = 1000)]
        shard_size: usize,
        /// Seed of the global shuffle.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Worker threads (default: all cores). Does not change the output.
        #[arg(long)]
        workers: Option<usize>,
        /// header: marker walk + end-of-image check of every file (fast); full: decode every image.
        #[arg(long, value_enum, default_value_t = VerifyArg::Header)]
        verify: VerifyArg,
        /// Downscale images whose shorter side is larger than PX to PX (re-encoded at --quality).
        #[arg(long, value_name = "PX")]
        resize_shorter: Option<u32>,
        /// JPEG quality of every re-encoded image (conversions, resizes).
        #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
        quality: u8,
        /// Write only part K of N (1-based): shards i with i mod N = K-1, plus a partial manifest.
        #[arg(long, value_name = "K/N")]
        part: Option<Part>,
        /// Leave val images without a label out (listed as skipped) instead of stopping.
        #[arg(long)]
        skip_unlabelled: bool,
        /// Exit non-zero if any file was skipped.
        #[arg(long)]
        strict: bool,
        /// Print a `RESULT NAME images=… seconds=…` line for ../shared/bench/run_bench.py.
        #[arg(long, value_name = "NAME")]
        bench_result: Option<String>,
    },
    /// Re-check every shard against its manifest (size, sha256, samples, keys) and print totals.
    #[command(after_help = "Example:\n  sftok-prep verify shards            # every split under shards/\n  \
        sftok-prep verify shards/train --merge   # merge the --part manifests first")]
    Verify {
        /// A split folder (holding manifest.json) or the --out folder of `shard`.
        shards: PathBuf,
        /// First merge the partial manifests of `shard --part K/N` runs.
        #[arg(long)]
        merge: bool,
        /// Threads (default: all cores).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Combine the partial manifests of `shard --part K/N` runs into manifest.json; refuses if a part is missing.
    #[command(after_help = "Example:\n  sftok-prep merge-manifests shards")]
    MergeManifests {
        /// A split folder or the --out folder of `shard`.
        shards: PathBuf,
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
        /// Images for the in-memory decode-only and decode+transform rates, taken from the start of
        /// the shards (0 = skip). The default covers the bench's 1000-image set, so the rates are
        /// over the images the loader decodes.
        #[arg(long, default_value_t = 1000)]
        decode_images: usize,
        /// Free-form label echoed in the RESULT lines.
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// Run the MaskGIT-VQGAN teacher over fixed views of every image → one Parquet file of proxy codes per shard.
    #[command(after_help = "Example:\n  sftok-prep proxy-codes --teacher maskgit-vqgan-imagenet-f16-256.bin --shards shards/train --out codes/train\n\n\
        Views (--views V): V = 1 is the eval center crop; an even V is V/2 crop offsets evenly spaced along the\n\
        long side (ends included, short side centered) × {no flip, flip}. Default 10 (the ten-crop practice).\n\
        Finished per-shard files are kept when the command is re-run (resume); --part K/N splits the shards.")]
    ProxyCodes {
        /// Teacher checkpoint (maskgit-vqgan-imagenet-f16-256.bin, .pth or .safetensors), or random:SEED for smoke tests.
        #[arg(long)]
        teacher: String,
        #[command(flatten)]
        views: ViewFlags,
    },
    /// Run a trained SFTok tokenizer over fixed views of every image → one Parquet file of its 64 token ids per
    /// view per shard, the generator's training targets (dataset.params.pretokenization).
    #[command(after_help = "Example:\n  sftok-prep tokenize --checkpoint outputs/sftok_b64_stage3_run1/ema_model --shards shards/train --out tokens/train\n\n\
        Default views: 2 = the centre crop and its mirror image (the generator's transform: centre crop + random flip).\n\
        OptVQ's Sinkhorn assignment spans one encoder call, so ids depend on which views are encoded together:\n\
        --batch consecutive views in shard order per call (recorded in the files' sftok.batching). Default 128,\n\
        the generator's per-GPU batch. Resumable per shard; --part K/N splits the shards.")]
    Tokenize {
        /// The tokenizer: a stage-3 weights directory (model.safetensors + config.json) or file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Its config, when there is no config.json beside the weights (configs/sftok_b64_stage3.yaml for SFTok-B).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        views: ViewFlags,
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
        Command::ProxyCodes { teacher, views } => proxy_codes(teacher, views),
        Command::Tokenize { checkpoint, config, views } => tokenize(checkpoint, config, views),
        Command::Shard {
            root,
            out,
            split,
            shard_size,
            seed,
            workers,
            verify,
            resize_shorter,
            quality,
            part,
            skip_unlabelled,
            strict,
            bench_result,
        } => {
            let opts = ShardOptions {
                root,
                out,
                shard_size,
                seed,
                workers: workers.unwrap_or_else(default_workers),
                verify: match verify {
                    VerifyArg::Header => VerifyLevel::Header,
                    VerifyArg::Full => VerifyLevel::Full,
                },
                resize_shorter,
                quality,
                part,
                skip_unlabelled,
            };
            shard(&opts, split, strict, bench_result.as_deref())
        }
        Command::Verify { shards, merge, workers } => verify(&shards, merge, workers.unwrap_or_else(default_workers)),
        Command::MergeManifests { shards } => merge_manifests(&shards),
    });
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Val,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerifyArg {
    Header,
    Full,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many skipped files the end-of-run summary lists (all of them are in the manifest).
const SHOW_SKIPPED: usize = 50;

fn shard(opts: &ShardOptions, split: SplitArg, strict: bool, bench_result: Option<&str>) -> Result<()> {
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let classes = class_map(&opts.root)?;
    let splits: Vec<&str> = match split {
        SplitArg::Train => vec!["train"],
        SplitArg::Val => vec!["val"],
        SplitArg::All => ["train", "val"].into_iter().filter(|s| opts.root.join(s).is_dir()).collect(),
    };
    if splits.is_empty() {
        bail!("{} has neither train/ nor val/: is it the ImageNet root?", opts.root.display());
    }
    let (mut images, mut in_bytes, mut out_bytes, mut skipped_total) = (0usize, 0u64, 0u64, 0usize);
    for split in splits {
        let job = Job::prepare(opts, &classes, split)?;
        let (mine, done, todo) = job.counts();
        println!(
            "{split}: {} classes ({}), {} shard(s) planned{}; {done} finished shard(s) kept, {todo} images to write",
            classes.classes.len(),
            classes.source,
            job.planned_shards(),
            opts.part.map_or(String::new(), |p| format!(", {mine} in part {p}")),
        );
        for w in job.warnings() {
            eprintln!("warning: {w}");
        }
        let progress = Progress::new(&format!("shard {split}"), todo as u64, "images");
        let outcome = job.run(&|| progress.inc(1))?;
        progress.finish();
        let m = &outcome.manifest;
        images += outcome.processed;
        in_bytes += outcome.processed_bytes;
        out_bytes += m.totals.bytes;
        skipped_total += m.skipped.len();
        println!(
            "{split}: {} samples in {} shard(s) ({:.1} MB), {} converted to RGB JPEG, {} skipped, {} non-image files ignored",
            m.totals.samples,
            m.totals.shards,
            m.totals.bytes as f64 / 1e6,
            m.totals.converted,
            m.totals.skipped,
            m.totals.ignored_non_images
        );
        for s in m.skipped.iter().take(SHOW_SKIPPED) {
            println!("  skipped {}: {}", s.path, s.reason);
        }
        if m.skipped.len() > SHOW_SKIPPED {
            println!("  … {} more skipped files listed in the manifest", m.skipped.len() - SHOW_SKIPPED);
        }
        println!("{split}: manifest {}", outcome.manifest_path.display());
    }
    if let Some(name) = bench_result {
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_start;
        println!(
            "RESULT {name} images={images} seconds={secs:.3} images_per_s={:.1} in_MB={:.1} in_MB_per_s={:.1} \
             out_MB={:.1} cpu_s={cpu:.3} images_per_cpu_s={:.1} peak_rss_MB={:.1} workers={}",
            images as f64 / secs,
            in_bytes as f64 / 1e6,
            in_bytes as f64 / 1e6 / secs,
            out_bytes as f64 / 1e6,
            images as f64 / cpu.max(0.01), // /proc reports CPU time in 10 ms ticks
            peak_rss_mb(),
            opts.workers
        );
    }
    if strict && skipped_total > 0 {
        bail!("{skipped_total} file(s) skipped and --strict is set (they are listed above and in the manifest)");
    }
    Ok(())
}

/// Split folders under `path`: itself if it holds a manifest (full or partial), else its
/// sub-folders that do.
fn split_dirs(path: &Path) -> Result<Vec<PathBuf>> {
    let has_manifest = |d: &Path| {
        d.join(manifest::MANIFEST).exists()
            || std::fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("manifest.part-"))
            })
    };
    if has_manifest(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && has_manifest(p))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("no manifest.json under {}: run `sftok-prep shard` first (or merge-manifests after --part runs)", path.display());
    }
    Ok(dirs)
}

fn merge_manifests(path: &Path) -> Result<()> {
    for dir in split_dirs(path)? {
        let m = manifest::merge(&dir)?;
        println!(
            "{}: merged {} shards, {} samples, {} skipped → {}",
            m.split,
            m.totals.shards,
            m.totals.samples,
            m.totals.skipped,
            dir.join(manifest::MANIFEST).display()
        );
    }
    Ok(())
}

fn verify(path: &Path, merge: bool, workers: usize) -> Result<()> {
    let mut bad = 0;
    for dir in split_dirs(path)? {
        if merge {
            manifest::merge(&dir)?;
        }
        let (m, report) = manifest::verify(&dir, workers)?;
        for p in &report.problems {
            println!("  problem: {p}");
        }
        println!(
            "{}: {} shard(s), {} samples, {:.1} MB, {} input file(s) skipped when sharding: {}",
            m.split,
            report.shards,
            report.samples,
            report.bytes as f64 / 1e6,
            m.skipped.len(),
            if report.problems.is_empty() { "ok".to_string() } else { format!("{} problem(s)", report.problems.len()) }
        );
        bad += report.problems.len();
    }
    if bad > 0 {
        bail!("{bad} problem(s) found; rerun the same `sftok-prep shard` command to rewrite damaged shards");
    }
    Ok(())
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
        r.images, r.seconds, r.images_per_s(), r.cpu_s, r.images_per_cpu_s(), report.peak_rss_mb, load_average()
    );
    let rates = [
        ("load_rust_entropy_only", &report.entropy),
        ("load_rust_decode_only", &report.decode),
        ("load_rust_decode_transform", &report.transform),
    ];
    for (name, rate) in rates {
        if let Some(d) = rate {
            println!(
                "RESULT {name}{tag} workers={workers} images={} seconds={:.3} images_per_s={:.1} cpu_s={:.2} images_per_cpu_s={:.1} loader_fraction={:.3} load1={:.2}",
                d.images, d.seconds, d.images_per_s(), d.cpu_s, d.images_per_cpu_s(), r.images_per_s() / d.images_per_s(), load_average()
            );
        }
    }
    Ok(())
}

/// The flags of the per-view encoding passes (proxy codes, tokens). `--views` and `--batch` have
/// per-command defaults (see `request`), so they are options here.
#[derive(clap::Args)]
struct ViewFlags {
    /// Shard directory, manifest.json or brace pattern.
    #[arg(long)]
    shards: String,
    /// Output directory for the Parquet files.
    #[arg(long)]
    out: PathBuf,
    /// Stored views per image (1, or an even number). Default: proxy-codes 10, tokenize 2.
    #[arg(long)]
    views: Option<usize>,
    /// Shorter edge after resizing (dataset.preprocessing.resize_shorter_edge).
    #[arg(long, default_value_t = 256)]
    resize_shorter: u32,
    /// Crop size (dataset.preprocessing.crop_size).
    #[arg(long, default_value_t = 256)]
    crop: u32,
    /// Views per encoder call. Default: proxy-codes 64, tokenize 128.
    #[arg(long)]
    batch: Option<usize>,
    #[command(flatten)]
    device: sftok::flags::DeviceFlag,
    /// Do shards K, K+N, … of this conversion (1-based), e.g. 2/8. Default: this process's share
    /// under torchrun (RANK+1 / WORLD_SIZE) or srun (SLURM_PROCID+1 / SLURM_NTASKS), else 1/1.
    #[arg(long, value_name = "K/N")]
    part: Option<Part>,
}

impl ViewFlags {
    fn request(self, default_views: usize, default_batch: usize) -> Result<sftok_model::view_codes::ViewCodesRequest> {
        // Under torchrun / srun: this process's share of the shards (and its GPU: DeviceFlag).
        let env = sftok_pipeline::launch_env::ProcessEnv::from_env()?;
        Ok(sftok_model::view_codes::ViewCodesRequest {
            shards: self.shards,
            out: self.out,
            views: self.views.unwrap_or(default_views),
            resize_shorter_edge: self.resize_shorter,
            crop_size: self.crop,
            device: self.device.resolve()?,
            batch: self.batch.unwrap_or(default_batch),
            part: match self.part {
                Some(p) => p,
                None => Part::new(env.rank + 1, env.world_size)?,
            },
        })
    }
}

fn proxy_codes(teacher: String, flags: ViewFlags) -> Result<()> {
    if teacher.starts_with("random:") {
        eprintln!("warning: --teacher {teacher}: a randomly initialised teacher (no weights ship with sftok); these codes only exercise the pipeline");
    }
    let req = flags.request(10, 64)?;
    encode_views("proxy-codes", &req, |on| sftok_model::proxy_codes::run(&teacher, &req, on))?;
    println!("codes: {}", req.out.display());
    Ok(())
}

fn tokenize(checkpoint: PathBuf, config: Option<PathBuf>, flags: ViewFlags) -> Result<()> {
    let req = flags.request(2, 128)?;
    let spec = sftok_model::eval::recon::ModelSpec { checkpoint, config, overrides: vec![], teacher: None, steps: None, seed: 0 };
    let sum = encode_views("tokenize", &req, |on| sftok_model::tokenize::run(&spec, &req, on))?;
    if let (Some(h), Some(bound)) = (sum.unigram_entropy(0.0), sum.unigram_entropy(0.1)) {
        println!("unigram entropy of the ids written here: {h:.3} nats; with label smoothing 0.1: {bound:.3} (a generator's masked-token loss below it uses class and context)");
    }
    println!("tokens: {}  (dataset.params.pretokenization={} for sftok-train generator)", req.out.display(), req.out.display());
    Ok(())
}

/// Plan, progress bar and summary around one per-view encoding pass.
fn encode_views(
    what: &str,
    req: &sftok_model::view_codes::ViewCodesRequest,
    run: impl FnOnce(&dyn Fn(u64)) -> Result<sftok_model::view_codes::ViewCodesSummary>,
) -> Result<sftok_model::view_codes::ViewCodesSummary> {
    let todo = sftok_model::view_codes::plan(req)?;
    let pending: Vec<_> = todo.iter().filter(|(_, d)| !d.is_file()).collect();
    // Sample counts for the progress bar, from the shards' manifest when there is one.
    let counts = |s: &sftok_pipeline::loader::sources::Shard| -> u64 {
        let m = s.path.parent().map(|d| d.join(sftok_pipeline::manifest::MANIFEST));
        m.and_then(|m| sftok_pipeline::manifest::Manifest::read(&m).ok())
            .and_then(|m| m.shards.iter().find(|e| e.name == s.name).map(|e| e.count as u64))
            .unwrap_or(0)
    };
    let images: u64 = pending.iter().map(|(s, _)| counts(s)).sum();
    let part = &req.part;
    sftok_pipeline::progress::status_line(&format!(
        "{} shard(s) in part {part}: {} to do, {} already done; device {}",
        todo.len(),
        pending.len(),
        todo.len() - pending.len(),
        sftok_model::device::describe(req.device)
    ));
    let progress = Progress::new(what, images * req.views as u64, "views");
    let t0 = std::time::Instant::now();
    let sum = run(&|n| progress.inc(n))?;
    progress.finish();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} shard(s) written, {} kept; {} images, {} views in {secs:.1} s ({:.1} views/s); {} of {} ids used",
        sum.shards_written,
        sum.shards_kept,
        sum.images,
        sum.views,
        sum.views as f64 / secs.max(1e-9),
        sum.codes_used(),
        sum.code_histogram.len()
    );
    if sum.views > 0 && sum.codes_used() < 16.min(sum.code_histogram.len()) {
        eprintln!("warning: only {} distinct ids: a broken checkpoint load (or random weights) looks like this", sum.codes_used());
    }
    if !sum.skipped.is_empty() {
        eprintln!("{} sample(s) skipped (undecodable):", sum.skipped.len());
        for (shard, key, why) in &sum.skipped {
            eprintln!("  {shard} / {key}: {why}");
        }
    }
    Ok(sum)
}
