//! `sftok-train <task>`: config + command line → data stream, teacher, evaluation set-up and the
//! task → [`fit`]. Adding a training job means a `TrainJob` variant and its arm in [`run`].

use super::fit::{DataFactory, FitOptions, FitSummary, fit};
use super::stage1::{Stage1, Stage1Task};
use super::stage2::{Stage2, Stage2Task};
use super::token_task::{EvalSetup, TokenStage, TokenTaskOptions};
use crate::config::Config;
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
}

impl TrainJob {
    pub fn name(self) -> &'static str {
        match self {
            TrainJob::Stage1 => Stage1::NAME,
            TrainJob::Stage2 => Stage2::NAME,
        }
    }

    /// Refuses a config written for another job, naming the key, before any data is touched.
    pub fn check_config(self, cfg: &Config) -> Result<()> {
        match self {
            TrainJob::Stage1 => Stage1::check_config(cfg),
            TrainJob::Stage2 => Stage2::check_config(cfg),
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
    /// Set by Ctrl-C: save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
}

/// The training stream of the config: shards (+ proxy codes), train transform, seeded order.
fn loader_config(cfg: &Config, args: &TrainArgs, with_codes: bool) -> Result<LoaderConfig> {
    let d = &cfg.dataset;
    let (rank, world_size) = sftok_pipeline::loader::sources::rank_and_world(args.rank, args.world_size)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut lc = LoaderConfig::train(vec![d.params.train_shards_path_or_url.clone()]);
    lc.batch_size = cfg.training.per_gpu_batch_size as usize;
    lc.resize_shorter_edge = d.preprocessing.resize_shorter_edge;
    lc.crop_size = d.preprocessing.crop_size;
    lc.random_crop = d.preprocessing.random_crop;
    lc.random_flip = d.preprocessing.random_flip;
    lc.seed = cfg.training.seed;
    lc.rank = rank;
    lc.world_size = world_size;
    lc.workers = args.workers.unwrap_or((d.params.num_workers_per_gpu as usize).clamp(1, cores));
    lc.codes = with_codes.then(|| PathBuf::from(&d.params.train_proxy_codes_path));
    Ok(lc)
}

pub fn run(job: TrainJob, args: TrainArgs) -> Result<FitSummary> {
    let cfg = Config::load(&args.config, &args.overrides)?;
    job.check_config(&cfg).with_context(|| format!("config {}", args.config.display()))?;
    let device = crate::device::parse_device(&args.device)?;
    if cfg.training.enable_tf32 {
        // Read by libtorch when CUDA starts: TF32 cuBLAS matmuls (cuDNN convolutions allow TF32 by
        // default). Set before any CUDA work, while the process is single-threaded.
        unsafe { std::env::set_var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1") };
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
    let eval = (cfg.experiment.eval_every > 0).then(|| -> Result<EvalSetup> {
        let inception = match &args.fid_weights {
            // float64 features, as the reference evaluator computes them.
            Some(path) => Some(crate::inception::load_inception(path, device, Kind::Double).context("--fid-weights")?),
            None => {
                eprintln!("experiment.eval_every without --fid-weights: periodic evaluation reports PSNR and codebook use, no rFID");
                None
            }
        };
        Ok(EvalSetup {
            shards: cfg.dataset.params.eval_shards_path_or_url.clone(),
            inception,
            batch: cfg.training.per_gpu_batch_size as usize,
            max_images: args.eval_max_images,
        })
    });
    let eval = eval.transpose()?;
    let lc = loader_config(&cfg, &args, with_codes)?;
    let data: DataFactory = Box::new(move |state| {
        let loader = match state {
            Some(s) => Loader::restore(lc.clone(), &s).context("restoring the data loader from the checkpoint")?,
            None => Loader::new(lc.clone())?,
        };
        Ok(Box::new(loader) as Box<dyn BatchStream>)
    });
    let fit_opts = FitOptions { config: cfg.clone(), device, resume: args.resume.clone(), max_nonfinite_in_a_row: 20, stop: args.stop.clone() };
    let task_opts = TokenTaskOptions { config: cfg, device, init: args.init.clone(), teacher, eval };
    run_job(job, task_opts, fit_opts, data)
}

/// Builds the job's task and runs the loop on `data` (also the entry point of the library's tests).
pub fn run_job(job: TrainJob, task: TokenTaskOptions, fit_opts: FitOptions, data: DataFactory) -> Result<FitSummary> {
    match job {
        TrainJob::Stage1 => fit(&mut Stage1Task::new(task)?, fit_opts, data),
        TrainJob::Stage2 => fit(&mut Stage2Task::new(task)?, fit_opts, data),
    }
}
