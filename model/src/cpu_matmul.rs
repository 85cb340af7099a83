//! Which library multiplies float32 matrices on the CPU: MKL (libtorch's default) or oneDNN
//! (`csrc/sftok_matmul.cpp`, the reasons and the measurements). Chosen once per process, when a
//! command picks the CPU ([`crate::device::parse_device`]), from `SFTOK_CPU_MATMUL`:
//!
//! - `auto` (default): oneDNN for products of at least 2^21 multiply-adds on an x86 CPU with
//!   AVX-512 that is not Intel's. MKL takes an AVX2 path on AMD CPUs (here, 2-core Zen 5:
//!   161–191 GFLOP/s at SFTok-B's shapes, oneDNN 334–442); on Intel CPUs MKL runs its AVX-512
//!   kernels, so it stays. Smaller products stay in MKL: oneDNN costs ~10–13 µs a call, which
//!   loses below ~2^21.
//! - `onednn`: every float32 CPU product through oneDNN, any size, any vendor (an error if the CPU
//!   lacks AVX-512). `make test` runs the fixture tests this way too.
//! - `mkl`: libtorch's default everywhere.
//!
//! Both give float32 products (oneDNN in its strict float32 mode); they round differently, by
//! about as much as MKL differs from a float64 product (tests/cpu_matmul.rs). That includes the
//! teacher quantizer's distance product, so a near-tie proxy code may come out as the other of
//! two equally near entries than under MKL (the fixtures' codes are exact both ways; a GPU's
//! cuBLAS rounds differently again). Autocast's bf16 products are not float32 and keep
//! libtorch's route (oneDNN's bf16 kernels already).

use crate::ffi::check;
use anyhow::{Result, bail};
use std::ffi::c_char;
use std::sync::OnceLock;

unsafe extern "C" {
    fn sftok_set_cpu_matmul_min_mnk(min_mnk: i64) -> *mut c_char;
    fn sftok_cpu_matmul_min_mnk() -> i64;
    fn sftok_onednn_matmul_count() -> u64;
}

/// The environment variable that chooses ([`configure`]).
pub const ENV: &str = "SFTOK_CPU_MATMUL";

/// Below this many multiply-adds (m·k·n) `auto` keeps MKL (oneDNN's per-call cost wins there).
pub const AUTO_MIN_MNK: i64 = 1 << 21;

/// Where the CPU's float32 `mm` / `addmm` go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMatmul {
    /// libtorch's default (MKL's sgemm).
    Mkl,
    /// oneDNN for products of at least `min_mnk` multiply-adds, MKL below.
    OneDnn { min_mnk: i64 },
}

impl std::fmt::Display for CpuMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuMatmul::Mkl => write!(f, "MKL"),
            CpuMatmul::OneDnn { min_mnk: 1 } => write!(f, "oneDNN"),
            CpuMatmul::OneDnn { min_mnk } => {
                write!(f, "oneDNN from {min_mnk} multiply-adds, MKL below")
            }
        }
    }
}

/// Applies `SFTOK_CPU_MATMUL` to this process, once: later calls return the first answer and
/// change nothing.
pub fn configure() -> Result<CpuMatmul> {
    static CHOSEN: OnceLock<Result<CpuMatmul, String>> = OnceLock::new();
    let setting = || std::env::var(ENV).unwrap_or_default();
    CHOSEN
        .get_or_init(|| apply(&setting()).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Routes this process's float32 CPU products as `setting` says (`auto`, `onednn`, `mkl`; empty
/// is `auto`), from now on. Commands go through [`configure`]; this is for tests that compare
/// the routes in one process.
pub fn apply(setting: &str) -> Result<CpuMatmul> {
    match setting.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => {
            if !onednn_pays_off() {
                return set(CpuMatmul::Mkl);
            }
            // The CPU has what oneDNN's float32 matmul needs, so a refusal here is unexpected:
            // keep MKL rather than fail a run over a speed-up.
            set(CpuMatmul::OneDnn { min_mnk: AUTO_MIN_MNK }).or_else(|_| set(CpuMatmul::Mkl))
        }
        "onednn" => set(CpuMatmul::OneDnn { min_mnk: 1 }).map_err(|e| {
            anyhow::anyhow!("{ENV}=onednn: oneDNN does not take float32 products on this CPU ({e:#}). Unset {ENV} or set it to mkl.")
        }),
        "mkl" => set(CpuMatmul::Mkl),
        other => bail!("{ENV}={other:?} is not one of auto, onednn, mkl"),
    }
}

fn set(route: CpuMatmul) -> Result<CpuMatmul> {
    let min_mnk = match route {
        CpuMatmul::Mkl => i64::MAX,
        CpuMatmul::OneDnn { min_mnk } => min_mnk,
    };
    check(unsafe { sftok_set_cpu_matmul_min_mnk(min_mnk) })?;
    Ok(route)
}

/// The route in force now.
pub fn active() -> CpuMatmul {
    match unsafe { sftok_cpu_matmul_min_mnk() } {
        i64::MAX => CpuMatmul::Mkl,
        min_mnk => CpuMatmul::OneDnn { min_mnk },
    }
}

/// x86 with the AVX-512 subsets oneDNN's float32 matmul checks for, and not an Intel CPU (whose
/// MKL path is AVX-512 already).
fn onednn_pays_off() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let v = std::arch::x86_64::__cpuid(0); // leaf 0: the vendor string
        let vendor: Vec<u8> = [v.ebx, v.edx, v.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        vendor != b"GenuineIntel"
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How many float32 products this process has sent to oneDNN so far.
pub fn onednn_products() -> u64 {
    unsafe { sftok_onednn_matmul_count() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_an_unknown_setting() {
        let err = apply("openblas").unwrap_err().to_string();
        assert!(
            err.contains("SFTOK_CPU_MATMUL") && err.contains("auto, onednn, mkl"),
            "{err}"
        );
    }
}
