//! `sftok-train stage1|stage2`: config + command line → loader + trainer.

use anyhow::{Context, Result, bail};
use sftok_model::config::Config;
use sftok_model::train::trainer::{DataFactory, Stage, TrainOptions, TrainSummary, train};
use sftok_pipeline::batch::BatchStream;
use sftok_pipeline::loader::{Loader, LoaderConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct StageArgs {
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub device: String,
    pub resume: String,
    pub init: Option<PathBuf>,
    pub teacher: Option<String>,
    pub workers: Option<usize>,
    pub rank: Option<usize>,
    pub world_size: Option<usize>,
}

/// The training stream of the config: shards (+ proxy codes), train transform, seeded order.
fn loader_config(cfg: &Config, args: &StageArgs, with_codes: bool) -> Result<LoaderConfig> {
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

pub fn run_stage(stage: Stage, args: StageArgs) -> Result<TrainSummary> {
    let cfg = Config::load(&args.config, &args.overrides)?;
    let device = sftok_model::device::parse_device(&args.device)?;
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
            Some(Arc::new(sftok_model::vqgan::load_teacher(spec, device)?))
        }
        None => None,
    };
    let lc = loader_config(&cfg, &args, with_codes)?;
    let data: DataFactory = Box::new(move |state| {
        let loader = match state {
            Some(s) => Loader::restore(lc.clone(), &s).context("restoring the data loader from the checkpoint")?,
            None => Loader::new(lc.clone())?,
        };
        Ok(Box::new(loader) as Box<dyn BatchStream>)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // second Ctrl-C: leave now
        }
        eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to quit without saving)");
    })
    .context("installing the Ctrl-C handler")?;
    let opts = TrainOptions {
        stage,
        config: cfg,
        device,
        init: args.init,
        resume: args.resume,
        teacher,
        max_nonfinite_in_a_row: 20,
        stop,
    };
    train(opts, data)
}
