//! `sftok-eval recon`: eval transform → encode → iterative decode → PNG grid, token ids, PSNR;
//! and the reconstruction helpers `rfid` and the trainer share.

use crate::config::Config;
use crate::sftok::{LoadedSFTok, SFTok, resolve_config};
use crate::vqgan::MaskgitVqgan;
use anyhow::{Context, Result, bail};
use sftok_pipeline::transform::RgbImage;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor, nn};

/// RGB8 images of one size → float [B, 3, H, W] in [0, 1] (`ToTensor`).
pub fn to_tensor(images: &[RgbImage], device: Device) -> Tensor {
    let (bytes, dims) = crate::handoff::pack_rgb(images);
    crate::handoff::nhwc_u8_to_float(&bytes, dims, device)
}

/// RGB8 images of one size → uint8 [B, H, W, 3] on `device`, the FID Inception's input.
pub fn to_u8_tensor(images: &[RgbImage], device: Device) -> Tensor {
    let (bytes, dims) = crate::handoff::pack_rgb(images);
    crate::handoff::nhwc_u8_to_device(&bytes, dims, device)
}

/// [B, 3, H, W] floats → RGB8 images (clamped to [0, 1], rounded to the nearest 1/255).
pub fn to_images(t: &Tensor) -> Result<Vec<RgbImage>> {
    let (b, _, h, w) = t.size4()?;
    let u8s = (t.clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([0, 2, 3, 1]).contiguous().to_device(Device::Cpu);
    let flat: Vec<u8> = Vec::<u8>::try_from(u8s.reshape([-1]))?;
    let per = (h * w * 3) as usize;
    (0..b as usize).map(|i| RgbImage::new(w as u32, h as u32, flat[i * per..(i + 1) * per].to_vec())).collect()
}

/// Peak signal-to-noise ratio per image, on [0, 1] values quantised to 8 bits (as saved).
pub fn psnr(original: &Tensor, reconstruction: &Tensor) -> Vec<f64> {
    let q = |t: &Tensor| (t.clamp(0.0, 1.0) * 255.0).round() / 255.0;
    let mse = (q(original) - q(reconstruction)).pow_tensor_scalar(2).mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double);
    Vec::<f64>::try_from(mse).unwrap_or_default().into_iter().map(|m| if m <= 0.0 { f64::INFINITY } else { -10.0 * m.log10() }).collect()
}

/// Reconstructions in [0, 1] and the token ids of a batch. Stage-1/2 models decode their
/// proxy-code ids with the teacher's decoder; stage-3 models use their own soft path.
/// Note: OptVQ assigns codes over the whole batch, so tokens depend on the batch composition.
pub fn reconstruct(model: &SFTok, teacher: Option<&MaskgitVqgan>, x: &Tensor) -> Result<(Tensor, Tensor)> {
    tch::no_grad(|| {
        let (_, q) = model.encode(x);
        let tokens = q.min_encoding_indices.squeeze_dim(1); // [B, N]
        Ok((decode_to_image(model, teacher, &tokens)?, tokens))
    })
}

/// Token ids [B, N] → images [B, 3, H, W] clamped to [0, 1]: `decode_tokens` (drawing its Gumbel
/// noise from libtorch's generator), then the model's own soft path + pixel decoder (stage 3) or
/// the teacher's decoder on the decoded proxy codes (stages 1–2).
pub fn decode_to_image(model: &SFTok, teacher: Option<&MaskgitVqgan>, tokens: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| {
        let out = model.decode_tokens(tokens);
        let image = match (out.image, teacher) {
            (Some(img), _) => img,
            (None, Some(t)) => {
                let (b, l) = out.generated.ids.size2()?;
                let g = (l as f64).sqrt() as i64;
                t.decode_raw(&out.generated.ids.reshape([b, g, g]))?
            }
            (None, None) => bail!(
                "this is a stage-1/2 checkpoint (model.vq_model.finetune_decoder = False): its proxy codes are turned into pixels by \
                 the MaskGIT-VQGAN teacher — pass --teacher maskgit-vqgan-imagenet-f16-256.bin"
            ),
        };
        Ok(image.clamp(0.0, 1.0))
    })
}

/// Reads image files (any format the `image` crate decodes), applies the eval transform.
pub fn load_eval_images(paths: &[PathBuf], resize_shorter_edge: u32, crop_size: u32) -> Result<Vec<RgbImage>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let img = sftok_pipeline::transform::decode_rgb(&bytes).with_context(|| format!("{} is not a readable image", p.display()))?;
            sftok_pipeline::transform::eval_transform(&img, resize_shorter_edge, crop_size).with_context(|| format!("transforming {}", p.display()))
        })
        .collect()
}

/// The tokenizer to evaluate and how it decodes (`recon` and `rfid`).
pub struct ModelSpec {
    /// Weights: any format `checkpoint::read` takes, or a directory with config.json.
    pub checkpoint: PathBuf,
    /// Config file; default: config.json beside the checkpoint.
    pub config: Option<PathBuf>,
    pub overrides: Vec<String>,
    /// MaskGIT-VQGAN teacher (a file, or `random:SEED`) for stage-1/2 models.
    pub teacher: Option<String>,
    /// Decoding steps instead of `model.generator.num_steps`.
    pub steps: Option<i64>,
    /// Seed of the decoder's Gumbel sampling.
    pub seed: i64,
}

impl ModelSpec {
    /// The checkpoint's config with the overrides and `steps` applied.
    pub fn config(&self) -> Result<Config> {
        let mut config = resolve_config(&self.checkpoint, self.config.as_deref(), &self.overrides)?;
        if let Some(s) = self.steps {
            config.model.generator.num_steps = s;
        }
        Ok(config)
    }

    /// The model built from `config` with the checkpoint's weights, and the teacher when one was
    /// given and the model needs it (no pixel decoder of its own).
    pub fn load(&self, config: Config, device: Device) -> Result<(LoadedSFTok, Option<(nn::VarStore, MaskgitVqgan)>)> {
        let loaded = LoadedSFTok::load(&self.checkpoint, config, device)?;
        let teacher = match (&self.teacher, loaded.model.pixel_decoder.is_some()) {
            (Some(spec), false) => Some(crate::vqgan::load_teacher(spec, device)?),
            _ => None,
        };
        Ok((loaded, teacher))
    }
}

pub struct ReconRequest {
    pub model: ModelSpec,
    pub images: Vec<PathBuf>,
    pub out: PathBuf,
    pub batch: usize,
    pub device: Device,
}

#[derive(Debug, serde::Serialize)]
pub struct ReconItem {
    pub source: String,
    pub tokens: Vec<i64>,
    pub psnr: f64,
    /// PSNR of the image filled with its own mean colour: what a reconstruction must beat to carry
    /// more than one colour per image.
    pub mean_colour_psnr: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct ReconReport {
    pub checkpoint: String,
    pub steps: i64,
    pub seed: i64,
    pub mean_psnr: f64,
    /// Mean of the per-image mean-colour baseline.
    pub mean_colour_psnr: f64,
    pub images: Vec<ReconItem>,
    #[serde(skip)]
    pub grid: PathBuf,
}

/// Loads, transforms, reconstructs in batches and writes `grid.png` (original | reconstruction
/// per row), `originals/` and `reconstructions/` (one PNG per image) and `tokens.json` (token
/// ids and PSNR per image).
pub fn write_reconstructions(req: &ReconRequest) -> Result<ReconReport> {
    if req.images.is_empty() {
        bail!("no input images: pass --images a.jpg b.png …");
    }
    let config = req.model.config()?;
    let pre = config.dataset.preprocessing.clone();
    let originals = load_eval_images(&req.images, pre.resize_shorter_edge, pre.crop_size)?;
    let (loaded, teacher) = req.model.load(config, req.device)?;
    let mut recons = Vec::new();
    let mut items = Vec::new();
    for (chunk_imgs, chunk_paths) in originals.chunks(req.batch.max(1)).zip(req.images.chunks(req.batch.max(1))) {
        let x = to_tensor(chunk_imgs, req.device);
        tch::manual_seed(req.model.seed); // generate draws Gumbel noise: seeded for reproducible output
        let (y, tokens) = reconstruct(&loaded.model, teacher.as_ref().map(|t| &t.1), &x)?;
        let p = psnr(&x, &y);
        let flat = psnr(&x, &x.mean_dim([2i64, 3].as_slice(), true, tch::Kind::Float).expand_as(&x));
        for (i, path) in chunk_paths.iter().enumerate() {
            let tokens = Vec::<i64>::try_from(tokens.get(i as i64))?;
            items.push(ReconItem { source: path.display().to_string(), tokens, psnr: p[i], mean_colour_psnr: flat[i] });
        }
        recons.extend(to_images(&y)?);
    }
    std::fs::create_dir_all(&req.out).with_context(|| format!("creating {}", req.out.display()))?;
    // Each image also on its own, as two folders that `sftok-eval fid` can compare.
    for (name, images) in [("originals", &originals), ("reconstructions", &recons)] {
        let dir = req.out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, img) in images.iter().enumerate() {
            let png = sftok_pipeline::transform::encode_png(img)?;
            sftok_pipeline::fsutil::write_atomic(&dir.join(format!("{i:06}.png")), &png)?;
        }
    }
    let rows: Vec<Vec<&RgbImage>> = originals.iter().zip(&recons).map(|(a, b)| vec![a, b]).collect();
    let png = sftok_pipeline::transform::encode_png(&sftok_pipeline::transform::grid(&rows, 4))?;
    let grid = req.out.join("grid.png");
    sftok_pipeline::fsutil::write_atomic(&grid, &png)?;
    let finite_mean = |v: Vec<f64>| {
        let f: Vec<f64> = v.into_iter().filter(|p| p.is_finite()).collect();
        f.iter().sum::<f64>() / f.len().max(1) as f64
    };
    let report = ReconReport {
        checkpoint: req.model.checkpoint.display().to_string(),
        steps: loaded.config.model.generator.num_steps,
        seed: req.model.seed,
        mean_psnr: finite_mean(items.iter().map(|i| i.psnr).collect()),
        mean_colour_psnr: finite_mean(items.iter().map(|i| i.mean_colour_psnr).collect()),
        images: items,
        grid,
    };
    let json = serde_json::to_string_pretty(&report)?;
    sftok_pipeline::fsutil::write_atomic(&req.out.join("tokens.json"), json.as_bytes())?;
    Ok(report)
}

/// The whole `recon` command: [`write_reconstructions`], then PSNR per image and a summary.
pub fn run(req: &ReconRequest) -> Result<()> {
    let t0 = std::time::Instant::now();
    let report = write_reconstructions(req)?;
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
    println!("mean-colour baseline (each image filled with its own mean colour): {:.2} dB", report.mean_colour_psnr);
    println!("grid: {}  tokens: {}", report.grid.display(), req.out.join("tokens.json").display());
    Ok(())
}
