//! `sftok-eval fid A B`: FID, sFID, Inception Score and precision/recall between two inputs, each
//! a folder of PNG/JPEG images, an `.npz` sample batch (`arr_0`), or an ADM reference batch /
//! saved statistics (`mu`, `sigma`, optionally `mu_s`, `sigma_s`, `arr_0`). ADM's conventions
//! (evaluation.md §2): A plays the reference batch, B the samples; statistics stored in a file
//! are used as they are; activations of any images present are computed for IS and P/R.

use super::features::FeatureSet;
use super::frechet::{Frechet, frechet_distance};
use super::npz::{NpzReader, write_npz};
use super::prdc::{ADM_K, precision_recall};
use super::source::{Extractor, Side, Source, read_stats, side};
use super::stats::Stats;
use crate::inception::{CONVERT_SNIPPET, FidInception, FidInceptionConfig, InputPipeline, load_inception};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

/// Sample count of published FIDs; fewer samples bias FID upward.
const PUBLISHED_N: u64 = 50_000;

pub struct FidOptions {
    pub a: PathBuf,
    pub b: PathBuf,
    pub save_stats: Option<PathBuf>,
    pub save_stats_b: Option<PathBuf>,
    pub json: bool,
    pub device: Device,
    pub batch: usize,
    pub pipeline: InputPipeline,
    pub float64: bool,
    pub weights: Option<PathBuf>,
    pub random_weights: Option<i64>,
    pub skip_bad: bool,
    pub threads: Option<usize>,
    /// How B was made (gFID: the sample batch's `.npz.json`), reported with the metrics.
    pub about_b: Option<Value>,
}

/// The FID Inception from `--weights` (pytorch-fid's file or a safetensors copy) or
/// `--random-weights SEED` (smoke tests), in float64 or float32; shared by `fid`, `rfid` and the
/// trainer's periodic evaluation.
pub fn inception_network(weights: Option<&Path>, random_weights: Option<i64>, float64: bool, device: Device) -> Result<FidInception> {
    let kind = if float64 { Kind::Double } else { Kind::Float };
    match (weights, random_weights) {
        (Some(path), None) => load_inception(path, device, kind),
        (None, Some(seed)) => {
            let mut net = FidInception::new(FidInceptionConfig::default(), device, kind)?;
            net.randomize(seed);
            Ok(net)
        }
        (Some(_), Some(_)) => bail!("--weights and --random-weights exclude each other"),
        (None, None) => bail!(
            "image inputs need the FID Inception weights: pass --weights pt_inception-2015-12-05-6726825d.pth \
             (pytorch-fid's file, the TF 2015-12-05 Inception graph converted to PyTorch; loaded as it is) \
             or a safetensors copy of it. Nothing is downloaded by sftok:\n{CONVERT_SNIPPET}"
        ),
    }
}

fn save_stats(path: &Path, side: &Side) -> Result<()> {
    let mut arrays = vec![("mu", &side.stats.mu), ("sigma", &side.stats.sigma)];
    if let Some(s) = &side.spatial {
        arrays.push(("mu_s", &s.mu));
        arrays.push(("sigma_s", &s.sigma));
    }
    write_npz(path, &arrays)?;
    eprintln!("saved statistics of {} to {}", side.label, path.display());
    Ok(())
}

/// Fréchet distance with the time it took (the benchmark reports it).
pub fn timed_frechet(a: &Stats, b: &Stats) -> Result<(Frechet, f64)> {
    let t0 = Instant::now();
    let f = frechet_distance(a, b)?;
    if f.eps_retry {
        eprintln!("warning: the Fréchet distance was not finite; retried with ε = 1e-6 added to both covariances (ADM)");
    }
    Ok((f, t0.elapsed().as_secs_f64()))
}

/// Reads `mu`/`sigma` of a statistics `.npz` (for `bench-frechet`).
pub fn stats_file(path: &Path) -> Result<Stats> {
    let mut npz = NpzReader::open(path)?;
    read_stats(&mut npz, "mu", "sigma").with_context(|| format!("{}: statistics need `mu` and `sigma`", path.display()))
}

pub fn run(opts: &FidOptions) -> Result<()> {
    ensure!(opts.batch > 0, "--batch must be positive");
    if let Some(n) = opts.threads {
        tch::set_num_threads(n as i32);
    }
    let source_a = Source::detect(&opts.a)?;
    let source_b = Source::detect(&opts.b)?;
    let net = match source_a.needs_network() || source_b.needs_network() {
        true => Some(inception_network(opts.weights.as_deref(), opts.random_weights, opts.float64, opts.device)?),
        false => None,
    };
    let pipeline_name = match opts.pipeline {
        InputPipeline::Tf1 => "tf1",
        InputPipeline::PytorchFid => "pytorch-fid",
    };
    if opts.random_weights.is_some() {
        eprintln!("WARNING: --random-weights: the Inception has RANDOM weights; every number below is MEANINGLESS (smoke test only).");
    }
    let extractor = net.as_ref().map(|net| Extractor { net, pipeline: opts.pipeline, batch: opts.batch, skip_bad: opts.skip_bad });
    let a = side("A", &opts.a, source_a, extractor.as_ref())?;
    let b = side("B", &opts.b, source_b, extractor.as_ref())?;
    if let Some(path) = &opts.save_stats {
        save_stats(path, &a)?;
    }
    if let Some(path) = &opts.save_stats_b {
        save_stats(path, &b)?;
    }

    let (fid, fid_seconds) = timed_frechet(&a.stats, &b.stats)?;
    let sfid = match (&a.spatial, &b.spatial) {
        (Some(sa), Some(sb)) => Some(timed_frechet(sa, sb)?.0.value),
        _ => None,
    };
    let pr = match (&a.features, &b.features) {
        (Some(fa), Some(fb)) => Some(precision_recall(&fa.pool3_features(), &fb.pool3_features(), ADM_K)?),
        _ => None,
    };
    // Only statistics computed here have a known sample count (ADM's reference statistics cover
    // the whole training set).
    let few = [&a, &b]
        .iter()
        .filter(|s| !s.stats_from_file)
        .filter_map(|s| s.features.as_ref().map(FeatureSet::count))
        .filter(|&n| n < PUBLISHED_N)
        .min();
    if let Some(n) = few {
        eprintln!(
            "\n!!! WARNING: only {n} samples compared (published FIDs use {PUBLISHED_N}). FID is biased upward \
             for small N: do NOT compare these numbers with published ones. !!!\n"
        );
    }
    let skipped = a.skipped + b.skipped;
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} unreadable image(s) (--skip-bad)");
    }

    let side_json = |s: &Side| -> Result<Value> {
        let mut v = json!({ "input": s.label, "skipped": s.skipped, "statistics_from_file": s.stats_from_file });
        if let Some(f) = &s.features {
            v["images"] = json!(f.count());
            v["inception_score_adm"] = json!(f.inception_score.adm()?);
            v["inception_score_reference_evaluator"] = json!(f.inception_score.reference()?);
        }
        Ok(v)
    };
    let report = json!({
        "fid": fid.value,
        "sfid": sfid,
        "precision": pr.as_ref().map(|p| p.precision),
        "recall": pr.as_ref().map(|p| p.recall),
        "a": side_json(&a)?,
        "b": side_json(&b)?,
        "pipeline": pipeline_name,
        "network_dtype": if opts.float64 { "float64" } else { "float32" },
        "weights": opts.weights.as_ref().map(|p| p.display().to_string()),
        "random_weights_seed": opts.random_weights,
        "fewer_than_50000_samples": few.is_some(),
        "frechet_seconds": fid_seconds,
        "frechet_singular_covariance": fid.singular,
        "b_made_by": opts.about_b,
    });
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let meaningless = if opts.random_weights.is_some() { "   (RANDOM WEIGHTS: meaningless)" } else { "" };
    for s in [&a, &b] {
        let what = match (&s.features, s.stats_from_file) {
            (Some(f), false) => format!("{} images, features computed", f.count()),
            (Some(f), true) => format!("statistics from the file; {} images' features for IS and P/R", f.count()),
            (None, _) => "statistics from the file".to_string(),
        };
        println!("{:<28} {} ({what})", "input", s.label);
    }
    if let Some(about) = &opts.about_b {
        let m = &about["made_by"];
        if m.is_object() {
            println!("{:<28} {} + tokenizer {}, seed {}", "B made by generator", m["generator"], m["tokenizer"], m["seed"]);
            println!("{:<28} {}", "B sampling", serde_json::to_string(&m["sampling"])?);
            println!("{:<28} {}", "B tokenizer decoding", serde_json::to_string(&m["tokenizer_decoding"])?);
        } else {
            println!("{:<28} {}", "B made by", serde_json::to_string(about)?);
        }
    }
    if net.is_some() {
        println!("{:<28} {pipeline_name} resize, {} network", "pipeline", report["network_dtype"].as_str().unwrap_or(""));
    }
    println!("{:<28} {:.4}{meaningless}", "FID", fid.value);
    if let Some(v) = sfid {
        println!("{:<28} {v:.4}{meaningless}", "sFID");
    }
    for (name, s) in [("A", &a), ("B", &b)] {
        if let Some(f) = &s.features {
            println!(
                "{:<28} {:.4}  (reference evaluator, 1 split: {:.4}){meaningless}",
                format!("IS {name} (ADM, 5000/split)"),
                f.inception_score.adm()?,
                f.inception_score.reference()?
            );
        }
    }
    if let Some(p) = &pr {
        println!("{:<28} {:.4}{meaningless}", "Precision (k=3, ref = A)", p.precision);
        println!("{:<28} {:.4}{meaningless}", "Recall (k=3, ref = A)", p.recall);
    }
    Ok(())
}
