//! `sftok-train`: the staged trainer.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sftok_model::config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sftok-train", version, about = "Train SFTok stage by stage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
