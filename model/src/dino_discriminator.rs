//! The stage-3 DINO discriminator (the reference's `modeling/modules/discriminator_dino.py`,
//! ../shared/spec/sftok-training.md §7.4): a frozen DINO ViT-S/16 backbone ([`DinoBackbone`]) whose
//! embedding and blocks 2, 5, 8, 11 feed five trainable spectral-norm heads ([`DinoHeads`]).
//!
//! * Backbone parameter paths are the keys of the official `dino_deitsmall16_pretrain.pth`
//!   (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
//!   mlp.fc1,mlp.fc2}.*`, `norm.*` — loaded, never used) plus the buffers `x_scale` = 1/std,
//!   `x_shift` = −mean/std (ImageNet). Every backbone tensor is non-trainable (no gradient is
//!   accumulated in it), but gradients flow through it to the input image.
//! * Head paths are the reference's `heads.{h}.…` state dict under the caller's path (in training
//!   `discriminator.heads`): `{h}.0.0` SN-Conv1d k=1, `{h}.0.1` BatchNormLocal, `{h}.1.fn.0` SN-Conv1d
//!   k=9 (circular padding 4), `{h}.1.fn.1` BatchNormLocal, `{h}.2` SN-Conv1d 384→1. Spectral norm as
//!   `torch.nn.utils.spectral_norm` in train mode: `weight_orig` (trainable), `weight_u`, `weight_v`
//!   (buffers, one power iteration in place per forward).
//!
//! Input [B, 3, H, W] in [0, 1] → ImageNet normalisation → 224×224 (H, W > 224: crop-or-area coin;
//! otherwise `area` if H > 224 else `bicubic`, quirks of the reference kept) → logits [B, 980].

use crate::checkpoint::{self, StateDict};
use anyhow::{Context, Result, bail};
use std::path::Path;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Where the official backbone weights are published.
pub const DINO_URL: &str = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth";
/// Backbone input side.
pub const IMG_SIZE: i64 = 224;
pub const PATCH_SIZE: i64 = 16;
pub const EMBED_DIM: i64 = 384;
pub const DEPTH: i64 = 12;
pub const NUM_HEADS: i64 = 6;
pub const MLP_DIM: i64 = 1536;
/// Blocks after which a readout is taken (plus the embedding itself).
pub const KEY_DEPTHS: [i64; 4] = [2, 5, 8, 11];
/// Number of discriminator heads (embedding + KEY_DEPTHS).
pub const NUM_TAPS: usize = 5;
/// Tokens per readout (14 × 14 patches).
pub const NUM_PATCHES: i64 = (IMG_SIZE / PATCH_SIZE) * (IMG_SIZE / PATCH_SIZE);
/// Heads' kernel size of the residual block.
pub const HEAD_KERNEL: i64 = 9;
/// `BatchNormLocal` virtual batch.
pub const VIRTUAL_BS: i64 = 8;
const LN_EPS: f64 = 1e-6;
const BN_EPS: f64 = 1e-6;
const SN_EPS: f64 = 1e-12;
const LEAKY_SLOPE: f64 = 0.2;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How an input with H, W > 224 reaches 224×224.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeBranch {
    /// As in training: a coin `Tensor::rand([1]) ≤ 0.5` from libtorch's generator (the reference
    /// uses Python's `random`) chooses `Crop`, else `Area`.
    Draw,
    /// `RandomCrop(224)`: `i = randint(0, H−223, [1])`, `j = randint(0, W−223, [1])` (libtorch's
    /// generator, rows first), one offset for the whole batch.
    Crop,
    /// `area` resize (adaptive average pooling).
    Area,
}

// ---------------------------------------------------------------------------------------------
// Backbone

#[derive(Debug)]
struct Block {
    norm1_w: Tensor,
    norm1_b: Tensor,
    qkv_w: Tensor,
    qkv_b: Tensor,
    proj_w: Tensor,
    proj_b: Tensor,
    norm2_w: Tensor,
    norm2_b: Tensor,
    fc1_w: Tensor,
    fc1_b: Tensor,
    fc2_w: Tensor,
    fc2_b: Tensor,
}

impl Block {
    fn new(p: nn::Path) -> Self {
        let z = |q: &nn::Path, n: &str, d: &[i64]| q.zeros_no_train(n, d);
        let (c, m) = (EMBED_DIM, MLP_DIM);
        Block {
            norm1_w: z(&(&p / "norm1"), "weight", &[c]),
            norm1_b: z(&(&p / "norm1"), "bias", &[c]),
            qkv_w: z(&(&p / "attn" / "qkv"), "weight", &[3 * c, c]),
            qkv_b: z(&(&p / "attn" / "qkv"), "bias", &[3 * c]),
            proj_w: z(&(&p / "attn" / "proj"), "weight", &[c, c]),
            proj_b: z(&(&p / "attn" / "proj"), "bias", &[c]),
            norm2_w: z(&(&p / "norm2"), "weight", &[c]),
            norm2_b: z(&(&p / "norm2"), "bias", &[c]),
            fc1_w: z(&(&p / "mlp" / "fc1"), "weight", &[m, c]),
            fc1_b: z(&(&p / "mlp" / "fc1"), "bias", &[m]),
            fc2_w: z(&(&p / "mlp" / "fc2"), "weight", &[c, m]),
            fc2_b: z(&(&p / "mlp" / "fc2"), "bias", &[c]),
        }
    }

    /// x: [B, L, C] → [B, L, C]
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, l, c) = x.size3().expect("[B, L, C]");
        let hd = c / NUM_HEADS;
        let h = x.layer_norm([c], Some(&self.norm1_w), Some(&self.norm1_b), LN_EPS, true);
        let qkv = h.linear(&self.qkv_w, Some(&self.qkv_b)).view([b, l, 3, NUM_HEADS, hd]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2)); // [B, H, L, hd]
        // The reference's two paths: on CUDA F.scaled_dot_product_attention, on the CPU its
        // fallback `slow_attn`, softmax((q·scale) @ kᵀ) @ v (the fixture's numbers).
        let scale = 1.0 / (hd as f64).sqrt();
        let o = if x.device().is_cuda() {
            crate::attention::sdpa("dino discriminator", &q, &k, &v, 0.0, Some(scale))
        } else {
            crate::attention::explicit(&q, &k, &v, scale)
        };
        let o = o.transpose(1, 2).reshape([b, l, c]).linear(&self.proj_w, Some(&self.proj_b));
        let x = x + o;
        let h = x.layer_norm([c], Some(&self.norm2_w), Some(&self.norm2_b), LN_EPS, true);
        let h = h.linear(&self.fc1_w, Some(&self.fc1_b)).gelu("tanh").linear(&self.fc2_w, Some(&self.fc2_b));
        x + h
    }
}

/// The frozen DINO ViT-S/16 (`FrozenDINOSmallNoDrop`: no dropout, no final norm applied).
#[derive(Debug)]
pub struct DinoBackbone {
    cls_token: Tensor,
    pos_embed: Tensor,
    patch_w: Tensor,
    patch_b: Tensor,
    blocks: Vec<Block>,
    x_scale: Tensor,
    x_shift: Tensor,
}

impl DinoBackbone {
    /// Zero-initialised, non-trainable variables under `p` (load them with [`load_backbone_state`]).
    pub fn new(p: nn::Path) -> Self {
        let c = EMBED_DIM;
        let pe = &p / "patch_embed" / "proj";
        let norm = &p / "norm";
        let _ = norm.zeros_no_train("weight", &[c]);
        let _ = norm.zeros_no_train("bias", &[c]);
        DinoBackbone {
            cls_token: p.zeros_no_train("cls_token", &[1, 1, c]),
            pos_embed: p.zeros_no_train("pos_embed", &[1, NUM_PATCHES + 1, c]),
            patch_w: pe.zeros_no_train("weight", &[c, 3, PATCH_SIZE, PATCH_SIZE]),
            patch_b: pe.zeros_no_train("bias", &[c]),
            blocks: (0..DEPTH).map(|i| Block::new(&p / "blocks" / i)).collect(),
            x_scale: p.zeros_no_train("x_scale", &[1, 3, 1, 1]),
            x_shift: p.zeros_no_train("x_shift", &[1, 3, 1, 1]),
        }
    }

    /// `x_scale·x + x_shift`, then to 224×224 (see [`ResizeBranch`]). Returns the patch-embedding
    /// input [B, 3, 224, 224] and the crop offset `(i, j)` when the crop branch was taken.
    pub fn prepare_input(&self, x: &Tensor, branch: ResizeBranch) -> (Tensor, Option<(i64, i64)>) {
        let x = &self.x_scale * x.to_kind(Kind::Float) + &self.x_shift;
        let (_, _, h, w) = x.size4().expect("discriminator input is [B, 3, H, W]");
        if h > IMG_SIZE && w > IMG_SIZE {
            let crop = match branch {
                ResizeBranch::Draw => Tensor::rand([1], (Kind::Float, Device::Cpu)).double_value(&[0]) <= 0.5,
                ResizeBranch::Crop => true,
                ResizeBranch::Area => false,
            };
            if crop {
                let dev = x.device();
                let i = Tensor::randint_low(0, h - IMG_SIZE + 1, [1], (Kind::Int64, dev)).int64_value(&[0]);
                let j = Tensor::randint_low(0, w - IMG_SIZE + 1, [1], (Kind::Int64, dev)).int64_value(&[0]);
                return (x.narrow(2, i, IMG_SIZE).narrow(3, j, IMG_SIZE), Some((i, j)));
            }
        }
        // Reference quirk: the mode depends on H only.
        let x = if h > IMG_SIZE {
            x.adaptive_avg_pool2d([IMG_SIZE, IMG_SIZE])
        } else {
            x.upsample_bicubic2d([IMG_SIZE, IMG_SIZE], false, None::<f64>, None::<f64>)
        };
        (x, None)
    }

    /// [B, 3, 224, 224] → the 5 readouts `(tokens + class token)ᵀ`, each [B, 384, 196]: after the
    /// embedding and after blocks 2, 5, 8, 11.
    pub fn readouts(&self, x: &Tensor) -> Vec<Tensor> {
        let b = x.size()[0];
        let t = x.conv2d(&self.patch_w, Some(&self.patch_b), [PATCH_SIZE], [0], [1], 1).flatten(2, -1).transpose(1, 2);
        let mut t = Tensor::cat(&[self.cls_token.expand([b, -1, -1], false), t], 1) + &self.pos_embed;
        let readout = |t: &Tensor| (t.narrow(1, 1, NUM_PATCHES) + t.narrow(1, 0, 1)).transpose(1, 2);
        let mut acts = vec![readout(&t)];
        for (i, blk) in self.blocks.iter().enumerate() {
            t = blk.forward(&t);
            if KEY_DEPTHS.contains(&(i as i64)) {
                acts.push(readout(&t));
            }
        }
        acts
    }
}

/// Loads a backbone state dict (official checkpoint keys; `x_scale`/`x_shift` in it are ignored and
/// computed from the ImageNet statistics) into a VarStore holding a [`DinoBackbone`]: zeroes the key
/// third (rows C..2C) of every `attn.qkv.bias` as the reference does, and leaves everything
/// non-trainable. Every backbone key must be present; extra keys are ignored (as the reference's
/// `strict=False`).
pub fn load_backbone_state(vs: &nn::VarStore, mut sd: StateDict) -> Result<()> {
    sd.tensors.retain(|(n, _)| n != "x_scale" && n != "x_shift");
    let vars = vs.variables();
    let mut missing: Vec<&String> =
        vars.keys().filter(|k| *k != "x_scale" && *k != "x_shift" && sd.get(k).is_none()).collect();
    if !missing.is_empty() {
        missing.sort();
        let n = missing.len();
        let show: Vec<&str> = missing.iter().take(8).map(|s| s.as_str()).collect();
        bail!("not a DINO ViT-S/16 checkpoint: {n} backbone keys missing ({}{})", show.join(", "), if n > 8 { ", …" } else { "" });
    }
    for (name, t) in sd.tensors.iter_mut() {
        if name.ends_with(".attn.qkv.bias") {
            let c = t.size()[0] / 3;
            *t = t.to_kind(Kind::Float).copy(); // never write into the caller's storage
            let _ = t.narrow(0, c, c).zero_();
        }
    }
    checkpoint::load_into(vs, &sd, false)?;
    let dev = vs.device();
    let mean = Tensor::from_slice(&IMAGENET_MEAN).to_device(dev);
    let std = Tensor::from_slice(&IMAGENET_STD).to_device(dev);
    tch::no_grad(|| {
        vars["x_scale"].shallow_clone().copy_(&std.reciprocal().reshape([1, 3, 1, 1]));
        vars["x_shift"].shallow_clone().copy_(&(-mean / std).reshape([1, 3, 1, 1]));
    });
    Ok(())
}

/// A small deterministic generator for `random:SEED` weights (does not touch libtorch's global one).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// `n` samples of N(mean, std²) (Box–Muller).
    fn normal(&mut self, shape: &[i64], mean: f64, std: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (self.uniform(), self.uniform());
                (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_slice(&v).reshape(shape)
    }
}

/// Random backbone weights in the checkpoint's layout (cls/pos 0.1·N, weights N(0, 1/fan_in),
/// biases 0.05·N, LayerNorm gains 1 + 0.1·N): for tests and the demo only.
fn random_state(seed: u64) -> StateDict {
    let mut g = SplitMix(seed);
    let mut tensors = Vec::new();
    let mut add = |name: String, t: Tensor| tensors.push((name, t));
    let c = EMBED_DIM;
    add("cls_token".into(), g.normal(&[1, 1, c], 0.0, 0.1));
    add("pos_embed".into(), g.normal(&[1, NUM_PATCHES + 1, c], 0.0, 0.1));
    let fan = 3 * PATCH_SIZE * PATCH_SIZE;
    add("patch_embed.proj.weight".into(), g.normal(&[c, 3, PATCH_SIZE, PATCH_SIZE], 0.0, (1.0 / fan as f64).sqrt()));
    add("patch_embed.proj.bias".into(), g.normal(&[c], 0.0, 0.05));
    for i in 0..DEPTH {
        let pre = format!("blocks.{i}");
        for (name, out, inp) in [("attn.qkv", 3 * c, c), ("attn.proj", c, c), ("mlp.fc1", MLP_DIM, c), ("mlp.fc2", c, MLP_DIM)] {
            add(format!("{pre}.{name}.weight"), g.normal(&[out, inp], 0.0, (1.0 / inp as f64).sqrt()));
            add(format!("{pre}.{name}.bias"), g.normal(&[out], 0.0, 0.05));
        }
        for n in ["norm1", "norm2"] {
            add(format!("{pre}.{n}.weight"), g.normal(&[c], 1.0, 0.1));
            add(format!("{pre}.{n}.bias"), g.normal(&[c], 0.0, 0.05));
        }
    }
    add("norm.weight".into(), g.normal(&[c], 1.0, 0.1));
    add("norm.bias".into(), g.normal(&[c], 0.0, 0.05));
    StateDict { tensors }
}

fn missing_weights_message(path: &str) -> String {
    format!(
        "cannot read {path}: the stage-3 discriminator needs the DINO ViT-S/16 backbone \
         (dino_deitsmall16_pretrain.pth, the official DINO release), published at {DINO_URL} — \
         download it and pass its path (or use `random:SEED` for a smoke test only)"
    )
}

/// The frozen backbone from `spec`: a checkpoint path (the official `dino_deitsmall16_pretrain.pth`,
/// or any file [`checkpoint::read`] reads with the same keys) or `random:SEED` (random weights, for
/// tests and the demo; warns on stderr). Returns the backbone's own VarStore (all non-trainable).
pub fn load_dino_backbone(spec: &str, device: Device) -> Result<(nn::VarStore, DinoBackbone)> {
    let vs = nn::VarStore::new(device);
    let backbone = DinoBackbone::new(vs.root());
    let sd = if let Some(seed) = checkpoint::random_weights_seed(spec) {
        let seed = seed? as u64;
        eprintln!(
            "WARNING: the DINO discriminator backbone has RANDOM weights ({spec}); this is for tests and demos only — \
             a real stage-3 run needs {DINO_URL}"
        );
        random_state(seed)
    } else {
        let path = Path::new(spec);
        if !path.is_file() {
            bail!("{}", missing_weights_message(spec));
        }
        checkpoint::read(path).with_context(|| missing_weights_message(spec))?
    };
    load_backbone_state(&vs, sd).with_context(|| format!("loading the DINO ViT-S/16 backbone from {spec}"))?;
    Ok((vs, backbone))
}

// ---------------------------------------------------------------------------------------------
// Heads

/// `SpectralConv1d` (Conv1d + `torch.nn.utils.spectral_norm`, 1 power iteration, dim 0, eps 1e-12).
#[derive(Debug)]
struct SnConv1d {
    weight_orig: Tensor,
    bias: Tensor,
    weight_u: Tensor,
    weight_v: Tensor,
    /// Circular padding on each side (k/2 for the k=9 convolution; k=1 has none).
    pad: i64,
}

impl SnConv1d {
    /// Conv1d's default init (U(±1/√fan_in) for weight and bias); u, v = normalize(N(0, 1)).
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64) -> Self {
        let bound = 1.0 / ((c_in * k) as f64).sqrt();
        let init = nn::Init::Uniform { lo: -bound, up: bound };
        let dev = p.device();
        let unit = |n: i64| {
            let t = Tensor::randn([n], (Kind::Float, dev));
            &t / t.norm().clamp_min(SN_EPS)
        };
        let weight_orig = p.var("weight_orig", &[c_out, c_in, k], init);
        let bias = p.var("bias", &[c_out], init);
        let weight_u = p.add("weight_u", unit(c_out), false);
        let weight_v = p.add("weight_v", unit(c_in * k), false);
        SnConv1d { weight_orig, bias, weight_u, weight_v, pad: k / 2 }
    }

    /// `F.normalize(t, dim=0, eps)`.
    fn normalize(t: &Tensor) -> Tensor {
        t / t.norm_scalaropt_dim(2, [0], true).clamp_min(SN_EPS)
    }

    /// The normalised weight `weight_orig / σ`; with `power_iteration`, first updates u, v in place.
    fn weight(&self, power_iteration: bool) -> Tensor {
        let out = self.weight_orig.size()[0];
        let mat = self.weight_orig.reshape([out, -1]);
        let (u, v) = if power_iteration {
            tch::no_grad(|| {
                let v = Self::normalize(&mat.tr().mv(&self.weight_u));
                self.weight_v.shallow_clone().copy_(&v);
                let u = Self::normalize(&mat.mv(&self.weight_v));
                self.weight_u.shallow_clone().copy_(&u);
                (self.weight_u.copy(), self.weight_v.copy())
            })
        } else {
            (self.weight_u.detach(), self.weight_v.detach())
        };
        let sigma = u.dot(&mat.mv(&v));
        &self.weight_orig / sigma
    }

    /// x: [B, C_in, L] → [B, C_out, L]
    fn forward(&self, x: &Tensor, power_iteration: bool) -> Tensor {
        let w = self.weight(power_iteration);
        let x = if self.pad > 0 { x.pad([self.pad, self.pad], "circular", None::<f64>) } else { x.shallow_clone() };
        x.conv1d(&w, Some(&self.bias), [1], [0], [1], 1)
    }
}

/// `BatchNormLocal(C, virtual_bs=8, eps=1e-6)`: batch statistics over groups of `B/G` consecutive
/// samples, `G = ceil(B/8)`; no running statistics.
#[derive(Debug)]
struct BatchNormLocal {
    weight: Tensor,
    bias: Tensor,
}

impl BatchNormLocal {
    fn new(p: nn::Path, c: i64) -> Self {
        BatchNormLocal { weight: p.ones("weight", &[c]), bias: p.zeros("bias", &[c]) }
    }

    /// x: [B, C, L] → [B, C, L]
    fn forward(&self, x: &Tensor) -> Tensor {
        let shape = x.size();
        let (b, c, l) = (shape[0], shape[1], shape[2]);
        let g = (b + VIRTUAL_BS - 1) / VIRTUAL_BS;
        assert!(
            b % g == 0,
            "BatchNormLocal: a batch of {b} does not split into ceil({b}/{VIRTUAL_BS}) = {g} equal virtual batches \
             (use a per-device discriminator batch of 1..=8 or a multiple of the group count)"
        );
        let x = x.to_kind(Kind::Float).view([g, -1, c, l]);
        let mean = x.mean_dim(&[1i64, 3][..], true, None::<Kind>);
        let var = x.var_correction(&[1i64, 3][..], 0, true);
        let x = (x - mean) / (var + BN_EPS).sqrt();
        let x = x * self.weight.view([1, c, 1]) + self.bias.view([1, c, 1]);
        x.view(shape.as_slice())
    }
}

fn leaky_relu(x: &Tensor) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * LEAKY_SLOPE))
}

/// One head: `[SN-Conv k=1 → BNLocal → LeakyReLU] → Residual([SN-Conv k=9 circ → BNLocal → LeakyReLU]) → SN-Conv 384→1`.
#[derive(Debug)]
struct Head {
    conv0: SnConv1d,
    bn0: BatchNormLocal,
    conv1: SnConv1d,
    bn1: BatchNormLocal,
    out: SnConv1d,
}

impl Head {
    fn new(p: nn::Path) -> Self {
        let c = EMBED_DIM;
        Head {
            conv0: SnConv1d::new(&p / 0 / 0, c, c, 1),
            bn0: BatchNormLocal::new(&p / 0 / 1, c),
            conv1: SnConv1d::new(&p / 1 / "fn" / 0, c, c, HEAD_KERNEL),
            bn1: BatchNormLocal::new(&p / 1 / "fn" / 1, c),
            out: SnConv1d::new(&p / 2, c, 1, 1),
        }
    }

    /// [B, 384, L] → [B, L]
    fn forward(&self, x: &Tensor, power_iteration: bool) -> Tensor {
        let b = x.size()[0];
        let h = leaky_relu(&self.bn0.forward(&self.conv0.forward(x, power_iteration)));
        let f = leaky_relu(&self.bn1.forward(&self.conv1.forward(&h, power_iteration)));
        let h = (f + h) * (1.0 / 2f64.sqrt());
        self.out.forward(&h, power_iteration).view([b, -1])
    }
}

/// The five trainable heads (80 state-dict tensors, 7,386,245 trainable values).
#[derive(Debug)]
pub struct DinoHeads {
    heads: Vec<Head>,
    /// Train-mode spectral norm (one power iteration per forward, updating `weight_u`/`weight_v`);
    /// `true` as in the reference, whose loss module is never put in eval mode.
    pub power_iteration: bool,
}

impl DinoHeads {
    /// Fresh heads under `p` (`p / h / …` for h in 0..5).
    pub fn new(p: nn::Path) -> Self {
        DinoHeads { heads: (0..NUM_TAPS).map(|h| Head::new(&p / h as i64)).collect(), power_iteration: true }
    }

    /// The 5 readouts (each [B, 384, 196]) → logits [B, 980] (heads concatenated in tap order).
    pub fn forward(&self, readouts: &[Tensor]) -> Tensor {
        assert_eq!(readouts.len(), self.heads.len(), "one readout per head");
        let outs: Vec<Tensor> = self.heads.iter().zip(readouts).map(|(h, a)| h.forward(a, self.power_iteration)).collect();
        Tensor::cat(&outs, 1)
    }
}

/// What the backbone made of one input.
#[derive(Debug)]
pub struct DinoFeatures {
    /// The patch-embedding input (normalised, 224×224) [B, 3, 224, 224].
    pub backbone_input: Tensor,
    /// The crop offset `(i, j)` when the crop branch was taken.
    pub crop: Option<(i64, i64)>,
    /// The 5 readouts, each [B, 384, 196].
    pub readouts: Vec<Tensor>,
}

/// Frozen backbone + trainable heads.
#[derive(Debug)]
pub struct DinoDiscriminator {
    pub backbone: DinoBackbone,
    pub heads: DinoHeads,
}

impl DinoDiscriminator {
    /// The heads are created in the caller's VarStore under `heads_path` (training:
    /// `loss_vs.root() / "discriminator" / "heads"`, checkpoint keys `discriminator.heads.*`).
    pub fn new(backbone: DinoBackbone, heads_path: nn::Path) -> Self {
        DinoDiscriminator { backbone, heads: DinoHeads::new(heads_path) }
    }

    /// [B, 3, H, W] in [0, 1] → logits [B, 980] (crop-or-area coin drawn when H, W > 224).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with(x, ResizeBranch::Draw)
    }

    /// As [`DinoDiscriminator::forward`] with the resize branch given (it only matters for H, W > 224).
    pub fn forward_with(&self, x: &Tensor, branch: ResizeBranch) -> Tensor {
        self.heads.forward(&self.features(x, branch).readouts)
    }

    /// The backbone input and readouts of `x` (the heads are not run).
    pub fn features(&self, x: &Tensor, branch: ResizeBranch) -> DinoFeatures {
        let (backbone_input, crop) = self.backbone.prepare_input(x, branch);
        let readouts = self.backbone.readouts(&backbone_input);
        DinoFeatures { backbone_input, crop, readouts }
    }
}
