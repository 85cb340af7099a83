//! LPIPS (VGG16 variant, v0.1 linear layers): the stage-3 perceptual loss (training spec §7.3),
//! as the reference's `modeling/modules/lpips.py` computes it.
//!
//! ```text
//! x ∈ [0,1] → 2x − 1 → (x − shift)/scale            scaling_layer.shift/scale [1,3,1,1]
//!   → VGG16 features[0:30] in five slices            relu1_2 … relu5_3 (64,128,256,512,512 ch)
//!   → per slice k: f / (√Σ_c f² + 1e-10)             channel-normalised features
//!   → (f0 − f1)² → 1×1 conv lin_k (no bias) → mean_hw → term_k [B,1,1,1]
//!   → val = term_0; val += term_1; … val += term_4   (this order)
//! ```
//!
//! Parameter paths are the reference LPIPS module's state-dict names: `net.slice{1..5}.{i}.weight`
//! / `.bias` with `i` the torchvision `vgg16().features` index (slice1 = features[0:4], slice2 =
//! [4:9], slice3 = [9:16], slice4 = [16:23], slice5 = [23:30]; max-pools 2×2 at 4, 9, 16, 23, floor
//! mode), `lin{0..4}.model.1.weight` [1,C,1,1] (index 1: the reference's `NetLinLayer` puts a
//! dropout at 0, inactive in eval), and the constant buffers `scaling_layer.shift` / `.scale`.
//!
//! Every variable is frozen (`requires_grad` false, not trainable); the network stays
//! differentiable w.r.t. its inputs (training back-propagates through the second one).
//!
//! Weights: the torchvision VGG16 IMAGENET1K_V1 file (`features.{i}.*`) and the LPIPS v0.1
//! `vgg.pth` (`lin{k}.model.1.weight`), see [`load_lpips`]; or one file that already holds the
//! module's own keys ([`Lpips::load_state_dict`]).

use crate::checkpoint::{self, StateDict};
use anyhow::{Context, Result, bail, ensure};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

/// Channel widths of the five tapped VGG16 layers (relu1_2 … relu5_3).
pub const LPIPS_CHANNELS: [i64; 5] = [64, 128, 256, 512, 512];
/// `ScalingLayer` constants (the reference's `_LPIPS_MEAN` / `_LPIPS_STD`).
pub const LPIPS_SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
pub const LPIPS_SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// `normalize_tensor`'s epsilon.
pub const LPIPS_NORMALIZE_EPS: f64 = 1e-10;

/// torchvision VGG16 `features` layers 0..30: each is a 3×3 convolution (padding 1) followed by
/// its ReLU, or a 2×2/2 max-pool. `(index, c_in, c_out)` for the convolutions, by slice.
const SLICES: [&[Layer]; 5] = [
    &[Layer::Conv(0, 3, 64), Layer::Conv(2, 64, 64)],
    &[Layer::Pool, Layer::Conv(5, 64, 128), Layer::Conv(7, 128, 128)],
    &[Layer::Pool, Layer::Conv(10, 128, 256), Layer::Conv(12, 256, 256), Layer::Conv(14, 256, 256)],
    &[Layer::Pool, Layer::Conv(17, 256, 512), Layer::Conv(19, 512, 512), Layer::Conv(21, 512, 512)],
    &[Layer::Pool, Layer::Conv(24, 512, 512), Layer::Conv(26, 512, 512), Layer::Conv(28, 512, 512)],
];
/// First `features` index of each slice (slice k covers `SLICE_START[k]..SLICE_START[k+1]`).
const SLICE_START: [usize; 6] = [0, 4, 9, 16, 23, 30];

#[derive(Clone, Copy, Debug)]
enum Layer {
    /// `features[i]` = Conv2d(c_in, c_out, 3, padding 1), then ReLU at `features[i+1]`.
    Conv(usize, i64, i64),
    /// MaxPool2d(2, 2).
    Pool,
}

/// Where the two weight files are published (for error messages).
pub const VGG16_URL: &str = "https://download.pytorch.org/models/vgg16-397923af.pth";
pub const LPIPS_LIN_URL: &str = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth";
pub const LPIPS_LIN_MD5: &str = "d507d7349b931f0638a25a48a722f98a";

struct Conv3x3 {
    weight: Tensor, // [c_out, c_in, 3, 3]
    bias: Tensor,   // [c_out]
}

/// Everything one LPIPS evaluation computes, for tests and diagnostics.
pub struct LpipsOutput {
    /// `[B,1,1,1]`: term_0 + term_1 + … + term_4 (left to right).
    pub value: Tensor,
    /// `[B,1,1,1]` per tapped layer (relu1_2 … relu5_3).
    pub layer_terms: [Tensor; 5],
    /// Channel-normalised features of the first / second input, `[B,C_k,H_k,W_k]`.
    pub feats0: [Tensor; 5],
    pub feats1: [Tensor; 5],
}

/// The LPIPS network (frozen). Build with [`Lpips::new`], fill with [`Lpips::load_state_dict`]
/// or [`load_lpips`].
pub struct Lpips {
    /// `slices[k][j]`: the j-th convolution of slice k+1.
    slices: [Vec<Conv3x3>; 5],
    /// `lin{k}.model.1.weight` [1, C_k, 1, 1].
    lins: [Tensor; 5],
    shift: Tensor, // [1,3,1,1]
    scale: Tensor, // [1,3,1,1]
    /// Every variable under its reference name (relative to the `root` given to `new`).
    named: Vec<(String, Tensor)>,
}

impl Lpips {
    /// Creates the frozen variables under `root` (zeros, except the scaling constants) in the
    /// VarStore's default kind and device.
    pub fn new(root: nn::Path) -> Lpips {
        let mut named = Vec::new();
        let mut var = |name: String, dims: &[i64]| {
            let (dir, leaf) = name.rsplit_once('.').expect("dotted name");
            let t = dir.split('.').fold(root.clone(), |p, part| p.sub(part)).zeros_no_train(leaf, dims);
            named.push((name, t.shallow_clone()));
            t
        };
        let slices: [Vec<Conv3x3>; 5] = std::array::from_fn(|k| {
            SLICES[k]
                .iter()
                .filter_map(|layer| match *layer {
                    Layer::Conv(i, c_in, c_out) => Some(Conv3x3 {
                        weight: var(format!("net.slice{}.{i}.weight", k + 1), &[c_out, c_in, 3, 3]),
                        bias: var(format!("net.slice{}.{i}.bias", k + 1), &[c_out]),
                    }),
                    Layer::Pool => None,
                })
                .collect()
        });
        let lins = std::array::from_fn(|k| var(format!("lin{k}.model.1.weight"), &[1, LPIPS_CHANNELS[k], 1, 1]));
        let shift = var("scaling_layer.shift".into(), &[1, 3, 1, 1]);
        let scale = var("scaling_layer.scale".into(), &[1, 3, 1, 1]);
        tch::no_grad(|| {
            let consts = |v: &[f32; 3], like: &Tensor| Tensor::from_slice(v).view([1, 3, 1, 1]).to_kind(like.kind()).to_device(like.device());
            shift.shallow_clone().copy_(&consts(&LPIPS_SHIFT, &shift));
            scale.shallow_clone().copy_(&consts(&LPIPS_SCALE, &scale));
        });
        Lpips { slices, lins, shift, scale, named }
    }

    /// The variables under their reference names (33 tensors).
    pub fn named_variables(&self) -> &[(String, Tensor)] {
        &self.named
    }

    pub fn device(&self) -> Device {
        self.shift.device()
    }

    /// Copies an LPIPS-module state dict (`net.slice*`, `lin*`; `scaling_layer.*` optional and,
    /// when present, must hold the standard constants) into the network, converting dtype and
    /// device (float16 files are upcast exactly). Strict otherwise: every `net.*` / `lin*` key
    /// with its shape, nothing unknown. `source` names the origin in errors.
    pub fn load_state_dict(&self, sd: &StateDict, source: &str) -> Result<()> {
        let given: HashMap<&str, &Tensor> = sd.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        for (name, var) in &self.named {
            match given.get(name.as_str()) {
                None if name.starts_with("scaling_layer.") => {}
                None => missing.push(name.clone()),
                Some(t) if t.size() != var.size() => misshaped.push(format!("{name}: {:?} (needs {:?})", t.size(), var.size())),
                Some(_) => {}
            }
        }
        let known: BTreeSet<&str> = self.named.iter().map(|(n, _)| n.as_str()).collect();
        let unexpected: Vec<&str> = sd.names().filter(|n| !known.contains(n)).collect();
        if !missing.is_empty() || !misshaped.is_empty() || !unexpected.is_empty() {
            bail!(
                "{source} is not an LPIPS (VGG16) state dict (keys net.slice{{1..5}}.{{i}}.weight/bias, \
                 lin{{0..4}}.model.1.weight): {} missing{}; {} unexpected{}; {} with another shape{}",
                missing.len(),
                examples(&missing),
                unexpected.len(),
                examples(&unexpected),
                misshaped.len(),
                examples(&misshaped),
            );
        }
        for (name, value) in [("scaling_layer.shift", &LPIPS_SHIFT), ("scaling_layer.scale", &LPIPS_SCALE)] {
            if let Some(t) = given.get(name) {
                let expect = Tensor::from_slice(value).view([1, 3, 1, 1]);
                ensure!(
                    t.to_kind(Kind::Float).allclose(&expect, 0.0, 1e-7, false),
                    "{source}: {name} is {:?}, not the LPIPS constant {value:?}",
                    Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap_or_default()
                );
            }
        }
        tch::no_grad(|| {
            for (name, var) in &self.named {
                if let Some(t) = given.get(name.as_str()) {
                    var.shallow_clone().copy_(&t.to_kind(var.kind()).to_device(var.device()));
                }
            }
        });
        Ok(())
    }

    /// `2x − 1`, then `(x − shift)/scale`: `[B,3,H,W]` in [0,1] → VGG input.
    pub fn scale_input(&self, x: &Tensor) -> Tensor {
        let x = x * 2.0 - 1.0;
        (x - &self.shift) / &self.scale
    }

    /// VGG16 slice outputs relu1_2 … relu5_3 of a scaled input: `[B,64,H,W]`, `[B,128,H/2,W/2]`,
    /// `[B,256,H/4,W/4]`, `[B,512,H/8,W/8]`, `[B,512,H/16,W/16]` (floor division).
    pub fn vgg_features(&self, x: &Tensor) -> [Tensor; 5] {
        let mut h = x.shallow_clone();
        std::array::from_fn(|k| {
            let mut convs = self.slices[k].iter();
            for layer in SLICES[k] {
                h = match layer {
                    Layer::Conv(..) => {
                        let c = convs.next().expect("one Conv3x3 per Layer::Conv");
                        h.conv2d(&c.weight, Some(&c.bias), [1, 1], [1, 1], [1, 1], 1).relu()
                    }
                    Layer::Pool => h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
                };
            }
            h.shallow_clone()
        })
    }

    /// The full computation for `x0`, `x1` `[B,3,H,W]` in [0,1] (not clamped).
    pub fn forward_detailed(&self, x0: &Tensor, x1: &Tensor) -> LpipsOutput {
        let outs0 = self.vgg_features(&self.scale_input(x0));
        let outs1 = self.vgg_features(&self.scale_input(x1));
        let feats0: [Tensor; 5] = std::array::from_fn(|k| normalize_channels(&outs0[k]));
        let feats1: [Tensor; 5] = std::array::from_fn(|k| normalize_channels(&outs1[k]));
        let layer_terms: [Tensor; 5] = std::array::from_fn(|k| {
            let d = (&feats0[k] - &feats1[k]).pow_tensor_scalar(2); // [B,C,h,w]
            let r = d.conv2d(&self.lins[k], None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1); // [B,1,h,w]
            r.mean_dim([2i64, 3].as_slice(), true, r.kind()) // [B,1,1,1]
        });
        let value = layer_terms[1..].iter().fold(layer_terms[0].shallow_clone(), |acc, t| acc + t);
        LpipsOutput { value, layer_terms, feats0, feats1 }
    }

    /// LPIPS distance `[B,1,1,1]` between `x0` and `x1` (`[B,3,H,W]`, [0,1]).
    pub fn forward(&self, x0: &Tensor, x1: &Tensor) -> Tensor {
        self.forward_detailed(x0, x1).value
    }
}

/// `f / (√Σ_c f² + eps)` over dim 1.
fn normalize_channels(f: &Tensor) -> Tensor {
    let norm = f.pow_tensor_scalar(2).sum_dim_intlist([1i64].as_slice(), true, f.kind()).sqrt();
    f / (norm + LPIPS_NORMALIZE_EPS)
}

fn examples<S: AsRef<str>>(v: &[S]) -> String {
    if v.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = v.iter().take(5).map(|s| s.as_ref()).collect();
    format!(" (e.g. {})", shown.join(", "))
}

/// The LPIPS slice (1-based) of torchvision `features[i]`, if `i < 30`.
fn slice_of(i: usize) -> Option<usize> {
    (0..5).find(|&k| (SLICE_START[k]..SLICE_START[k + 1]).contains(&i)).map(|k| k + 1)
}

/// The VGG part of an LPIPS state dict from a torchvision VGG16 state dict (`features.{i}.weight`
/// / `.bias` → `net.slice{k}.{i}.*`; `classifier.*` ignored) or from a file that already uses the
/// LPIPS names (`net.slice*` kept; other keys ignored).
pub fn vgg16_to_lpips(sd: StateDict) -> StateDict {
    let tensors = sd
        .tensors
        .into_iter()
        .filter_map(|(name, t)| {
            if name.starts_with("net.slice") {
                return Some((name, t));
            }
            let rest = name.strip_prefix("features.")?;
            let (index, param) = rest.split_once('.')?;
            let k = slice_of(index.parse().ok()?)?;
            Some((format!("net.slice{k}.{index}.{param}"), t))
        })
        .collect();
    StateDict { tensors }
}

/// The linear layers of an LPIPS state dict (`lin{k}.model.1.weight`; other keys ignored).
pub fn lpips_lin_only(sd: StateDict) -> StateDict {
    StateDict { tensors: sd.tensors.into_iter().filter(|(n, _)| n.starts_with("lin")).collect() }
}

/// Seeded random VGG16 weights (Kaiming-normal convolutions, zero biases) under LPIPS names.
fn random_vgg(seed: i64) -> StateDict {
    tch::manual_seed(seed);
    let mut tensors = Vec::new();
    for (k, slice) in SLICES.iter().enumerate() {
        for layer in slice.iter() {
            if let Layer::Conv(i, c_in, c_out) = *layer {
                let std = (2.0 / (c_in * 9) as f64).sqrt();
                tensors.push((format!("net.slice{}.{i}.weight", k + 1), Tensor::randn([c_out, c_in, 3, 3], (Kind::Float, Device::Cpu)) * std));
                tensors.push((format!("net.slice{}.{i}.bias", k + 1), Tensor::zeros([c_out], (Kind::Float, Device::Cpu))));
            }
        }
    }
    StateDict { tensors }
}

/// Seeded random positive linear layers (0.01 + 0.12·|N|, the scale of the real v0.1 weights).
fn random_lin(seed: i64) -> StateDict {
    tch::manual_seed(seed);
    let tensors = LPIPS_CHANNELS
        .iter()
        .enumerate()
        .map(|(k, &c)| (format!("lin{k}.model.1.weight"), Tensor::randn([1, c, 1, 1], (Kind::Float, Device::Cpu)).abs() * 0.12 + 0.01))
        .collect();
    StateDict { tensors }
}

/// Builds a frozen LPIPS on `device` in float32 and loads it.
///
/// * `vgg16`: the torchvision VGG16 IMAGENET1K_V1 file `vgg16-397923af.pth` (keys
///   `features.{i}.*`; `classifier.*` ignored), a file already holding `net.slice*` keys, or
///   `random:SEED` (a loud warning: the loss is then meaningless).
/// * `lin`: the LPIPS v0.1 `vgg.pth` (keys `lin{k}.model.1.weight`; md5
///   d507d7349b931f0638a25a48a722f98a, shipped in the SFTok repo as `models/vgg_lpips.pth/vgg.pth`),
///   any file holding those keys (e.g. the same full LPIPS file as `vgg16`), or `random:SEED`.
pub fn load_lpips(vgg16: &str, lin: &str, device: Device) -> Result<(nn::VarStore, Lpips)> {
    let vgg_sd = match checkpoint::random_weights_seed(vgg16) {
        Some(seed) => {
            let seed = seed?;
            eprintln!(
                "WARNING: LPIPS uses RANDOM VGG16 weights ({vgg16}): the perceptual loss is meaningless; \
                 pass the torchvision VGG16 IMAGENET1K_V1 file ({VGG16_URL}) for real training"
            );
            random_vgg(seed)
        }
        None => vgg16_to_lpips(checkpoint::read(Path::new(vgg16)).with_context(|| {
            format!(
                "cannot read {vgg16}: the LPIPS backbone needs the torchvision VGG16 IMAGENET1K_V1 weights \
                 (vgg16-397923af.pth, published at {VGG16_URL})"
            )
        })?),
    };
    let lin_sd = match checkpoint::random_weights_seed(lin) {
        Some(seed) => {
            let seed = seed?;
            eprintln!(
                "WARNING: LPIPS uses RANDOM linear layers ({lin}): the perceptual loss is meaningless; \
                 pass the LPIPS v0.1 vgg.pth ({LPIPS_LIN_URL}) for real training"
            );
            random_lin(seed)
        }
        None => lpips_lin_only(checkpoint::read(Path::new(lin)).with_context(|| {
            format!(
                "cannot read {lin}: LPIPS needs its v0.1 linear layers (vgg.pth, md5 {LPIPS_LIN_MD5}, published at \
                 {LPIPS_LIN_URL}; also shipped in the SFTok repository as models/vgg_lpips.pth/vgg.pth)"
            )
        })?),
    };
    let vs = nn::VarStore::new(device);
    let lpips = Lpips::new(vs.root());
    let mut sd = vgg_sd;
    sd.tensors.extend(lin_sd.tensors);
    lpips.load_state_dict(&sd, &format!("LPIPS weights (VGG16 from {vgg16}, linear layers from {lin})"))?;
    crate::conv_layout::prefer_channels_last(&vs, "")?;
    Ok((vs, lpips))
}
