//! `--device auto|cpu|cuda|cuda:N`, shared by every command.

use anyhow::{Result, bail};
use tch::Device;

/// Parses a `--device` value. `auto` picks CUDA device 0 when libtorch sees a GPU, else the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "auto" if tch::Cuda::is_available() => cuda(0),
        "auto" | "cpu" => cpu(),
        "cuda" | "gpu" => cuda(0),
        s if s.starts_with("cuda:") => match s[5..].parse::<usize>() {
            Ok(i) => cuda(i),
            Err(_) => bail!("--device {spec:?}: the GPU index after 'cuda:' must be a number, e.g. cuda:0"),
        },
        _ => bail!("--device {spec:?} is not one of auto, cpu, cuda, cuda:N"),
    }
}

/// [`parse_device`] for process `local_rank` of its machine (torchrun's `LOCAL_RANK`, Slurm's
/// `SLURM_LOCALID`): `auto` and `cuda` mean that process's GPU; `cuda:N` stays as given.
pub fn parse_device_for_local_rank(spec: &str, local_rank: usize) -> Result<Device> {
    match parse_device(spec)? {
        Device::Cuda(0) if !spec.trim().contains(':') => cuda(local_rank),
        d => Ok(d),
    }
}

/// The CPU, with this process's float32 matrix products routed as `SFTOK_CPU_MATMUL` says
/// ([`crate::cpu_matmul`]: oneDNN on AMD CPUs with AVX-512, else MKL).
pub fn cpu() -> Result<Device> {
    crate::cpu_matmul::configure()?;
    Ok(Device::Cpu)
}

fn cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if n == 0 {
        bail!("--device cuda:{i}: libtorch sees no CUDA device here. Use --device cpu (or auto).");
    }
    if i >= n {
        bail!("--device cuda:{i}: only {n} CUDA device(s) visible (cuda:0..cuda:{}).", n - 1);
    }
    // The reference's `torch.backends.cudnn.benchmark = True`: cuDNN times its convolution
    // algorithms per input shape once and keeps the fastest (the shapes here are fixed).
    tch::Cuda::cudnn_set_benchmark(true);
    Ok(Device::Cuda(i))
}

/// Human-readable device name for logs.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads, float32 matmul: {})", tch::get_num_threads(), crate::cpu_matmul::active()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_auto_and_rejects_garbage() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("CPU").unwrap(), Device::Cpu);
        let auto = parse_device("auto").unwrap();
        assert_eq!(auto == Device::Cpu, !tch::Cuda::is_available());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("auto, cpu, cuda"), "{err}");
        assert!(parse_device("cuda:x").unwrap_err().to_string().contains("number"));
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("no CUDA device"));
        }
    }
}
