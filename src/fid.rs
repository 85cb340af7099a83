//! `sftok-eval fid A B`: FID, sFID, Inception Score and precision/recall between two inputs, each
//! a folder of PNG/JPEG images, an `.npz` sample batch (`arr_0`), or an ADM reference batch /
//! saved statistics (`mu`, `sigma`, optionally `mu_s`, `sigma_s`, `arr_0`). ADM's conventions
//! (evaluation.md §2): A plays the reference batch, B the samples; statistics stored in a file
//! are used as they are; activations of any images present are computed for IS and P/R.

use crate::progress::Progress;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sftok_model::eval::features::FeatureSet;
use sftok_model::eval::frechet::{Frechet, frechet_distance};
use sftok_model::eval::npz::{NpzReader, write_npz};
use sftok_model::eval::prdc::{ADM_K, precision_recall};
use sftok_model::eval::stats::Stats;
use sftok_model::inception::{CONVERT_SNIPPET, FidInception, FidInceptionConfig, InputPipeline, load_inception};
use sftok_pipeline::image_dir;
use sftok_pipeline::transform::RgbImage;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Sample count of published FIDs; fewer samples bias FID upward.
const PUBLISHED_N: u64 = 50_000;

pub struct FidOptions {
    pub a: PathBuf,
    pub b: PathBuf,
    pub save_stats: Option<PathBuf>,
    pub save_stats_b: Option<PathBuf>,
    pub json: bool,
    pub device: String,
    pub batch: usize,
    pub pipeline: InputPipeline,
    pub float64: bool,
    pub weights: Option<PathBuf>,
    pub random_weights: Option<i64>,
    pub skip_bad: bool,
    pub threads: Option<usize>,
}

/// Where one side's numbers come from.
enum Source {
    Folder(Vec<PathBuf>),
    /// Webdataset shards (a directory of .tar / manifest.json, a .tar, or a brace pattern),
    /// read with the eval transform: Resize(256) + CenterCrop(256), as ImageNet FIDs are.
    Shards(String),
    Npz { path: PathBuf, has_images: bool, has_stats: bool },
}

impl Source {
    fn detect(path: &Path) -> Result<Source> {
        let text = path.display().to_string();
        let has_tars = |d: &Path| {
            std::fs::read_dir(d).map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "tar"))).unwrap_or(false)
        };
        if text.contains('{') || text.ends_with(".tar") || (path.is_dir() && (path.join("manifest.json").is_file() || has_tars(path))) {
            return Ok(Source::Shards(text));
        }
        if path.is_dir() {
            let files = image_dir::list_images(path)?;
            ensure!(!files.is_empty(), "{}: no .png/.jpg/.jpeg images in this folder", path.display());
            return Ok(Source::Folder(files));
        }
        ensure!(path.exists(), "{}: no such file or folder", path.display());
        let npz = NpzReader::open(path)?;
        let has_images = npz.contains("arr_0");
        let has_stats = npz.contains("mu") && npz.contains("sigma");
        ensure!(
            has_images || has_stats,
            "{}: neither images (`arr_0`) nor statistics (`mu` and `sigma`); arrays present: {:?}",
            path.display(),
            npz.names()
        );
        Ok(Source::Npz { path: path.to_path_buf(), has_images, has_stats })
    }

    fn needs_network(&self) -> bool {
        match self {
            Source::Folder(_) | Source::Shards(_) => true,
            Source::Npz { has_images, .. } => *has_images,
        }
    }
}

/// One side's results.
struct Side {
    label: String,
    stats: Stats,
    spatial: Option<Stats>,
    /// Computed from images (None when only statistics were read).
    features: Option<FeatureSet>,
    /// `stats` were read from the file (ADM: stored statistics win over the file's images).
    stats_from_file: bool,
    /// Unreadable images skipped with --skip-bad.
    skipped: usize,
}

fn read_stats(npz: &mut NpzReader, mu: &str, sigma: &str) -> Result<Stats> {
    let as_f64 = |t: Tensor| t.to_kind(Kind::Double);
    Ok(Stats { mu: as_f64(npz.read(mu)?), sigma: as_f64(npz.read(sigma)?) })
}

struct Extractor<'a> {
    net: &'a FidInception,
    pipeline: InputPipeline,
    batch: usize,
    skip_bad: bool,
}

impl Extractor<'_> {
    fn folder(&self, name: &str, files: &[PathBuf]) -> Result<(FeatureSet, usize)> {
        let mut set = FeatureSet::default();
        let mut skipped = 0;
        let progress = Progress::new(&format!("features {name}"), files.len() as u64, "images");
        for chunk in files.chunks(self.batch) {
            let mut run: Vec<RgbImage> = Vec::new();
            for (path, decoded) in chunk.iter().zip(image_dir::decode_all(chunk)) {
                let img = match decoded {
                    Ok(img) => img,
                    Err(e) if self.skip_bad => {
                        eprintln!("warning: skipping {}: {e:#}", path.display());
                        skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(e.context("an unreadable image stops the evaluation; --skip-bad skips it")),
                };
                // A batch tensor needs one size: flush the run when the size changes.
                if run.first().is_some_and(|f| (f.width, f.height) != (img.width, img.height)) {
                    self.add_run(&mut set, &mut run)?;
                }
                run.push(img);
            }
            self.add_run(&mut set, &mut run)?;
            progress.inc(chunk.len() as u64);
        }
        progress.finish();
        Ok((set, skipped))
    }

    fn add_run(&self, set: &mut FeatureSet, run: &mut Vec<RgbImage>) -> Result<()> {
        let Some(first) = run.first() else { return Ok(()) };
        let (w, h) = (first.width as i64, first.height as i64);
        let bytes: Vec<u8> = run.iter().flat_map(|img| img.data.iter().copied()).collect();
        let images = Tensor::from_data_size(&bytes, &[run.len() as i64, h, w, 3], Kind::Uint8);
        run.clear();
        set.add_images(self.net, &images, self.pipeline)
    }

    fn shards(&self, name: &str, sources: &str) -> Result<(FeatureSet, usize)> {
        use sftok_pipeline::batch::BatchStream;
        let mut lc = sftok_pipeline::loader::LoaderConfig::eval(vec![sources.to_string()]);
        lc.batch_size = self.batch;
        let mut loader = sftok_pipeline::loader::Loader::new(lc)?;
        let mut set = FeatureSet::default();
        let progress = Progress::new(&format!("features {name}"), 0, "images");
        while let Some(batch) = loader.next_batch()? {
            let s = batch.size as i64;
            let images = Tensor::from_data_size(&batch.images, &[batch.len() as i64, s, s, 3], Kind::Uint8);
            set.add_images(self.net, &images, self.pipeline)?;
            progress.inc(batch.len() as u64);
        }
        progress.finish();
        let skipped: usize = loader.epoch_reports().iter().map(|r| r.skipped as usize).sum();
        if skipped > 0 && !self.skip_bad {
            bail!("{sources}: {skipped} sample(s) could not be decoded (named in the warnings above); an FID on fewer images is a different number — fix the shards or pass --skip-bad");
        }
        Ok((set, skipped))
    }

    fn npz_images(&self, path: &Path) -> Result<FeatureSet> {
        let mut npz = NpzReader::open(path)?;
        let stream = npz.stream("arr_0", self.batch)?;
        let shape = stream.header.shape.clone();
        ensure!(
            stream.header.kind == Kind::Uint8 && shape.len() == 4 && shape[3] == 3,
            "{}: arr_0 must be uint8 [N, H, W, 3] (NHWC RGB, as ADM expects), got {:?} {:?}",
            path.display(),
            stream.header.kind,
            shape
        );
        let mut set = FeatureSet::default();
        let progress = Progress::new(&format!("features {}", path.display()), shape[0] as u64, "images");
        for batch in stream {
            let batch = batch?;
            set.add_images(self.net, &batch, self.pipeline)?;
            progress.inc(batch.size()[0] as u64);
        }
        progress.finish();
        Ok(set)
    }
}

fn side(name: &str, path: &Path, source: Source, extractor: Option<&Extractor>) -> Result<Side> {
    let label = format!("{name} = {}", path.display());
    match source {
        Source::Folder(_) | Source::Shards(_) => {
            let ex = extractor.expect("network loaded for image inputs");
            let (set, skipped) = match &source {
                Source::Folder(files) => ex.folder(name, files)?,
                Source::Shards(s) => ex.shards(name, s)?,
                Source::Npz { .. } => unreachable!(),
            };
            ensure!(set.count() >= 2, "{}: fewer than 2 readable images", path.display());
            Ok(Side {
                label,
                stats: set.pool3.finish()?,
                spatial: Some(set.spatial.finish()?),
                features: Some(set),
                stats_from_file: false,
                skipped,
            })
        }
        Source::Npz { path, has_images, has_stats } => {
            let features = match has_images {
                true => Some(extractor.expect("network loaded for image inputs").npz_images(&path)?),
                false => None,
            };
            let (stats, spatial) = if has_stats {
                // ADM: statistics stored in the file win over the ones of its images.
                let mut npz = NpzReader::open(&path)?;
                let spatial = match npz.contains("mu_s") && npz.contains("sigma_s") {
                    true => Some(read_stats(&mut npz, "mu_s", "sigma_s")?),
                    false => None,
                };
                (read_stats(&mut npz, "mu", "sigma")?, spatial)
            } else {
                let set = features.as_ref().expect("has images");
                (set.pool3.finish()?, Some(set.spatial.finish()?))
            };
            Ok(Side { label, stats, spatial, features, stats_from_file: has_stats, skipped: 0 })
        }
    }
}

fn network(opts: &FidOptions, device: Device) -> Result<FidInception> {
    inception_network(opts.weights.as_deref(), opts.random_weights, opts.float64, device)
}

/// The FID Inception from `--weights` or `--random-weights` (shared by `fid` and `rfid`).
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
    let device = sftok_model::device::parse_device(&opts.device)?;
    let source_a = Source::detect(&opts.a)?;
    let source_b = Source::detect(&opts.b)?;
    let net = match source_a.needs_network() || source_b.needs_network() {
        true => Some(network(opts, device)?),
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
