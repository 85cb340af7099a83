//! Generated tokens → images (../shared/spec/generator-maskgit.md §7) and the frozen tokenizer as
//! the generator sees it: `tokenize` for training targets, `decode` for samples.
//!
//! Decoding: the SFTok tokenizer's `decode_tokens` (its multi-step decoder with the settings of its
//! `model.generator` section — spec §11: randomize_temperature 1.0, no softmax annealing, 8 steps
//! unless its config says otherwise) → the soft path → its pixel decoder (stage-3 models) or the
//! teacher's decoder (stage-1/2 models with `--teacher`) → clamp to [0, 1]. Samples become uint8 by
//! **truncation** (`uint8(x·255)`, TiTok's `sample_fn`), not by the rounding `recon` uses.

use crate::eval::recon::ModelSpec;
use crate::image_bert::ImageBertConfig;
use crate::sftok::LoadedSFTok;
use crate::vqgan::MaskgitVqgan;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

pub struct TokenDecoder {
    pub tokenizer: LoadedSFTok,
    teacher: Option<(nn::VarStore, MaskgitVqgan)>,
    /// What the tokenizer was loaded from (for error messages and sample fingerprints).
    pub source: String,
}

impl TokenDecoder {
    /// The tokenizer of `spec` (its config from `--config` or config.json beside it), eval mode.
    pub fn load(spec: &ModelSpec, device: Device) -> Result<TokenDecoder> {
        let (tokenizer, teacher) = spec.load(spec.config()?, device)?;
        Ok(TokenDecoder { tokenizer, teacher, source: spec.checkpoint.display().to_string() })
    }

    /// Tokens per image and vocabulary must be the generator's.
    pub fn check_pairs_with(&self, g: &ImageBertConfig) -> Result<()> {
        let t = &self.tokenizer.model.cfg;
        if t.quantizer.codebook_size != g.codebook_size {
            bail!(
                "tokenizer {} has a codebook of {} tokens, the generator's model.vq_model.codebook_size is {}: use the tokenizer the generator was configured for, or set model.vq_model.codebook_size={}",
                self.source, t.quantizer.codebook_size, g.codebook_size, t.quantizer.codebook_size
            );
        }
        if t.encoder.num_latent_tokens != g.seq_len {
            bail!(
                "tokenizer {} produces {} tokens per image, the generator's model.img_generator.image_seq_len is {}",
                self.source, t.encoder.num_latent_tokens, g.seq_len
            );
        }
        Ok(())
    }

    /// Images [B, 3, H, W] in [0, 1] → token ids [B, N], one encoder call (the Sinkhorn assignment
    /// spans the whole batch), float32, no gradient.
    pub fn tokenize(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let (_, q) = crate::autocast::float32(|| self.tokenizer.model.encode(&x.to_kind(Kind::Float)));
            q.min_encoding_indices.flatten(1, -1)
        })
    }

    /// Token ids [B, N] → images [B, 3, H, W] clamped to [0, 1]. Draws the tokenizer decoder's
    /// Gumbel noise from libtorch's generator.
    pub fn decode(&self, ids: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let k = self.tokenizer.model.cfg.quantizer.codebook_size;
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= k {
                bail!("token ids in [{lo}, {hi}] but the tokenizer {} has {k} codes", self.source);
            }
            crate::eval::recon::decode_to_image(&self.tokenizer.model, self.teacher.as_ref().map(|t| &t.1), ids)
                .with_context(|| format!("decoding generated tokens with the tokenizer {}", self.source))
        })
    }
}

/// [B, 3, H, W] in [0, 1] → uint8 [B, H, W, 3] on the CPU by truncation (`uint8(x·255)`).
pub fn to_uint8_nhwc(images: &Tensor) -> Tensor {
    (images.clamp(0.0, 1.0) * 255.0).to_kind(Kind::Uint8).permute([0, 2, 3, 1]).contiguous().to_device(Device::Cpu)
}

/// uint8 [B, H, W, 3] (CPU) → RGB8 images.
pub fn rgb_images(nhwc: &Tensor) -> Result<Vec<sftok_pipeline::transform::RgbImage>> {
    let (b, h, w, _) = nhwc.size4()?;
    let flat = Vec::<u8>::try_from(nhwc.reshape([-1]))?;
    let per = (h * w * 3) as usize;
    (0..b as usize).map(|i| sftok_pipeline::transform::RgbImage::new(w as u32, h as u32, flat[i * per..(i + 1) * per].to_vec())).collect()
}

/// A trained generator: weights (a directory with model.safetensors + config.json, or a file) and
/// the config it was built from.
pub struct LoadedGenerator {
    pub vs: nn::VarStore,
    pub model: crate::image_bert::ImageBert,
    pub config: crate::config::Config,
    pub source: String,
}

impl LoadedGenerator {
    pub fn load(checkpoint: &Path, config: Option<&Path>, overrides: &[String], device: Device) -> Result<LoadedGenerator> {
        use anyhow::Context;
        let cfg = crate::sftok::resolve_config(checkpoint, config, overrides)
            .map_err(|e| anyhow::anyhow!("{e:#} (for the generator: configs/sftok_maskgit.yaml)"))?;
        let mc = ImageBertConfig::from_config(&cfg)?;
        let vs = nn::VarStore::new(device);
        let model = tch::no_grad(|| crate::image_bert::ImageBert::new(&vs.root(), &mc));
        let sd = crate::checkpoint::read(checkpoint)?;
        crate::image_bert::load_state_dict(&vs, sd).with_context(|| format!("loading the generator {} (model.img_generator of its config)", checkpoint.display()))?;
        Ok(LoadedGenerator { vs, model, config: cfg, source: checkpoint.display().to_string() })
    }
}

/// `sftok-eval sample`: what to sample and where.
pub struct SampleRequest {
    pub generator: PathBuf,
    pub generator_config: Option<PathBuf>,
    pub tokenizer: ModelSpec,
    /// Replacements for the generator config's sampling settings.
    pub settings: crate::maskgit_sampler::SamplingOverrides,
    /// Total samples (`num_fid_samples`, 50,000), class-balanced.
    pub num: usize,
    /// Images per generation call (`per_proc_batch_size`, 125).
    pub per_proc_batch: usize,
    /// Images per tokenizer decode call within a chunk: bounds the pixel decoder's activations
    /// (at 256 px even the tiny pixel decoder holds ~1.4 GB of float32 activations for 25 images).
    pub decode_batch: usize,
    /// The rank layout that fixes the row order (8: the reference's torchrun layout), whatever
    /// the number of processes actually running.
    pub virtual_ranks: usize,
    pub seed: i64,
    pub out: PathBuf,
    pub rank: usize,
    pub world_size: usize,
    pub device: Device,
    /// Keep `<out>.parts/` after the merge.
    pub keep_parts: bool,
    /// How long rank 0 waits for the other processes' chunks.
    pub wait: std::time::Duration,
}

/// What a finished `sample` run reports.
#[derive(Debug, serde::Serialize)]
pub struct SampleReport {
    pub out: PathBuf,
    /// False on ranks > 0 (rank 0 merges).
    pub merged: bool,
    pub chunks_done_here: usize,
    pub chunks_kept: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub peak_rss_mb: f64,
    pub settings: serde_json::Value,
}

/// The sampling run's identity: which generator, tokenizer and settings made the chunks.
fn fingerprint(req: &SampleRequest, g: &LoadedGenerator, settings: &crate::maskgit_sampler::GeneratorSampling, tok: &TokenDecoder) -> Result<serde_json::Value> {
    let sha = |p: &Path| crate::proxy_codes::checkpoint_fingerprint(&p.display().to_string());
    let t = &tok.tokenizer.config.model.generator;
    Ok(serde_json::json!({
        "generator": g.source,
        "generator_sha256": sha(&req.generator)?,
        "tokenizer": tok.source,
        "tokenizer_sha256": sha(&req.tokenizer.checkpoint)?,
        "sampling": {
            "guidance_scale": settings.guidance_scale,
            "guidance_decay": settings.guidance_decay.name(),
            "guidance_scale_pow": settings.guidance_scale_pow,
            "randomize_temperature": settings.randomize_temperature,
            "softmax_temperature_annealing": settings.softmax_temperature_annealing,
            "num_sample_steps": settings.num_steps,
        },
        // The tokenizer decoder's own sampling (generator-maskgit.md §11: recorded with every gFID).
        "tokenizer_decoding": {
            "randomize_temperature": t.randomize_temperature,
            "softmax_temperature_annealing": t.softmax_temperature_annealing,
            "num_steps": t.num_steps,
        },
        "seed": req.seed,
        "seeding": "manual_seed(seed + chunk) before each chunk of per_proc_batch images",
        "decode_batch": req.decode_batch,
        "pixels": "clamp(0,1), uint8(x*255) truncating (TiTok sample_fn)",
    }))
}

/// Generates this process's chunks (skipping finished ones), then on rank 0 waits for every
/// chunk and streams them into `out` (`arr_0` uint8 [num, S, S, 3]), with `<out>.json` beside it
/// recording how the samples were made.
pub fn run_sample(req: &SampleRequest) -> Result<SampleReport> {
    use sftok_pipeline::sample_plan::SamplePlan;
    use sftok_pipeline::sample_store::ChunkStore;
    let t0 = std::time::Instant::now();
    let g = LoadedGenerator::load(&req.generator, req.generator_config.as_deref(), &[], req.device)?;
    let tok = TokenDecoder::load(&req.tokenizer, req.device)?;
    tok.check_pairs_with(&g.model.cfg)?;
    let settings = req.settings.apply(crate::maskgit_sampler::GeneratorSampling::from_config(&g.config.model.img_generator)?)?;
    if req.decode_batch == 0 {
        bail!("--decode-batch must be positive");
    }
    let classes = g.model.cfg.num_classes as usize;
    let plan = SamplePlan::new(req.num, classes, req.per_proc_batch, req.virtual_ranks)?;
    let mine = plan.chunks_of_process(req.rank, req.world_size)?;
    let size = tok.tokenizer.config.dataset.preprocessing.crop_size;
    let fp = fingerprint(req, &g, &settings, &tok)?;
    let store = ChunkStore::open(&req.out, &plan, size, fp.clone())?;
    let todo: Vec<usize> = mine.iter().copied().filter(|&c| !store.has(c)).collect();
    eprintln!(
        "rank {}/{}: {} of its {} chunks to generate ({} images each, {} classes, {}); {}",
        req.rank,
        req.world_size,
        todo.len(),
        mine.len(),
        req.per_proc_batch,
        classes,
        settings.describe(),
        crate::device::describe(req.device)
    );
    let progress = sftok_pipeline::progress::Progress::new("sample", (todo.len() * req.per_proc_batch) as u64, "images");
    for &c in &todo {
        let labels = Tensor::from_slice(&plan.chunk_labels(c)).to_device(req.device);
        tch::manual_seed(req.seed + c as i64);
        let ids = crate::maskgit_sampler::generate(&g.model, &labels, &settings).ids;
        let mut pixels = Vec::with_capacity(store.chunk_bytes());
        for part in ids.split(req.decode_batch as i64, 0) {
            pixels.extend(Vec::<u8>::try_from(to_uint8_nhwc(&tok.decode(&part)?).reshape([-1]))?);
        }
        store.write_chunk(c, &pixels)?;
        progress.inc(req.per_proc_batch as u64);
    }
    progress.finish();
    let generated = t0.elapsed().as_secs_f64();
    let merged = req.rank == 0;
    if merged {
        store.wait_for_all(req.world_size, req.wait, std::time::Duration::from_millis(500))?;
        let bar = sftok_pipeline::progress::Progress::new("write npz", req.num as u64, "images");
        store.merge(&|n| bar.inc(n))?;
        bar.finish();
        let labels: Vec<i64> = (0..req.num).map(|s| plan.label_of_row(s)).collect();
        let json = serde_json::to_string(&serde_json::json!({
            "samples": req.num, "classes": classes, "per_class": req.num / classes, "made_by": fp, "labels": labels,
        }))?;
        sftok_pipeline::fsutil::write_atomic(&sidecar_path(&req.out), json.as_bytes())?;
        if !req.keep_parts {
            store.remove_parts()?;
        }
    }
    Ok(SampleReport {
        out: req.out.clone(),
        merged,
        chunks_done_here: todo.len(),
        chunks_kept: mine.len() - todo.len(),
        seconds: t0.elapsed().as_secs_f64(),
        images_per_second: (todo.len() * req.per_proc_batch) as f64 / generated.max(1e-9),
        peak_rss_mb: sftok_pipeline::procstat::peak_rss_mb(),
        settings: fp,
    })
}

/// How the sample batch `npz` was made (its `<npz>.json` without the per-row labels), for
/// reporting with gFID; None when there is no such file.
pub fn read_sidecar(npz: &Path) -> Result<Option<serde_json::Value>> {
    let path = sidecar_path(npz);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let mut v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    v.as_object_mut().map(|o| o.remove("labels"));
    Ok(Some(v))
}

/// `<samples>.npz.json`: how a sample batch was made (the `.npz` itself holds only `arr_0`, as
/// ADM's evaluator expects).
pub fn sidecar_path(npz: &Path) -> PathBuf {
    let mut s = npz.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}
