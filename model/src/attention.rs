//! Every network's attention goes through [`sdpa`]: libtorch's `scaled_dot_product_attention`
//! with no mask tensor (none of the nets masks attention), which on CUDA in bf16/fp16 picks the
//! flash or memory-efficient kernel when the inputs allow it (head dim a multiple of 8 up to
//! 256, last dim contiguous; the per-head views of the projections qualify without a copy).
//!
//! [`probe`] records which kernel the dispatcher picks (`at::_fused_sdp_choice`, the function
//! SDPA itself asks) for the real tensors of every call inside it, per call site. The trainer
//! probes its first step and logs the answer, so a run says which kernels its attention used.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// libtorch's `SDPBackend` (ATen/native/transformers/sdp_utils_cpp.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SdpKernel {
    Math,
    Flash,
    MemoryEfficient,
    CuDnn,
    Overrideable,
    /// No kernel takes these inputs (SDPA then raises).
    Error,
}

impl SdpKernel {
    fn from_code(code: i64) -> SdpKernel {
        match code {
            0 => SdpKernel::Math,
            1 => SdpKernel::Flash,
            2 => SdpKernel::MemoryEfficient,
            3 => SdpKernel::CuDnn,
            4 => SdpKernel::Overrideable,
            _ => SdpKernel::Error,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SdpKernel::Math => "math",
            SdpKernel::Flash => "flash",
            SdpKernel::MemoryEfficient => "memory-efficient",
            SdpKernel::CuDnn => "cuDNN",
            SdpKernel::Overrideable => "overrideable",
            SdpKernel::Error => "none",
        }
    }
}

/// softmax(q kᵀ · scale) v over q, k, v [B, H, L, hd] (scale: 1/√hd when None), dropout on the
/// probabilities. `site` names the call for [`probe`].
pub fn sdpa(site: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, dropout_p: f64, scale: Option<f64>) -> Tensor {
    if PROBING.load(Ordering::Relaxed) {
        let kernel = SdpKernel::from_code(Tensor::internal_fused_sdp_choice(q, k, v, None::<Tensor>, dropout_p, false, scale, false));
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        *seen.entry((site, format!("{:?}", q.kind()), kernel)).or_insert(0) += 1;
    }
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, dropout_p, false, scale, false)
}

static PROBING: AtomicBool = AtomicBool::new(false);
static SEEN: Mutex<BTreeMap<(&'static str, String, SdpKernel), usize>> = Mutex::new(BTreeMap::new());

/// One line of [`probe`]'s answer: `calls` calls at `site` with inputs of `dtype` went to `kernel`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpUse {
    pub site: &'static str,
    pub dtype: String,
    pub kernel: SdpKernel,
    pub calls: usize,
}

/// Runs `f`, recording the kernel of every [`sdpa`] call in it (from any thread; probes do not
/// nest). The answer is sorted by site.
pub fn probe<T>(f: impl FnOnce() -> T) -> (T, Vec<SdpUse>) {
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).clear();
    PROBING.store(true, Ordering::Relaxed);
    let out = f();
    PROBING.store(false, Ordering::Relaxed);
    let seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|e| e.into_inner()));
    (out, seen.into_iter().map(|((site, dtype, kernel), calls)| SdpUse { site, dtype, kernel, calls }).collect())
}

/// "encoder: flash ×12 (BFloat16); decoder: …" (empty: no attention ran).
pub fn describe(uses: &[SdpUse]) -> String {
    uses.iter().map(|u| format!("{}: {} ×{} ({})", u.site, u.kernel.name(), u.calls, u.dtype)).collect::<Vec<_>>().join("; ")
}

/// The same product written out (softmax((q · scale) kᵀ) v), which the reference's DINO uses on
/// the CPU; for tests of [`sdpa`] and that path.
pub fn explicit(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    (q * scale).matmul(&k.transpose(-2, -1)).softmax(-1, None::<Kind>).matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn sdpa_is_the_written_out_product_and_the_probe_names_the_kernel() {
        tch::manual_seed(3);
        let q = Tensor::randn([2, 3, 17, 16], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([2, 3, 17, 16], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([2, 3, 17, 16], (Kind::Float, Device::Cpu));
        let scale = 0.3;
        let (got, uses) = probe(|| (sdpa("test", &q, &k, &v, 0.0, Some(scale)), sdpa("test", &q, &k, &v, 0.0, None)));
        let d = (&got.0 - explicit(&q, &k, &v, scale)).abs().max().double_value(&[]);
        assert!(d < 1e-5, "explicit scale: {d:e}");
        let d = (&got.1 - explicit(&q, &k, &v, 0.25)).abs().max().double_value(&[]);
        assert!(d < 1e-5, "default scale 1/sqrt(16): {d:e}");
        // CPU float32: libtorch's CPU flash kernel or math; either way one site, two calls. (Other
        // tests' calls may land in the probe too: they run in parallel under their own sites.)
        let uses: Vec<SdpUse> = uses.into_iter().filter(|u| u.site == "test").collect();
        assert_eq!(uses.len(), 1, "{uses:?}");
        assert_eq!((uses[0].site, uses[0].dtype.as_str(), uses[0].calls), ("test", "Float", 2));
        assert!(matches!(uses[0].kernel, SdpKernel::Flash | SdpKernel::Math), "{uses:?}");
        // Outside a probe nothing is recorded.
        let _ = sdpa("test", &q, &k, &v, 0.0, None);
        assert!(probe(|| ()).1.iter().all(|u| u.site != "test"));
        assert_eq!(describe(&uses), format!("test: {} ×2 (Float)", uses[0].kernel.name()));
    }
}
