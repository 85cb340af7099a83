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
        Command::Doctor { device } => sftok::doctor(&device),
    });
}

fn show_config(path: PathBuf, overrides: Vec<String>) -> Result<()> {
    let cfg = Config::load(&path, &overrides)?;
    print!("{}", cfg.to_yaml());
    Ok(())
}
