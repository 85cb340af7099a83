//! `sftok-eval rfid`: reconstruction FID as the reference computes it (evaluation.md §1): the val
//! shards through the eval transform, reconstructions clamped to [0, 1] and rounded to 8 bits,
//! FID Inception features (TF1 resize, float64 by default as the reference evaluator) of
//! originals and reconstructions streamed into float64 statistics, Fréchet distance, the
//! Inception Score of the reconstructions (one split, the reference evaluator's), and PSNR.

use crate::progress::Progress;
use anyhow::{Context, Result, bail};
use sftok_model::eval::features::FeatureSet;
use sftok_model::eval::frechet::frechet_distance;
use sftok_model::inception::InputPipeline;
use sftok_model::recon::{psnr, reconstruct, to_images};
use sftok_model::sftok::{LoadedSFTok, resolve_config};
use sftok_pipeline::batch::BatchStream;
use sftok_pipeline::loader::{Loader, LoaderConfig};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

pub struct RfidOptions {
    pub checkpoint: PathBuf,
    pub config: Option<PathBuf>,
    pub overrides: Vec<String>,
    pub teacher: Option<String>,
    pub shards: String,
    pub num: Option<usize>,
    pub steps: Option<i64>,
    pub weights: Option<PathBuf>,
    pub random_weights: Option<i64>,
    pub float32: bool,
    pub batch: usize,
    pub seed: i64,
    pub device: String,
    pub save_images: Option<PathBuf>,
    pub json: bool,
}

struct Report {
    images: u64,
    rfid: f64,
    inception_score: f64,
    psnr: f64,
    steps: i64,
    random_inception_weights: bool,
}

fn u8_nhwc(images: &[sftok_pipeline::transform::RgbImage], device: Device) -> Tensor {
    let (w, h) = (images[0].width as i64, images[0].height as i64);
    let bytes: Vec<u8> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
    Tensor::from_data_size(&bytes, &[images.len() as i64, h, w, 3], Kind::Uint8).to_device(device)
}

pub fn run(o: &RfidOptions) -> Result<()> {
    let device = sftok_model::device::parse_device(&o.device)?;
    let mut config = resolve_config(&o.checkpoint, o.config.as_deref(), &o.overrides)?;
    if let Some(s) = o.steps {
        config.model.generator.num_steps = s;
    }
    let pre = config.dataset.preprocessing.clone();
    let loaded = LoadedSFTok::load(&o.checkpoint, config, device)?;
    let teacher = match (&o.teacher, loaded.model.pixel_decoder.is_some()) {
        (Some(spec), false) => Some(sftok_model::vqgan::load_teacher(spec, device)?),
        (None, false) => bail!("a stage-1/2 checkpoint needs --teacher maskgit-vqgan-imagenet-f16-256.bin to turn proxy codes into pixels"),
        _ => None,
    };
    let net = crate::fid::inception_network(o.weights.as_deref(), o.random_weights, !o.float32, device)?;
    if o.random_weights.is_some() {
        eprintln!("WARNING: --random-weights: the Inception has RANDOM weights; the rFID and IS are MEANINGLESS (smoke test only).");
    }
    let mut lc = LoaderConfig::eval(vec![o.shards.clone()]);
    lc.batch_size = o.batch.max(1);
    lc.resize_shorter_edge = pre.resize_shorter_edge;
    lc.crop_size = pre.crop_size;
    let mut loader = Loader::new(lc).with_context(|| format!("reading the val shards {}", o.shards))?;
    let (mut real, mut fake) = (FeatureSet::default(), FeatureSet::default());
    let mut psnrs = Vec::new();
    let progress = Progress::new("rfid", o.num.unwrap_or(0) as u64, "images");
    let mut seen = 0usize;
    while let Some(mut batch) = loader.next_batch()? {
        if let Some(n) = o.num {
            if seen >= n {
                break;
            }
            if seen + batch.len() > n {
                let keep = n - seen;
                let s = batch.size as usize;
                batch.images.truncate(keep * s * s * 3);
                batch.keys.truncate(keep);
                batch.labels.truncate(keep);
            }
        }
        let x = sftok_model::handoff::images(&batch, device);
        tch::manual_seed(o.seed.wrapping_add(seen as i64)); // the decoder samples with Gumbel noise
        let (y, _) = reconstruct(&loaded.model, teacher.as_ref().map(|t| &t.1), &x)?;
        let recon = to_images(&y)?; // clamped, rounded to 8 bits
        let originals = to_images(&x)?;
        real.add_images(&net, &u8_nhwc(&originals, device), InputPipeline::Tf1)?;
        fake.add_images(&net, &u8_nhwc(&recon, device), InputPipeline::Tf1)?;
        psnrs.extend(psnr(&x, &y));
        if let Some(dir) = &o.save_images {
            for (sub, imgs) in [("originals", &originals), ("reconstructions", &recon)] {
                let d = dir.join(sub);
                std::fs::create_dir_all(&d)?;
                for (i, img) in imgs.iter().enumerate() {
                    std::fs::write(d.join(format!("{:06}.png", seen + i)), sftok_pipeline::transform::encode_png(img)?)?;
                }
            }
        }
        seen += batch.len();
        progress.inc(batch.len() as u64);
    }
    progress.finish();
    if seen == 0 {
        bail!("no images in {}", o.shards);
    }
    if seen < 50_000 {
        eprintln!("WARNING: rFID over {seen} images (published numbers use all 50,000 val images): not comparable with papers.");
    }
    let fid = frechet_distance(&real.pool3.finish()?, &fake.pool3.finish()?)?;
    let report = Report {
        images: seen as u64,
        rfid: fid.value,
        inception_score: fake.inception_score.reference()?,
        psnr: psnrs.iter().filter(|p| p.is_finite()).sum::<f64>() / psnrs.len().max(1) as f64,
        steps: loaded.config.model.generator.num_steps,
        random_inception_weights: o.random_weights.is_some(),
    };
    if o.json {
        let json = serde_json::json!({
            "images": report.images, "rfid": report.rfid, "inception_score": report.inception_score,
            "psnr": report.psnr, "steps": report.steps, "random_inception_weights": report.random_inception_weights,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("images      {}", report.images);
        println!("rFID        {:.4}", report.rfid);
        println!("IS          {:.4}  (reconstructions, reference evaluator: one split)", report.inception_score);
        println!("PSNR        {:.2} dB", report.psnr);
        println!("steps       {}", report.steps);
    }
    Ok(())
}
