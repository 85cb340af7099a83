//! `sftok-eval rfid`: reconstruction FID as the reference computes it (evaluation.md §1): the val
//! shards through the eval transform, reconstructions clamped to [0, 1] and rounded to 8 bits,
//! FID Inception features (TF1 resize, float64 by default as the reference evaluator) of
//! originals and reconstructions streamed into float64 statistics, Fréchet distance, the
//! Inception Score of the reconstructions (one split, the reference evaluator's), PSNR, and the
//! codebook usage and entropy of the tokens — all from [`evaluate_reconstruction`].

use super::fid::inception_network;
use super::recon::ModelSpec;
use super::recon_eval::{ReconEvalOptions, evaluate_reconstruction};
use anyhow::{Result, bail};
use std::path::PathBuf;
use tch::Device;

pub struct RfidOptions {
    pub model: ModelSpec,
    pub shards: String,
    pub num: Option<usize>,
    pub weights: Option<PathBuf>,
    pub random_weights: Option<i64>,
    pub float32: bool,
    pub batch: usize,
    pub device: Device,
    pub save_images: Option<PathBuf>,
    pub json: bool,
}

pub fn run(o: &RfidOptions) -> Result<()> {
    let config = o.model.config()?;
    let pre = config.dataset.preprocessing.clone();
    let (loaded, teacher) = o.model.load(config, o.device)?;
    if teacher.is_none() && loaded.model.pixel_decoder.is_none() {
        bail!("a stage-1/2 checkpoint needs --teacher maskgit-vqgan-imagenet-f16-256.bin to turn proxy codes into pixels");
    }
    let net = inception_network(o.weights.as_deref(), o.random_weights, !o.float32, o.device)?;
    if o.random_weights.is_some() {
        eprintln!("WARNING: --random-weights: the Inception has RANDOM weights; the rFID and IS are MEANINGLESS (smoke test only).");
    }
    let options = ReconEvalOptions {
        shards: o.shards.clone(),
        resize_shorter_edge: pre.resize_shorter_edge,
        crop_size: pre.crop_size,
        batch: o.batch,
        num: o.num,
        seed: o.model.seed,
        progress: true,
        save_images: o.save_images.clone(),
    };
    let report = evaluate_reconstruction(&loaded.model, teacher.as_ref().map(|t| &t.1), Some(&net), &options, o.device)?;
    if report.images < 50_000 {
        eprintln!(
            "WARNING: rFID over {} images (published numbers use all 50,000 val images): not comparable with papers.",
            report.images
        );
    }
    let (rfid, inception_score) = (report.rfid.expect("evaluated with an Inception"), report.inception_score.expect("evaluated with an Inception"));
    let steps = loaded.config.model.generator.num_steps;
    if o.json {
        let json = serde_json::json!({
            "images": report.images, "rfid": rfid, "inception_score": inception_score, "psnr": report.psnr, "steps": steps,
            "codebook_usage": report.codebook_usage, "codebook_entropy_bits": report.codebook_entropy_bits,
            "random_inception_weights": o.random_weights.is_some(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("images      {}", report.images);
        println!("rFID        {rfid:.4}");
        println!("IS          {inception_score:.4}  (reconstructions, reference evaluator: one split)");
        println!("PSNR        {:.2} dB", report.psnr);
        println!("codebook usage           {:.4}", report.codebook_usage);
        println!("codebook entropy (bits)  {:.4}", report.codebook_entropy_bits);
        println!("steps       {steps}");
    }
    Ok(())
}
