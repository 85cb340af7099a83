//! The FID InceptionV3: pytorch-fid's / torch-fidelity's port of the TF 2015-12-05 Inception graph
//! (evaluation.md §3), with the two input pipelines of §3.4–3.5.
//!
//! Parameter paths are the torchvision-layout state-dict keys of `keys/fid-inception.json`
//! (`Mixed_6d.branch7x7_2.conv.weight`, `….bn.running_var`, `fc.weight`); the 94
//! `*.bn.num_batches_tracked` counters are accepted and ignored (they do nothing in eval mode).
//!
//! Deviation from ADM (documented, §2.8): ADM runs the TF graph itself; this is the PyTorch port
//! of it, so ADM-style numbers computed here differ from TF's only by float rounding.

mod blocks;

use anyhow::{Context, Result, bail, ensure};
use blocks::{BnFold, Builder, Trunk, max_pool_3x3_s2};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

/// Fixed by the TF graph; kept as a plain struct so the numbers have names.
#[derive(Debug, Clone)]
pub struct FidInceptionConfig {
    /// TF graph's softmax width (1008, not ImageNet's 1000).
    pub num_classes: i64,
    /// BatchNorm epsilon of the TF graph.
    pub bn_eps: f64,
    /// Network input side.
    pub input_size: i64,
}

impl Default for FidInceptionConfig {
    fn default() -> Self {
        FidInceptionConfig { num_classes: 1008, bn_eps: 1e-3, input_size: 299 }
    }
}

/// How uint8 images become the network's 299×299 input (evaluation.md §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputPipeline {
    /// pytorch-fid: `x/255`, half-pixel bilinear (`align_corners=False`), then `2x − 1`.
    PytorchFid,
    /// TF graph / ADM / reference evaluator / torch-fidelity: TF1 legacy bilinear on 0..255,
    /// then `(x − 128)/128`.
    Tf1,
}

/// What one forward pass yields, all `[B, …]` in the network's dtype.
pub struct InceptionOutput {
    /// `[B, 2048]` global average pool after `Mixed_7c` (the FID feature).
    pub pool3: Tensor,
    /// `[B, 2023]` ReLU output of `Mixed_6d.branch1x1`, channels 0..7, flattened in (h, w, c)
    /// order — ADM's `mixed_6/conv` sFID tap.
    pub spatial: Tensor,
    /// `[B, 1008]` `pool3 @ fc.weightᵀ` without the bias (torch-fidelity's `logits_unbiased`,
    /// ADM's softmax input).
    pub logits_unbiased: Tensor,
    /// Spatial means of pytorch-fid's block outputs 0..2 (`[B,64]` after maxpool1, `[B,192]` after
    /// maxpool2, `[B,768]` after `Mixed_6e`): cheap, and they localise a mismatch in the trunk.
    pub block_means: [Tensor; 3],
}

pub struct FidInception {
    vs: nn::VarStore,
    config: FidInceptionConfig,
    trunk: Trunk,
    folds: Vec<BnFold>,
    /// `[1008, 2048]`; `fc.bias` is loaded (strict key set) but never used, as in both evaluators.
    fc_weight: Tensor,
}

impl FidInception {
    /// Builds the network with zero parameters in `kind` (Float or Double) on `device`; fill it
    /// with [`FidInception::load_tensors`].
    pub fn new(config: FidInceptionConfig, device: Device, kind: Kind) -> Result<Self> {
        ensure!(matches!(kind, Kind::Float | Kind::Double), "FID Inception runs in float32 or float64, not {kind:?}");
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let folds = RefCell::new(Vec::new());
        let trunk = Trunk::new(&Builder { p: root.clone(), eps: config.bn_eps, kind, folds: &folds });
        let fc = root.sub("fc");
        let fc_weight = fc.zeros_no_train("weight", &[config.num_classes, 2048]);
        let _fc_bias = fc.zeros_no_train("bias", &[config.num_classes]);
        // Variables are created as float32; `set_kind` converts them in place (`set_data`), so the
        // handles held by the layers see the new dtype too.
        vs.set_kind(kind);
        let folds = folds.into_inner();
        Ok(FidInception { vs, config, trunk, folds, fc_weight })
    }

    pub fn kind(&self) -> Kind {
        self.fc_weight.kind()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Copies named tensors into the network, converting dtype (float16 files are upcast
    /// exactly). Strict: every parameter must be present with its shape; the only names allowed
    /// beyond the parameters are the BatchNorm `num_batches_tracked` counters. `source` names the
    /// origin in error messages.
    pub fn load_tensors(&mut self, tensors: Vec<(String, Tensor)>, source: &str) -> Result<()> {
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut missing = Vec::new();
        let _guard = tch::no_grad_guard();
        for (name, mut var) in self.vs.variables() {
            match given.remove(&name) {
                Some(src) => {
                    ensure!(
                        src.size() == var.size(),
                        "{source}: `{name}` has shape {:?}, the FID Inception needs {:?}",
                        src.size(),
                        var.size()
                    );
                    var.copy_(&src);
                }
                None => missing.push(name),
            }
        }
        let mut unexpected: Vec<String> =
            given.into_keys().filter(|k| !k.ends_with(".num_batches_tracked")).collect();
        missing.sort();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() {
            bail!(
                "{source} is not an FID Inception state dict (torchvision layout, keys as in \
                 pytorch-fid's pt_inception-2015-12-05-6726825d.pth): {} missing{}{}; {} unexpected{}{}",
                missing.len(),
                if missing.is_empty() { "" } else { ", e.g. " },
                missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                unexpected.len(),
                if unexpected.is_empty() { "" } else { ", e.g. " },
                unexpected.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            );
        }
        self.fold_batch_norms();
        Ok(())
    }

    /// Fills every parameter with seeded random values of a plausible scale (Kaiming-normal
    /// convolutions, identity BatchNorm), like `bench_fid_py.py`: for smoke tests and throughput
    /// benchmarks only — the features are meaningless.
    pub fn randomize(&mut self, seed: i64) {
        tch::manual_seed(seed);
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let size = var.size();
            if name.ends_with("conv.weight") || name == "fc.weight" {
                let fan_in: i64 = size[1..].iter().product();
                var.copy_(&(var.randn_like() * (2.0 / fan_in as f64).sqrt()));
            } else if name.ends_with("bn.weight") || name.ends_with("running_var") {
                let _ = var.fill_(1.0);
            } else {
                let _ = var.fill_(0.0);
            }
        }
        self.fold_batch_norms();
    }

    fn fold_batch_norms(&self) {
        for fold in &self.folds {
            fold.apply();
        }
    }

    /// uint8 images `[B, H, W, 3]` (NHWC, any H×W, on any device) → network input `[B, 3, 299,
    /// 299]` in the network's dtype, per `pipeline`.
    pub fn preprocess(&self, images_u8_nhwc: &Tensor, pipeline: InputPipeline) -> Tensor {
        let size = self.config.input_size;
        let x = images_u8_nhwc.to_device(self.device()).to_kind(self.kind()); // [B,H,W,3]
        // The result is an NCHW-shaped view of NHWC memory ("channels last"): libtorch's CPU
        // convolutions and pools keep that layout through the network and are markedly faster in
        // it (pytorch-fid gets it implicitly from its `permute`).
        match pipeline {
            InputPipeline::PytorchFid => {
                let x = x.permute([0, 3, 1, 2]) / 255.0;
                x.upsample_bilinear2d([size, size], false, None, None) * 2.0 - 1.0
            }
            InputPipeline::Tf1 => ((tf1_resize_bilinear_nhwc(&x, size, size) - 128.0) / 128.0).permute([0, 3, 1, 2]),
        }
    }

    /// `[B, 3, 299, 299]` normalised input (as [`FidInception::preprocess`] makes it) → all taps.
    pub fn forward(&self, x: &Tensor) -> InceptionOutput {
        let _guard = tch::no_grad_guard();
        let spatial_mean = |t: &Tensor| t.mean_dim([2i64, 3].as_slice(), false, self.kind());
        let t = &self.trunk;
        let x = t.conv2d_1a_3x3.forward(x); // [B,32,149,149]
        let x = t.conv2d_2a_3x3.forward(&x); // [B,32,147,147]
        let x = t.conv2d_2b_3x3.forward(&x); // [B,64,147,147]
        let x = max_pool_3x3_s2(&x); // [B,64,73,73]
        let block0 = spatial_mean(&x);
        let x = t.conv2d_3b_1x1.forward(&x); // [B,80,73,73]
        let x = t.conv2d_4a_3x3.forward(&x); // [B,192,71,71]
        let x = max_pool_3x3_s2(&x); // [B,192,35,35]
        let block1 = spatial_mean(&x);
        let x = t.mixed_5.iter().fold(x, |h, m| m.forward(&h)); // [B,288,35,35]
        let mut x = t.mixed_6a.forward(&x); // [B,768,17,17]
        let mut tap = None;
        for (i, m) in t.mixed_6.iter().enumerate() {
            let (out, branch1x1) = m.forward(&x);
            if i == 2 {
                tap = Some(branch1x1); // Mixed_6d.branch1x1: [B,192,17,17]
            }
            x = out;
        }
        let block2 = spatial_mean(&x); // after Mixed_6e: [B,768]
        let x = t.mixed_7a.forward(&x); // [B,1280,8,8]
        let x = t.mixed_7b.forward(&x); // [B,2048,8,8]
        let x = t.mixed_7c.forward(&x); // [B,2048,8,8]
        let pool3 = spatial_mean(&x); // [B,2048]
        let tap = tap.expect("Mixed_6d is the third of four C blocks");
        let b = tap.size()[0];
        // NCHW → NHWC before flattening so the 2023 coordinates line up with ADM's mu_s/sigma_s.
        let spatial = tap.narrow(1, 0, 7).permute([0, 2, 3, 1]).reshape([b, -1]);
        let logits_unbiased = pool3.matmul(&self.fc_weight.tr());
        InceptionOutput { pool3, spatial, logits_unbiased, block_means: [block0, block1, block2] }
    }

    /// uint8 NHWC images → taps, per `pipeline`.
    pub fn features(&self, images_u8_nhwc: &Tensor, pipeline: InputPipeline) -> InceptionOutput {
        let _guard = tch::no_grad_guard();
        self.forward(&self.preprocess(images_u8_nhwc, pipeline))
    }
}

/// TF-1.x `ResizeBilinear` with `align_corners=False` and legacy (not half-pixel) coordinates,
/// evaluation.md §3.5, computed like torch-fidelity's bit-exact "slow" method: source coordinate
/// `i · float32(in/out)` in the input's dtype, border rows/columns clamped.
/// `x`: `[B, H, W, C]` float → `[B, out_h, out_w, C]`.
pub fn tf1_resize_bilinear_nhwc(x: &Tensor, out_h: i64, out_w: i64) -> Tensor {
    let (h, w) = (x.size()[1], x.size()[2]);
    let axis = |n_in: i64, n_out: i64| -> (Tensor, Tensor, Tensor) {
        let scale = (n_in as f64 / n_out as f64) as f32 as f64;
        let pos = Tensor::arange(n_out, (x.kind(), x.device())) * scale;
        let lo = pos.to_kind(Kind::Int64); // truncation = floor for pos ≥ 0
        let hi = (&lo + 1).clamp_max(n_in - 1);
        let frac = &pos - lo.to_kind(x.kind());
        (lo, hi, frac)
    };
    let (y0, y1, dy) = axis(h, out_h);
    let (x0, x1, dx) = axis(w, out_w);
    let dx = dx.view([1, 1, out_w, 1]);
    let dy = dy.view([1, out_h, 1, 1]);
    // Interpolate along x on every input row first, then pick rows y0/y1: each output value is the
    // same `top + (bottom − top)·dy` of the same `left + (right − left)·dx` terms as TF, with less
    // work than interpolating the two selected rows of every output row.
    let left = x.index_select(2, &x0);
    let horizontal = &left + (x.index_select(2, &x1) - &left) * dx; // [B,H,out_w,C]
    let top = horizontal.index_select(1, &y0);
    let bottom = horizontal.index_select(1, &y1);
    &top + (bottom - &top) * dy
}

/// Loads FID Inception weights from `path` onto `device` in `kind`, through the project's single
/// checkpoint entry point: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (legacy PyTorch
/// format) as it is, or a `.safetensors` copy (float16/32/64 under the torchvision-layout keys).
pub fn load_inception(path: &Path, device: Device, kind: Kind) -> Result<FidInception> {
    let sd = crate::checkpoint::read(path).with_context(|| format!("FID Inception weights; get them with:\n{CONVERT_SNIPPET}"))?;
    let mut net = FidInception::new(FidInceptionConfig::default(), device, kind)?;
    net.load_tensors(sd.tensors, &path.display().to_string())?;
    Ok(net)
}

/// Where to get the weights (used as they are; a safetensors copy loads faster).
pub const CONVERT_SNIPPET: &str = "  # weights: https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth\n  \
import torch, safetensors.torch as st\n  \
sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu')\n  \
st.save_file({k: v.contiguous() for k, v in sd.items()}, 'pt_inception-2015-12-05-6726825d.safetensors')";
