//! The PatchGAN discriminator `NLayerDiscriminator` (training spec §7.4, the alternative
//! `losses.discriminator_type: patchgan`), as the reference's `modeling/modules/discriminator.py`
//! builds it with its defaults (3 input channels, 128 hidden, 3 stages, blur resampling with the
//! (1,3,3,1) kernel). The reference module is the one of bytedance/1d-tokenizer (TiTok).
//!
//! ```text
//! x [B,3,H,W] ──block_in: 5×5 conv 3→128, LeakyReLU 0.1──▶ [B,128,H,W]
//!   ──blocks.0: 3×3 conv 128→128, blur ↓2, GroupNorm(32), LeakyReLU 0.1──▶ [B,128,H/2,W/2]
//!   ──blocks.1: 3×3 conv 128→256, …──▶ [B,256,H/4,W/4]
//!   ──blocks.2: 3×3 conv 256→512, …──▶ [B,512,H/8,W/8]
//!   ──AdaptiveMaxPool2d(16)──▶ [B,512,16,16]
//!   ──to_logits: 1×1 conv 512→512, LeakyReLU 0.1, 5×5 conv 512→1──▶ [B,1,16,16]
//! ```
//!
//! The stage widths are `hidden · (1,1,2,4)[i] → hidden · (1,1,2,4)[i+1]` (the reference's
//! `in_channel_mult`), i.e. 128, 256, 512; that is what the spec's 1,909,889 values count.
//!
//! State-dict names (21 tensors; parameters 1,909,889 values): `block_in.0.{weight,bias}`,
//! `blocks.{0,1,2}.0.{weight,bias}` (conv), `blocks.{i}.1.kernel` [1,1,4,4] (the blur's constant
//! buffer, a persistent buffer in the reference: in its state dict, not trainable here),
//! `blocks.{i}.2.{weight,bias}` (GroupNorm), `to_logits.0.{weight,bias}`, `to_logits.2.{weight,bias}`.
//!
//! Convolutions are the reference's `Conv2dSame` (TF "SAME"): stride 1 with odd kernels, so plain
//! symmetric zero padding k/2. The blur pads "SAME" for a 4-tap kernel at stride 2 (total
//! `max((⌈i/2⌉−1)·2 + 4 − i, 0)`, the smaller half first: 1/1 for even sizes, 1/2 for odd), then a
//! depthwise 4×4 convolution with `outer(k,k)/Σ` at stride 2.
//!
//! Input: the reference's forward does no mapping, and its loss (`ReconstructionLoss_Stage2`,
//! patchgan branch) feeds the [0,1] images (real `x`, reconstruction `x̂`) directly — no DiffAug,
//! no normalisation.
//!
//! Initialisation is PyTorch's default (the reference applies none): convolution weights and
//! biases U(±1/√fan_in), GroupNorm weight 1, bias 0.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

/// `NLayerDiscriminator`'s constructor arguments (the reference's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchGanConfig {
    pub num_channels: i64,
    pub hidden_channels: i64,
    pub num_stages: usize,
    /// The 1-D blur taps (`BLUR_KERNEL_MAP[4]`).
    pub blur_kernel: Vec<f64>,
    /// `AdaptiveMaxPool2d` output side.
    pub pool_size: i64,
}

impl Default for PatchGanConfig {
    fn default() -> Self {
        PatchGanConfig { num_channels: 3, hidden_channels: 128, num_stages: 3, blur_kernel: vec![1.0, 3.0, 3.0, 1.0], pool_size: 16 }
    }
}

const LEAKY_SLOPE: f64 = 0.1;
const GN_GROUPS: i64 = 32;
/// torch.nn.GroupNorm's default epsilon.
const GN_EPS: f64 = 1e-5;

/// `Conv2dSame` at stride 1 with an odd kernel.
#[derive(Debug)]
struct SameConv {
    weight: Tensor, // [c_out, c_in, k, k]
    bias: Tensor,   // [c_out]
    k: i64,
}

impl SameConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64) -> Self {
        // PyTorch's Conv2d.reset_parameters: kaiming_uniform(a=√5) = U(±1/√fan_in), same bound for the bias.
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        SameConv { weight: p.var("weight", &[c_out, c_in, k, k], init), bias: p.var("bias", &[c_out], init), k }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let pad = self.k / 2;
        x.conv2d(&self.weight, Some(&self.bias), [1, 1], [pad, pad], [1, 1], 1)
    }
}

/// `BlurBlock`: SAME padding for a 4-tap kernel at stride 2, then a depthwise blur at stride 2.
#[derive(Debug)]
struct Blur {
    kernel: Tensor, // [1,1,K,K]
}

impl Blur {
    fn new(p: nn::Path, taps: &[f64]) -> Self {
        let n = taps.len() as i64;
        let kernel = p.zeros_no_train("kernel", &[1, 1, n, n]);
        tch::no_grad(|| {
            let t = Tensor::from_slice(taps).to_kind(Kind::Float);
            let k2 = t.unsqueeze(0) * t.unsqueeze(1); // [K,K]
            let k2 = &k2 / k2.sum(Kind::Float);
            kernel.shallow_clone().copy_(&k2.view([1, 1, n, n]).to_kind(kernel.kind()).to_device(kernel.device()));
        });
        Blur { kernel }
    }

    /// `max((⌈i/s⌉ − 1)·s + k − i, 0)` with the reference's fixed k = 4, s = 2.
    fn same_pad(i: i64) -> i64 {
        let (k, s) = (4, 2);
        (((i + s - 1) / s - 1) * s + k - i).max(0)
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (c, h, w) = {
            let s = x.size();
            (s[1], s[2], s[3])
        };
        let (ph, pw) = (Self::same_pad(h), Self::same_pad(w));
        let x = if ph > 0 || pw > 0 { x.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2]) } else { x.shallow_clone() };
        let weight = self.kernel.expand([c, -1, -1, -1], false);
        x.conv2d(&weight, None::<&Tensor>, [2, 2], [0, 0], [1, 1], c)
    }
}

/// GroupNorm(32), PyTorch's default eps (tch's layer with the plain kernel).
fn group_norm(p: nn::Path, c: i64) -> nn::GroupNorm {
    nn::group_norm(p, GN_GROUPS, c, nn::GroupNormConfig { eps: GN_EPS, cudnn_enabled: false, ..Default::default() })
}

/// `blocks.{i}`: conv (`.0`), blur (`.1`), GroupNorm (`.2`), LeakyReLU (`.3`).
#[derive(Debug)]
struct Stage {
    conv: SameConv,
    blur: Blur,
    norm: nn::GroupNorm,
}

/// `LeakyReLU(0.1)`: `x` where `x > 0`, else `0.1·x` (gradient 1 / 0.1 on the same sides as
/// PyTorch's; tch's `leaky_relu` has no slope argument).
fn leaky(x: &Tensor) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * LEAKY_SLOPE))
}

/// The PatchGAN discriminator: `[B,3,H,W]` images in [0,1] → `[B,1,16,16]` logits.
#[derive(Debug)]
pub struct NLayerDiscriminator {
    block_in: SameConv,
    blocks: Vec<Stage>,
    logits_hidden: SameConv,
    logits_out: SameConv,
    pool_size: i64,
}

impl NLayerDiscriminator {
    /// With the reference's defaults ([`PatchGanConfig::default`]).
    pub fn new(root: nn::Path) -> Self {
        Self::with_config(root, &PatchGanConfig::default())
    }

    pub fn with_config(root: nn::Path, cfg: &PatchGanConfig) -> Self {
        let h = cfg.hidden_channels;
        let block_in = SameConv::new(&root / "block_in" / 0, cfg.num_channels, h, 5);
        // in_channel_mult = (1, 1, 2, 4, …)
        let mult = |i: usize| if i == 0 { 1 } else { 1i64 << (i - 1) };
        let blocks_p = &root / "blocks";
        let blocks: Vec<Stage> = (0..cfg.num_stages)
            .map(|i| {
                let p = &blocks_p / i;
                let (c_in, c_out) = (h * mult(i), h * mult(i + 1));
                Stage { conv: SameConv::new(&p / 0, c_in, c_out, 3), blur: Blur::new(&p / 1, &cfg.blur_kernel), norm: group_norm(&p / 2, c_out) }
            })
            .collect();
        let c = h * mult(cfg.num_stages);
        let logits_p = &root / "to_logits";
        NLayerDiscriminator {
            block_in,
            blocks,
            logits_hidden: SameConv::new(&logits_p / 0, c, c, 1),
            logits_out: SameConv::new(&logits_p / 2, c, 1, 5),
            pool_size: cfg.pool_size,
        }
    }

    /// `[B,3,H,W]` (the [0,1] images, as the loss feeds them) → `[B,1,16,16]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = leaky(&self.block_in.forward(x)); // [B,128,H,W]
        for stage in &self.blocks {
            // [B,C_in,h,w] → [B,C_out,⌈h/2⌉,⌈w/2⌉]
            h = leaky(&stage.norm.forward(&stage.blur.forward(&stage.conv.forward(&h))));
        }
        let (h, _indices) = h.adaptive_max_pool2d([self.pool_size, self.pool_size]); // [B,512,16,16]
        self.logits_out.forward(&leaky(&self.logits_hidden.forward(&h))) // [B,1,16,16]
    }
}

impl crate::disc_loss::Discriminator for NLayerDiscriminator {
    fn logits(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }
}
