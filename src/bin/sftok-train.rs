//! `sftok-train`: the staged trainer.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sftok::flags::DeviceFlag;
use sftok_model::config::Config;
use sftok_model::train::launch::{LossWeights, TrainArgs, TrainJob};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "sftok-train", version, about = "Train SFTok stage by stage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by the training stages.
#[derive(clap::Args)]
struct StageFlags {
    /// A YAML config with the reference's layout (configs/*.yaml).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    device: DeviceFlag,
    /// auto: continue from the newest checkpoint in experiment.output_dir (if any); never; or a checkpoint dir.
    /// Default: auto when experiment.resume is True (the reference's default), never when False.
    #[arg(long)]
    resume: Option<String>,
    /// Weights to start from (a model dir or file; stage 2: stage 1's ema_model/). Default: experiment.init_weight.
    #[arg(long)]
    init: Option<PathBuf>,
    /// MaskGIT-VQGAN teacher: computes proxy codes on the fly when the config has no
    /// dataset.params.train_proxy_codes_path, and decodes the logged reconstructions. random:SEED for smoke tests.
    #[arg(long)]
    teacher: Option<String>,
    /// FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for the periodic evaluation of
    /// experiment.eval_every: adds rFID and IS to PSNR and codebook usage/entropy.
    #[arg(long)]
    fid_weights: Option<PathBuf>,
    /// At most this many val images per periodic evaluation (default: all of dataset.params.eval_shards_path_or_url).
    #[arg(long)]
    eval_max_images: Option<usize>,
    /// Decode threads of the loader (default: dataset.params.num_workers_per_gpu, at most the cores).
    #[arg(long)]
    workers: Option<usize>,
    /// This process's rank in a data-parallel job (default: $RANK from torchrun, else $SLURM_PROCID, else 0).
    #[arg(long)]
    rank: Option<usize>,
    /// Processes of the data-parallel job (default: $WORLD_SIZE from torchrun, else $SLURM_NTASKS, else 1).
    #[arg(long)]
    world_size: Option<usize>,
    /// Seconds a collective waits for the other ranks before this rank stops with an error naming them
    /// (PyTorch's default: 1800). Must exceed rank 0's longest pause: a periodic evaluation, a checkpoint.
    #[arg(long, default_value_t = 1800)]
    dist_timeout: u64,
    /// Config overrides: section.key=value
    overrides: Vec<String>,
}

impl StageFlags {
    fn into_args(self, stop: Arc<AtomicBool>) -> TrainArgs {
        TrainArgs {
            config: self.config,
            overrides: self.overrides,
            device: self.device.device,
            resume: self.resume,
            init: self.init,
            teacher: self.teacher,
            fid_weights: self.fid_weights,
            eval_max_images: self.eval_max_images,
            workers: self.workers,
            rank: self.rank,
            world_size: self.world_size,
            dist_timeout: std::time::Duration::from_secs(self.dist_timeout),
            loss_weights: LossWeights::default(),
            tokenizer: None,
            tokenizer_config: None,
            stop,
        }
    }
}

/// Stage 3: the stage flags plus the frozen networks of its loss.
#[derive(clap::Args)]
struct Stage3Flags {
    #[command(flatten)]
    stage: StageFlags,
    /// torchvision VGG16 IMAGENET1K_V1 weights, vgg16-397923af.pth (the LPIPS backbone). random:SEED for smoke tests.
    #[arg(long)]
    vgg16_weights: Option<String>,
    /// LPIPS v0.1 linear layers, vgg.pth (md5 d507d734…; the reference ships it as models/vgg_lpips.pth/vgg.pth). random:SEED for smoke tests.
    #[arg(long)]
    lpips_weights: Option<String>,
    /// DINO ViT-S/16, dino_deitsmall16_pretrain.pth (the discriminator's frozen backbone; not needed with
    /// losses.discriminator_type=patchgan). random:SEED for smoke tests.
    #[arg(long)]
    dino_weights: Option<String>,
}

/// The generator: the stage flags plus its frozen tokenizer.
#[derive(clap::Args)]
struct GeneratorFlags {
    #[command(flatten)]
    stage: StageFlags,
    /// The frozen SFTok tokenizer (a stage-3 ema_model/ directory or weights file): targets on the fly when
    /// dataset.params.pretokenization is empty, and decoding of the sample previews. Default: experiment.tokenizer_checkpoint.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The tokenizer's config when there is no config.json beside its weights.
    #[arg(long)]
    tokenizer_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Stage 1, warming up: single-step prediction of the teacher's proxy codes (every slot masked).
    #[command(after_help = "Example:\n  sftok-train stage1 --config configs/sftok_b64_stage1.yaml --teacher maskgit-vqgan-imagenet-f16-256.bin dataset.params.train_proxy_codes_path=codes/train\n\n\
        Checkpoints go to experiment.output_dir/checkpoint-N (resumed automatically); the EMA weights for\n\
        stage 2 end up in experiment.output_dir/ema_model/. TensorBoard: tensorboard --logdir <output_dir>/logs")]
    Stage1(StageFlags),
    /// Stage 2, self-forcing guided visual reconstruction, from stage 1's EMA weights.
    #[command(after_help = "Example:\n  sftok-train stage2 --config configs/sftok_b64_stage2.yaml --teacher maskgit-vqgan-imagenet-f16-256.bin --init outputs/sftok_b64_stage1_run1/ema_model\n\n\
        The teacher decodes previews and the evaluation of experiment.eval_every (set it to 0 to train without one when the codes are precomputed).")]
    Stage2(StageFlags),
    /// Stage 3, fine-tuning: encoder and quantizer frozen; decoder + MaskGIT pixel decoder trained on pixels
    /// (MSE + LPIPS + a DINO discriminator from losses.discriminator_start).
    #[command(after_help = "Example:\n  sftok-train stage3 --config configs/sftok_b64_stage3.yaml --init outputs/sftok_b64_stage2_run1/ema_model \\\n            --teacher maskgit-vqgan-imagenet-f16-256.bin --vgg16-weights vgg16-397923af.pth --lpips-weights vgg.pth \\\n            --dino-weights dino_deitsmall16_pretrain.pth\n\n        The teacher's decoder and codebook become pixel_decoder / pixel_quantize (the hand-off of stage 2 to 3).\n        Checkpoints add model_1 (discriminator + LeCam state), optimizer_1 and scheduler_1 (its optimiser).\n        The final ema_model/ is the tokenizer: sftok-eval recon|rfid --checkpoint <output_dir>/ema_model (no teacher needed).")]
    Stage3(Stage3Flags),
    /// The class-conditional MaskGIT generator (ImageBert) on a frozen SFTok tokenizer's 64 tokens.
    #[command(after_help = "Example:\n  sftok-prep tokenize --checkpoint outputs/sftok_b64_stage3_run1/ema_model --shards shards/train --out tokens/train\n  \
        sftok-train generator --config configs/sftok_maskgit.yaml --tokenizer outputs/sftok_b64_stage3_run1/ema_model \\\n            dataset.params.pretokenization=tokens/train\n\n\
        Without dataset.params.pretokenization every batch is tokenized on the fly (the reference's way).\n\
        Previews (experiment.generate_every) are class-conditional sample grids, one row per class, in TensorBoard\n\
        and train_images/. The final ema_model/ is the generator for sftok-eval sample | gfid.")]
    Generator(GeneratorFlags),
    /// Print the effective config: a YAML file plus dotted overrides, `${…}` resolved.
    #[command(after_help = "Example:\n  sftok-train config configs/sftok_b64_stage1.yaml training.per_gpu_batch_size=16")]
    Config {
        /// A YAML config with the reference's layout (configs/*.yaml).
        config: PathBuf,
        /// OmegaConf-style overrides: section.key=value
        overrides: Vec<String>,
    },
    /// Write a freshly initialised model (the reference's init) as model.safetensors + config.json.
    #[command(after_help = "Example:\n  sftok-train init configs/sftok_b64_stage1.yaml --out sftok-b-init/ --seed 42")]
    Init {
        /// A YAML config (configs/*.yaml).
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random initialisation.
        #[arg(long, default_value_t = 42)]
        seed: i64,
        /// Config overrides: section.key=value
        overrides: Vec<String>,
    },
    /// Check that libtorch loads and computes correctly on the chosen device.
    #[command(after_help = "Example:\n  sftok-train doctor --device auto")]
    Doctor {
        #[command(flatten)]
        device: DeviceFlag,
    },
    /// Gradient all-reduce bandwidth of this data-parallel set-up, through the trainer's own path
    /// (~25 MB buckets; NCCL for CUDA tensors when built with it, Gloo otherwise). Rank 0 prints.
    #[command(after_help = "Example:\n  torchrun --nproc_per_node 8 --no-python sftok-train allreduce-bench --device cuda --numel 175000000\n\n        One process alone measures the copy-in/copy-out cost of its own process group.")]
    AllreduceBench {
        #[command(flatten)]
        device: DeviceFlag,
        /// Gradient values (float32) per all-reduce; repeat for several sizes.
        #[arg(long, required = true)]
        numel: Vec<usize>,
        /// Timed all-reduces per size (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Seconds a collective may wait for the other ranks.
        #[arg(long, default_value_t = 300)]
        dist_timeout: u64,
    },
}

fn main() {
    sftok::run_main(|| match Cli::parse().command {
        Command::Config { config, overrides } => show_config(config, overrides),
        Command::Stage1(f) => stage(TrainJob::Stage1, f),
        Command::Stage2(f) => stage(TrainJob::Stage2, f),
        Command::Stage3(f) => stage3(f),
        Command::Generator(f) => generator(f),
        Command::Init { config, out, seed, overrides } => init(config, out, seed, overrides),
        Command::Doctor { device } => sftok::doctor(&device.device),
        Command::AllreduceBench { device, numel, iters, dist_timeout } => allreduce_bench(&device, &numel, iters, dist_timeout),
    });
}

fn show_config(path: PathBuf, overrides: Vec<String>) -> Result<()> {
    let cfg = Config::load(&path, &overrides)?;
    print!("{}", cfg.to_yaml());
    Ok(())
}

fn init(path: PathBuf, out: PathBuf, seed: i64, overrides: Vec<String>) -> Result<()> {
    let cfg = Config::load(&path, &overrides)?;
    let n = sftok_model::sftok::LoadedSFTok::write_initialised(&cfg, seed, &out)?;
    println!("wrote {} ({n} parameters, seed {seed}) and its config.json", out.join("model.safetensors").display());
    Ok(())
}

/// Ctrl-C: the first asks the loop to save a checkpoint and stop, the second quits at once.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to quit without saving)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

fn stage(job: TrainJob, flags: StageFlags) -> Result<()> {
    report(job, flags.into_args(stop_flag()?))
}

fn stage3(flags: Stage3Flags) -> Result<()> {
    let mut args = flags.stage.into_args(stop_flag()?);
    args.loss_weights = LossWeights { vgg16: flags.vgg16_weights, lpips: flags.lpips_weights, dino: flags.dino_weights };
    report(TrainJob::Stage3, args)
}

fn generator(flags: GeneratorFlags) -> Result<()> {
    let mut args = flags.stage.into_args(stop_flag()?);
    args.tokenizer = flags.tokenizer;
    args.tokenizer_config = flags.tokenizer_config;
    report(TrainJob::Generator, args)
}

/// Runs the job and prints where its outputs are.
fn report(job: TrainJob, args: TrainArgs) -> Result<()> {
    let summary = sftok_model::train::launch::run(job, args)?;
    if summary.rank > 0 {
        return Ok(()); // rank 0 reports for the data-parallel job
    }
    let out = &summary.output_dir;
    if summary.interrupted {
        println!("interrupted at step {}; resume with the same command (--resume auto)", summary.global_step);
    } else {
        println!("{} finished at step {} (last loss {:.4})", job.name(), summary.global_step, summary.last_loss);
    }
    let what = if summary.weights_dir.ends_with("ema_model") { "EMA weights" } else { "weights    " };
    println!("{what}   {}", summary.weights_dir.display());
    println!("TensorBoard   tensorboard --logdir {}", out.join("logs").display());
    println!("loss curves   {}  (metrics: {})", out.join("loss.png").display(), out.join("metrics.jsonl").display());
    Ok(())
}

fn allreduce_bench(device: &DeviceFlag, numel: &[usize], iters: usize, timeout_s: u64) -> Result<()> {
    use sftok_model::dist::{Dist, bench};
    let env = sftok_pipeline::launch_env::ProcessEnv::from_env()?;
    let device = device.resolve()?;
    let dist = Dist::connect(&env, device, std::time::Duration::from_secs(timeout_s))?;
    for &n in numel {
        let r = bench::allreduce_rate(&dist, n, iters, device)?;
        if dist.is_main() {
            println!(
                "all-reduce {:>11} float32 ({:>7.1} MB) over {} rank(s), {} on {}: {:>8.2} ms  algbw {:>6.2} GB/s  busbw {:>6.2} GB/s",
                r.numel,
                r.numel as f64 * 4.0 / 1e6,
                dist.world_size,
                dist.backend(),
                sftok_model::device::describe(device),
                r.seconds * 1e3,
                r.algbw_gb_s,
                r.busbw_gb_s
            );
        }
    }
    dist.barrier("the end of the benchmark")
}
