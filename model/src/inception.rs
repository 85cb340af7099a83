//! The FID InceptionV3: pytorch-fid's / torch-fidelity's port of the TF 2015-12-05 Inception graph
//! (evaluation.md §3), with the two input pipelines of §3.4–3.5.
//!
//! Parameter paths are the torchvision-layout state-dict keys of `keys/fid-inception.json`
//! (`Mixed_6d.branch7x7_2.conv.weight`, `….bn.running_var`, `fc.weight`); the 94
//! `*.bn.num_batches_tracked` counters are accepted and ignored (they do nothing in eval mode).
//!
//! Deviation from ADM (documented, §2.8): ADM runs the TF graph itself; this is the PyTorch port
//! of it, so ADM-style numbers computed here differ from TF's only by float rounding.

use anyhow::{Context, Result, bail, ensure};
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

/// Conv (no bias) → BatchNorm (eval, running statistics) → ReLU, run as one biased convolution
/// with the BatchNorm folded in (`W·γ/√(σ²+ε)`, `β − μ·γ/√(σ²+ε)`, computed in float64 by
/// [`BnFold::apply`] after every load): same function, one pass over the activations fewer.
struct BasicConv2d {
    weight: Tensor,
    bias: Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl BasicConv2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), self.stride, self.padding, [1, 1], 1).relu_()
    }
}

/// One BasicConv2d's state-dict tensors (VarStore handles) and the folded tensors it computes.
struct BnFold {
    conv_weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
    weight: Tensor,
    bias: Tensor,
}

impl BnFold {
    fn apply(&self) {
        let _guard = tch::no_grad_guard();
        let f64 = |t: &Tensor| t.to_kind(Kind::Double);
        let scale = f64(&self.bn_weight) / (f64(&self.running_var) + self.eps).sqrt();
        let weight = f64(&self.conv_weight) * scale.view([-1, 1, 1, 1]);
        let bias = f64(&self.bn_bias) - f64(&self.running_mean) * &scale;
        self.weight.shallow_clone().copy_(&weight);
        self.bias.shallow_clone().copy_(&bias);
    }
}

/// Creates the BasicConv2d modules under their state-dict paths and records their folds.
struct Builder<'a> {
    p: nn::Path<'a>,
    eps: f64,
    kind: Kind,
    folds: &'a RefCell<Vec<BnFold>>,
}

impl Builder<'_> {
    fn sub(&self, name: &str) -> Self {
        Builder { p: self.p.sub(name), eps: self.eps, kind: self.kind, folds: self.folds }
    }

    fn conv(&self, name: &str, c_in: i64, c_out: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2]) -> BasicConv2d {
        let p = self.p.sub(name);
        let (conv, bn) = (p.sub("conv"), p.sub("bn"));
        let opts = (self.kind, p.device());
        let layer = BasicConv2d {
            weight: Tensor::zeros([c_out, c_in, kernel[0], kernel[1]], opts),
            bias: Tensor::zeros([c_out], opts),
            stride: [stride, stride],
            padding,
        };
        self.folds.borrow_mut().push(BnFold {
            conv_weight: conv.zeros_no_train("weight", &[c_out, c_in, kernel[0], kernel[1]]),
            bn_weight: bn.zeros_no_train("weight", &[c_out]),
            bn_bias: bn.zeros_no_train("bias", &[c_out]),
            running_mean: bn.zeros_no_train("running_mean", &[c_out]),
            running_var: bn.zeros_no_train("running_var", &[c_out]),
            eps: self.eps,
            weight: layer.weight.shallow_clone(),
            bias: layer.bias.shallow_clone(),
        });
        layer
    }

    fn c1(&self, name: &str, c_in: i64, c_out: i64) -> BasicConv2d {
        self.conv(name, c_in, c_out, [1, 1], 1, [0, 0])
    }
}

fn avg_pool_3x3_excl_pad(x: &Tensor) -> Tensor {
    // TF's AVG_POOL SAME divides by the number of real pixels: count_include_pad = false.
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

fn max_pool_3x3_s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// FID-InceptionA (`Mixed_5b/5c/5d`): output 64+64+96+pool_features channels.
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(b: Builder, c_in: i64, pool_features: i64) -> Self {
        InceptionA {
            branch1x1: b.c1("branch1x1", c_in, 64),
            branch5x5_1: b.c1("branch5x5_1", c_in, 48),
            branch5x5_2: b.conv("branch5x5_2", 48, 64, [5, 5], 1, [2, 2]),
            branch3x3dbl_1: b.c1("branch3x3dbl_1", c_in, 64),
            branch3x3dbl_2: b.conv("branch3x3dbl_2", 64, 96, [3, 3], 1, [1, 1]),
            branch3x3dbl_3: b.conv("branch3x3dbl_3", 96, 96, [3, 3], 1, [1, 1]),
            branch_pool: b.c1("branch_pool", c_in, pool_features),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x));
        let b3 = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)));
        let bp = self.branch_pool.forward(&avg_pool_3x3_excl_pad(x));
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// InceptionB (`Mixed_6a`, unchanged from torchvision): 35×35 → 17×17, 384+96+c_in channels.
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(b: Builder, c_in: i64) -> Self {
        InceptionB {
            branch3x3: b.conv("branch3x3", c_in, 384, [3, 3], 2, [0, 0]),
            branch3x3dbl_1: b.c1("branch3x3dbl_1", c_in, 64),
            branch3x3dbl_2: b.conv("branch3x3dbl_2", 64, 96, [3, 3], 1, [1, 1]),
            branch3x3dbl_3: b.conv("branch3x3dbl_3", 96, 96, [3, 3], 2, [0, 0]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.branch3x3.forward(x);
        let bd = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)));
        Tensor::cat(&[b3, bd, max_pool_3x3_s2(x)], 1)
    }
}

/// FID-InceptionC (`Mixed_6b..6e`): 768 channels at 17×17, factorised 7×7 convolutions.
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(b: Builder, c_in: i64, c7: i64) -> Self {
        let (row, col) = ([1, 7], [7, 1]);
        let (pad_row, pad_col) = ([0, 3], [3, 0]);
        InceptionC {
            branch1x1: b.c1("branch1x1", c_in, 192),
            branch7x7: [
                b.c1("branch7x7_1", c_in, c7),
                b.conv("branch7x7_2", c7, c7, row, 1, pad_row),
                b.conv("branch7x7_3", c7, 192, col, 1, pad_col),
            ],
            branch7x7dbl: [
                b.c1("branch7x7dbl_1", c_in, c7),
                b.conv("branch7x7dbl_2", c7, c7, col, 1, pad_col),
                b.conv("branch7x7dbl_3", c7, c7, row, 1, pad_row),
                b.conv("branch7x7dbl_4", c7, c7, col, 1, pad_col),
                b.conv("branch7x7dbl_5", c7, 192, row, 1, pad_row),
            ],
            branch_pool: b.c1("branch_pool", c_in, 192),
        }
    }

    /// Also returns `branch1x1`'s output: `Mixed_6d`'s is the sFID tap.
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let b1 = self.branch1x1.forward(x);
        let b7 = self.branch7x7.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let bd = self.branch7x7dbl.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let bp = self.branch_pool.forward(&avg_pool_3x3_excl_pad(x));
        (Tensor::cat(&[&b1, &b7, &bd, &bp], 1), b1)
    }
}

/// InceptionD (`Mixed_7a`, unchanged): 17×17 → 8×8, 320+192+c_in channels.
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(b: Builder, c_in: i64) -> Self {
        InceptionD {
            branch3x3: [b.c1("branch3x3_1", c_in, 192), b.conv("branch3x3_2", 192, 320, [3, 3], 2, [0, 0])],
            branch7x7x3: [
                b.c1("branch7x7x3_1", c_in, 192),
                b.conv("branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                b.conv("branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                b.conv("branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0]),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.branch3x3.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let b7 = self.branch7x7x3.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(&[b3, b7, max_pool_3x3_s2(x)], 1)
    }
}

/// FID-InceptionE_1 (`Mixed_7b`, avg pool) and E_2 (`Mixed_7c`, max pool — a quirk of the TF
/// graph): 2048 channels at 8×8.
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(b: Builder, c_in: i64, max_pool: bool) -> Self {
        InceptionE {
            branch1x1: b.c1("branch1x1", c_in, 320),
            branch3x3_1: b.c1("branch3x3_1", c_in, 384),
            branch3x3_2a: b.conv("branch3x3_2a", 384, 384, [1, 3], 1, [0, 1]),
            branch3x3_2b: b.conv("branch3x3_2b", 384, 384, [3, 1], 1, [1, 0]),
            branch3x3dbl_1: b.c1("branch3x3dbl_1", c_in, 448),
            branch3x3dbl_2: b.conv("branch3x3dbl_2", 448, 384, [3, 3], 1, [1, 1]),
            branch3x3dbl_3a: b.conv("branch3x3dbl_3a", 384, 384, [1, 3], 1, [0, 1]),
            branch3x3dbl_3b: b.conv("branch3x3dbl_3b", 384, 384, [3, 1], 1, [1, 0]),
            branch_pool: b.c1("branch_pool", c_in, 192),
            max_pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let h = self.branch3x3_1.forward(x);
        let b3 = Tensor::cat(&[self.branch3x3_2a.forward(&h), self.branch3x3_2b.forward(&h)], 1);
        let h = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x));
        let bd = Tensor::cat(&[self.branch3x3dbl_3a.forward(&h), self.branch3x3dbl_3b.forward(&h)], 1);
        let pooled = if self.max_pool {
            x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            avg_pool_3x3_excl_pad(x)
        };
        let bp = self.branch_pool.forward(&pooled);
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

pub struct FidInception {
    vs: nn::VarStore,
    config: FidInceptionConfig,
    trunk: Trunk,
    folds: Vec<BnFold>,
    /// `[1008, 2048]`; `fc.bias` is loaded (strict key set) but never used, as in both evaluators.
    fc_weight: Tensor,
}

struct Trunk {
    conv2d_1a_3x3: BasicConv2d,
    conv2d_2a_3x3: BasicConv2d,
    conv2d_2b_3x3: BasicConv2d,
    conv2d_3b_1x1: BasicConv2d,
    conv2d_4a_3x3: BasicConv2d,
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
}

impl Trunk {
    fn new(top: &Builder) -> Self {
        let block = |name: &str| top.sub(name);
        Trunk {
            conv2d_1a_3x3: top.conv("Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0]),
            conv2d_2a_3x3: top.conv("Conv2d_2a_3x3", 32, 32, [3, 3], 1, [0, 0]),
            conv2d_2b_3x3: top.conv("Conv2d_2b_3x3", 32, 64, [3, 3], 1, [1, 1]),
            conv2d_3b_1x1: top.c1("Conv2d_3b_1x1", 64, 80),
            conv2d_4a_3x3: top.conv("Conv2d_4a_3x3", 80, 192, [3, 3], 1, [0, 0]),
            mixed_5: [
                InceptionA::new(block("Mixed_5b"), 192, 32),
                InceptionA::new(block("Mixed_5c"), 256, 64),
                InceptionA::new(block("Mixed_5d"), 288, 64),
            ],
            mixed_6a: InceptionB::new(block("Mixed_6a"), 288),
            mixed_6: [
                InceptionC::new(block("Mixed_6b"), 768, 128),
                InceptionC::new(block("Mixed_6c"), 768, 160),
                InceptionC::new(block("Mixed_6d"), 768, 160),
                InceptionC::new(block("Mixed_6e"), 768, 192),
            ],
            mixed_7a: InceptionD::new(block("Mixed_7a"), 768),
            mixed_7b: InceptionE::new(block("Mixed_7b"), 1280, false),
            mixed_7c: InceptionE::new(block("Mixed_7c"), 2048, true),
        }
    }
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
