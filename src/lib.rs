//! Shared command-line habits of the three sftok binaries: flag groups, error printing, `doctor`.
//! The binaries only parse arguments and call `sftok-pipeline` / `sftok-model`.

pub mod flags;


use anyhow::Result;

/// Runs a command's body and prints errors as `error: …` plus their causes, one per line,
/// then exits with status 1 (instead of Rust's default `Error: …` debug dump).
pub fn run_main(body: impl FnOnce() -> Result<()>) {
    if let Err(err) = body() {
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

/// `doctor` subcommand shared by all binaries: libtorch loads, the device computes correctly.
pub fn doctor(device: &str) -> Result<()> {
    let device = sftok_model::device::parse_device(device)?;
    let report = sftok_model::doctor::run(device)?;
    println!("device            {}", report.device);
    println!("cuda available    {} ({} device(s))", report.cuda_available, report.cuda_devices);
    println!("matmul f32 error  {:.2e}", report.matmul_f32_max_err);
    println!("matmul bf16 rel   {:.2e}", report.matmul_bf16_rel_err);
    println!("doctor: ok");
    Ok(())
}
