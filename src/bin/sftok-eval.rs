//! `sftok-eval`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sftok-eval", version, about = "Evaluate SFTok: FID-family metrics and reconstructions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that libtorch loads and computes correctly on the chosen device.
    #[command(after_help = "Example:\n  sftok-eval doctor --device auto")]
    Doctor {
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn main() {
    sftok::run_main(|| match Cli::parse().command {
        Command::Doctor { device } => sftok::doctor(&device),
    });
}
