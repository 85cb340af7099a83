//! `sftok-train <task>`: config + command line → data stream, teacher, evaluation set-up and the
//! task → [`fit`]. Adding a training job means a `TrainJob` variant and its arm in [`run`].

use super::fit::{DataFactory, FitOptions, FitSummary, fit};
use super::generator::{self, GeneratorOptions, GeneratorTask};
use super::stage1::{Stage1, Stage1Task};
use super::stage2::{Stage2, Stage2Task};
use super::stage3::{self, Stage3Options, Stage3Task};
use super::token_task::{EvalSetup, TokenStage, TokenTaskOptions};
use crate::config::Config;
use crate::dist::Dist;
use sftok_pipeline::launch_env::ProcessEnv;
use crate::stage3_loss::{DiscriminatorType, FrozenNets};
use anyhow::{Context, Result, bail};
use sftok_pipeline::batch::BatchStream;
use sftok_pipeline::loader::{Loader, LoaderConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainJob {
    /// Warming up: single-step prediction, every proxy slot masked.
    Stage1,
    /// Distribution alignment: self-forcing guided visual reconstruction.
    Stage2,
    /// Fine-tuning: decoder + pixel decoder towards pixels, with a discriminator.
    Stage3,
    /// The class-conditional MaskGIT generator on a frozen tokenizer's tokens.
    Generator,
}

impl TrainJob {
    pub fn name(self) -> &'static str {
        match self {
            TrainJob::Stage1 => Stage1::NAME,
            TrainJob::Stage2 => Stage2::NAME,
            TrainJob::Stage3 => stage3::NAME,
            TrainJob::Generator => generator::NAME,
        }
    }

    /// Refuses a config written for another job, naming the key, before any data is touched.
    pub fn check_config(self, cfg: &Config) -> Result<()> {
        match self {
            TrainJob::Stage1 => Stage1::check_config(cfg),
            TrainJob::Stage2 => Stage2::check_config(cfg),
            TrainJob::Stage3 => stage3::check_config(cfg),
            TrainJob::Generator => generator::check_config(cfg),
        }
    }
}

pub struct TrainArgs {
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub device: String,
    /// `--resume`; None follows `experiment.resume`.
    pub resume: Option<String>,
    pub init: Option<PathBuf>,
    pub teacher: Option<String>,
    /// FID Inception weights for `experiment.eval_every` (adds rFID and IS to PSNR and codebook use).
    pub fid_weights: Option<PathBuf>,
    /// At most this many val images per periodic evaluation.
    pub eval_max_images: Option<usize>,
    pub workers: Option<usize>,
    pub rank: Option<usize>,
    pub world_size: Option<usize>,
    /// How long a collective may wait for the other ranks before failing.
    pub dist_timeout: std::time::Duration,
    /// Stage 3's frozen loss networks.
    pub loss_weights: LossWeights,
    /// The generator's frozen SFTok tokenizer (default: experiment.tokenizer_checkpoint) and its
    /// config (default: config.json beside it).
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    /// Set by Ctrl-C: save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
}

/// Where stage 3's frozen networks come from: a file each, or `random:SEED` (tests, the demo).
#[derive(Clone, Debug, Default)]
pub struct LossWeights {
    /// torchvision's `vgg16-397923af.pth` (the LPIPS backbone).
    pub vgg16: Option<String>,
    /// LPIPS v0.1 `vgg.pth` (the five linear layers).
    pub lpips: Option<String>,
    /// `dino_deitsmall16_pretrain.pth` (the discriminator's frozen backbone).
    pub dino: Option<String>,
}

impl LossWeights {
    /// Loads what `losses` asks for; a missing flag is an error naming it and the file.
    pub fn load(&self, losses: &crate::config::Losses, device: tch::Device) -> Result<FrozenNets> {
        let need = |v: &Option<String>, flag: &str, file: &str| -> Result<String> {
            v.clone().with_context(|| format!("stage 3 needs {flag} {file} (or {flag} random:SEED for a smoke test)"))
        };
        let vgg = need(&self.vgg16, "--vgg16-weights", "vgg16-397923af.pth (torchvision VGG16 IMAGENET1K_V1, the LPIPS backbone)")?;
        let lin = need(&self.lpips, "--lpips-weights", "vgg.pth (the LPIPS v0.1 linear layers)")?;
        let lpips = crate::lpips::load_lpips(&vgg, &lin, device)?;
        let dino = match DiscriminatorType::from_config(losses)? {
            DiscriminatorType::DinoDisc => {
                let spec = need(&self.dino, "--dino-weights", "dino_deitsmall16_pretrain.pth (the DINO ViT-S/16 backbone of losses.discriminator_type=dinodisc)")?;
                Some(crate::dino_discriminator::load_dino_backbone(&spec, device)?)
            }
            DiscriminatorType::PatchGan => None,
        };
        Ok(FrozenNets { lpips, dino })
    }
}

/// The training stream of the config: shards (+ proxy codes), train transform, seeded order;
/// this rank's share of the shards.
fn loader_config(cfg: &Config, args: &TrainArgs, env: &ProcessEnv, codes: Option<PathBuf>) -> Result<LoaderConfig> {
    let d = &cfg.dataset;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut lc = LoaderConfig::train(vec![d.params.train_shards_path_or_url.clone()]);
    lc.batch_size = cfg.training.per_gpu_batch_size as usize;
    lc.resize_shorter_edge = d.preprocessing.resize_shorter_edge;
    lc.crop_size = d.preprocessing.crop_size;
    lc.random_crop = d.preprocessing.random_crop;
    lc.random_flip = d.preprocessing.random_flip;
    lc.seed = cfg.training.seed;
    lc.shuffle_buffer = d.params.shuffle_buffer_size as usize;
    lc.rank = env.rank;
    lc.world_size = env.world_size;
    lc.workers = args.workers.unwrap_or((d.params.num_workers_per_gpu as usize).clamp(1, cores));
    lc.codes = codes;
    Ok(lc)
}

pub fn run(job: TrainJob, args: TrainArgs) -> Result<FitSummary> {
    let cfg = Config::load(&args.config, &args.overrides)?;
    job.check_config(&cfg).with_context(|| format!("config {}", args.config.display()))?;
    let env = ProcessEnv::from_env()?.with_overrides(args.rank, args.world_size)?;
    let device = crate::device::parse_device_for_local_rank(&args.device, env.local_rank)?;
    let dist = Dist::from_env(&env, device, args.dist_timeout)?;
    if cfg.training.enable_tf32 {
        // Read by libtorch when CUDA starts: TF32 cuBLAS matmuls (cuDNN convolutions allow TF32 by
        // default). Set before any CUDA work, while the process is single-threaded.
        unsafe { std::env::set_var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1") };
    }
    match job {
        TrainJob::Stage3 => return run_stage3(cfg, device, &env, dist, args),
        TrainJob::Generator => return run_generator(cfg, device, &env, dist, args),
        _ => {}
    }
    let with_codes = !cfg.dataset.params.train_proxy_codes_path.is_empty();
    if !with_codes && args.teacher.is_none() {
        bail!(
            "no proxy codes: set dataset.params.train_proxy_codes_path=codes/train (from `sftok-prep proxy-codes`), \
             or pass --teacher maskgit-vqgan-imagenet-f16-256.bin to compute them on the fly (slower)"
        );
    }
    let teacher = match &args.teacher {
        Some(spec) => {
            if spec.starts_with("random:") {
                eprintln!("warning: --teacher {spec} is a randomly initialised teacher: its proxy codes are meaningless outside smoke tests");
            }
            if !with_codes {
                eprintln!("computing proxy codes on the fly with the teacher (the reference's way; slower than precomputed codes)");
            }
            Some(crate::vqgan::load_teacher(spec, device)?)
        }
        None => None,
    };
    let eval = eval_setup(&cfg, &args, device)?;
    let codes = with_codes.then(|| PathBuf::from(&cfg.dataset.params.train_proxy_codes_path));
    if let Some(dir) = &codes {
        let content = sftok_pipeline::codes::ProxyCodeStore::open(dir)?.meta().content;
        if content != sftok_pipeline::codes::CodeContent::ProxyCodes {
            bail!("dataset.params.train_proxy_codes_path = {} holds `{}` output, not proxy codes: run `sftok-prep proxy-codes`", dir.display(), content.command());
        }
    }
    let data = data_factory(loader_config(&cfg, &args, &env, codes)?);
    let fit_opts = fit_options(&cfg, device, dist, &args);
    let task_opts = TokenTaskOptions { config: cfg, device, init: args.init.clone(), teacher, eval };
    run_job(job, task_opts, fit_opts, data)
}

/// Stage 3: no proxy codes; the teacher (of `model.pixel_decoder`'s sizes) only initialises the
/// pixel modules; the loss networks come from [`LossWeights`].
fn run_stage3(cfg: Config, device: tch::Device, env: &ProcessEnv, dist: Option<Arc<Dist>>, args: TrainArgs) -> Result<FitSummary> {
    let teacher = match &args.teacher {
        Some(spec) => {
            if spec.starts_with("random:") {
                eprintln!("warning: --teacher {spec} is a randomly initialised teacher: the pixel decoder starts from random weights, not MaskGIT's");
            }
            let sizes = crate::vqgan::VqganConfig::from(&cfg.model.pixel_decoder);
            Some(crate::vqgan::load_teacher_sized(spec, &sizes, device).context("--teacher (initialises pixel_decoder / pixel_quantize)")?)
        }
        None => None,
    };
    let frozen = args.loss_weights.load(&cfg.losses, device)?;
    let eval = eval_setup(&cfg, &args, device)?;
    let data = data_factory(loader_config(&cfg, &args, env, None)?);
    let fit_opts = fit_options(&cfg, device, dist, &args);
    let task = Stage3Options { config: cfg, device, init: args.init.clone(), teacher, frozen, eval };
    fit(&mut Stage3Task::new(task)?, fit_opts, data)
}

/// The generator: stored tokens (`dataset.params.pretokenization`) joined to the shards, or the
/// tokenizer on the fly; the tokenizer also decodes the sample previews.
fn run_generator(cfg: Config, device: tch::Device, env: &ProcessEnv, dist: Option<Arc<Dist>>, args: TrainArgs) -> Result<FitSummary> {
    let stored = PathBuf::from(&cfg.dataset.params.pretokenization);
    let with_tokens = !cfg.dataset.params.pretokenization.is_empty();
    let checkpoint = args.tokenizer.clone().or_else(|| (!cfg.experiment.tokenizer_checkpoint.is_empty()).then(|| PathBuf::from(&cfg.experiment.tokenizer_checkpoint)));
    let tokenizer = match checkpoint {
        Some(path) if path.exists() => {
            let spec = crate::eval::recon::ModelSpec { checkpoint: path, config: args.tokenizer_config.clone(), overrides: vec![], teacher: args.teacher.clone(), steps: None, seed: 0 };
            Some(crate::eval::sample::TokenDecoder::load(&spec, device).context("--tokenizer / experiment.tokenizer_checkpoint")?)
        }
        Some(path) if args.tokenizer.is_some() || !with_tokens => {
            bail!("tokenizer checkpoint {} does not exist: pass --tokenizer <stage-3 output>/ema_model (or set experiment.tokenizer_checkpoint)", path.display())
        }
        _ => None,
    };
    if with_tokens {
        if let Some(t) = &tokenizer {
            crate::tokenize::check_store_matches(&stored, t)?;
        }
    } else if tokenizer.is_some() {
        eprintln!("tokenizing every batch on the fly (the reference's way; `sftok-prep tokenize` once is faster)");
    }
    let mut lc = loader_config(&cfg, &args, env, with_tokens.then_some(stored))?;
    // Stored tokens and labels are all a step needs: no JPEG decoding.
    lc.decode_pixels = !with_tokens;
    let data = data_factory(lc);
    let fit_opts = fit_options(&cfg, device, dist, &args);
    let task = GeneratorOptions { config: cfg, device, tokenizer, init: args.init.clone() };
    fit(&mut GeneratorTask::new(task)?, fit_opts, data)
}

/// The loop's options from the config and the command line (20 non-finite losses in a row stop a run).
fn fit_options(cfg: &Config, device: tch::Device, dist: Option<Arc<Dist>>, args: &TrainArgs) -> FitOptions {
    FitOptions { config: cfg.clone(), device, resume: args.resume.clone(), max_nonfinite_in_a_row: 20, stop: args.stop.clone(), dist }
}

/// `experiment.eval_every`'s set-up: the val shards and, with `--fid-weights`, the Inception.
fn eval_setup(cfg: &Config, args: &TrainArgs, device: tch::Device) -> Result<Option<EvalSetup>> {
    if cfg.experiment.eval_every == 0 {
        return Ok(None);
    }
    let inception = match &args.fid_weights {
        // float64 features, as the reference evaluator computes them.
        Some(path) => Some(crate::inception::load_inception(path, device, Kind::Double).context("--fid-weights")?),
        None => {
            eprintln!("experiment.eval_every without --fid-weights: periodic evaluation reports PSNR and codebook use, no rFID");
            None
        }
    };
    Ok(Some(EvalSetup {
        shards: cfg.dataset.params.eval_shards_path_or_url.clone(),
        inception,
        batch: cfg.training.per_gpu_batch_size as usize,
        max_images: args.eval_max_images,
    }))
}

/// The training stream, fresh or restored from a checkpoint's loader position.
fn data_factory(lc: LoaderConfig) -> DataFactory {
    Box::new(move |state| {
        let loader = match state {
            Some(s) => Loader::restore(lc.clone(), &s).context("restoring the data loader from the checkpoint")?,
            None => Loader::new(lc.clone())?,
        };
        Ok(Box::new(loader) as Box<dyn BatchStream>)
    })
}

/// Builds a token job's task and runs the loop on `data` (also the entry point of the library's tests).
pub fn run_job(job: TrainJob, task: TokenTaskOptions, fit_opts: FitOptions, data: DataFactory) -> Result<FitSummary> {
    match job {
        TrainJob::Stage1 => fit(&mut Stage1Task::new(task)?, fit_opts, data),
        TrainJob::Stage2 => fit(&mut Stage2Task::new(task)?, fit_opts, data),
        TrainJob::Stage3 | TrainJob::Generator => bail!("{} is not a token task: use launch::run", job.name()),
    }
}
