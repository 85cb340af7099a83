//! `sftok-train`: the staged trainer.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sftok_model::config::Config;
use sftok_model::train::trainer::Stage;
use std::path::PathBuf;

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
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto: continue from the newest checkpoint in experiment.output_dir (if any); never; or a checkpoint dir.
    #[arg(long, default_value = "auto")]
    resume: String,
    /// Weights to start from (a model dir or file; stage 2: stage 1's ema_model/). Default: experiment.init_weight.
    #[arg(long)]
    init: Option<PathBuf>,
    /// MaskGIT-VQGAN teacher: computes proxy codes on the fly when the config has no
    /// dataset.params.train_proxy_codes_path, and decodes the logged reconstructions. random:SEED for smoke tests.
    #[arg(long)]
    teacher: Option<String>,
    /// Decode threads of the loader (default: dataset.params.num_workers_per_gpu, at most the cores).
    #[arg(long)]
    workers: Option<usize>,
    /// This process's rank (default: $RANK, else 0).
    #[arg(long)]
    rank: Option<usize>,
    /// Number of processes (default: $WORLD_SIZE, else 1).
    #[arg(long)]
    world_size: Option<usize>,
    /// Config overrides: section.key=value
    overrides: Vec<String>,
}

impl From<StageFlags> for sftok::train::StageArgs {
    fn from(f: StageFlags) -> Self {
        sftok::train::StageArgs {
            config: f.config,
            overrides: f.overrides,
            device: f.device,
            resume: f.resume,
            init: f.init,
            teacher: f.teacher,
            workers: f.workers,
            rank: f.rank,
            world_size: f.world_size,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Stage 1, warming up: single-step prediction of the teacher's proxy codes (every slot masked).
    #[command(after_help = "Example:\n  sftok-train stage1 --config configs/sftok_b64_stage1.yaml dataset.params.train_proxy_codes_path=codes/train\n\n\
        Checkpoints go to experiment.output_dir/checkpoint-N (resumed automatically); the EMA weights for\n\
        stage 2 end up in experiment.output_dir/ema_model/. TensorBoard: tensorboard --logdir <output_dir>/logs")]
    Stage1(StageFlags),
    /// Stage 2, self-forcing guided visual reconstruction, from stage 1's EMA weights.
    #[command(after_help = "Example:\n  sftok-train stage2 --config configs/sftok_b64_stage2.yaml --init outputs/sftok_b64_stage1_run1/ema_model")]
    Stage2(StageFlags),
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
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn main() {
    sftok::run_main(|| match Cli::parse().command {
        Command::Config { config, overrides } => show_config(config, overrides),
        Command::Stage1(f) => stage(Stage::Stage1, f),
        Command::Stage2(f) => stage(Stage::Stage2, f),
        Command::Init { config, out, seed, overrides } => init(config, out, seed, overrides),
        Command::Doctor { device } => sftok::doctor(&device),
    });
}

fn show_config(path: PathBuf, overrides: Vec<String>) -> Result<()> {
    let cfg = Config::load(&path, &overrides)?;
    print!("{}", cfg.to_yaml());
    Ok(())
}

fn init(path: PathBuf, out: PathBuf, seed: i64, overrides: Vec<String>) -> Result<()> {
    use sftok_model::sftok::{LoadedSFTok, SFTok, SFTokConfig};
    let cfg = Config::load(&path, &overrides)?;
    tch::manual_seed(seed);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = SFTok::new(&vs.root(), &SFTokConfig::from_config(&cfg)?);
    SFTok::reference_init(&vs);
    LoadedSFTok::save_dir(&vs, &cfg, &out)?;
    let n: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    println!("wrote {} ({n} parameters, seed {seed}) and its config.json", out.join("model.safetensors").display());
    Ok(())
}

fn stage(stage: Stage, flags: StageFlags) -> Result<()> {
    let summary = sftok::train::run_stage(stage, flags.into())?;
    let out = &summary.output_dir;
    if summary.interrupted {
        println!("interrupted at step {}; resume with the same command (--resume auto)", summary.global_step);
    } else {
        println!("{} finished at step {} (last loss {:.4})", stage.name(), summary.global_step, summary.last_loss);
    }
    println!("EMA weights   {}", summary.ema_dir.display());
    println!("TensorBoard   tensorboard --logdir {}", out.join("logs").display());
    println!("loss curves   {}  (metrics: {})", out.join("loss.png").display(), out.join("metrics.jsonl").display());
    Ok(())
}
