//! The two inputs of `sftok-eval fid`: what each path is (image folder, webdataset shards, `.npz`
//! sample batch or statistics) and its Inception features or stored statistics.

use super::features::FeatureSet;
use super::npz::NpzReader;
use super::stats::Stats;
use crate::inception::{FidInception, InputPipeline};
use anyhow::{Result, bail, ensure};
use sftok_pipeline::image_dir;
use sftok_pipeline::progress::Progress;
use sftok_pipeline::transform::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where one side's numbers come from.
pub(super) enum Source {
    Folder(Vec<PathBuf>),
    /// Webdataset shards (a directory of .tar / manifest.json, a .tar, or a brace pattern),
    /// read with the eval transform: Resize(256) + CenterCrop(256), as ImageNet FIDs are.
    Shards(String),
    Npz { path: PathBuf, has_images: bool, has_stats: bool },
}

impl Source {
    pub(super) fn detect(path: &Path) -> Result<Source> {
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

    pub(super) fn needs_network(&self) -> bool {
        match self {
            Source::Folder(_) | Source::Shards(_) => true,
            Source::Npz { has_images, .. } => *has_images,
        }
    }
}

/// One side's results.
pub(super) struct Side {
    pub(super) label: String,
    pub(super) stats: Stats,
    pub(super) spatial: Option<Stats>,
    /// Computed from images (None when only statistics were read).
    pub(super) features: Option<FeatureSet>,
    /// `stats` were read from the file (ADM: stored statistics win over the file's images).
    pub(super) stats_from_file: bool,
    /// Unreadable images skipped with --skip-bad.
    pub(super) skipped: usize,
}

pub(super) fn read_stats(npz: &mut NpzReader, mu: &str, sigma: &str) -> Result<Stats> {
    let as_f64 = |t: Tensor| t.to_kind(Kind::Double);
    Ok(Stats { mu: as_f64(npz.read(mu)?), sigma: as_f64(npz.read(sigma)?) })
}

pub(super) struct Extractor<'a> {
    pub(super) net: &'a FidInception,
    pub(super) pipeline: InputPipeline,
    pub(super) batch: usize,
    pub(super) skip_bad: bool,
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
        if run.is_empty() {
            return Ok(());
        }
        let images = super::recon::to_u8_tensor(run, Device::Cpu);
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
            let images = crate::handoff::nhwc_u8_to_device(&batch.images, [batch.len() as i64, s, s], Device::Cpu);
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

pub(super) fn side(name: &str, path: &Path, source: Source, extractor: Option<&Extractor>) -> Result<Side> {
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
