//! The FID Inception's building blocks under their torchvision-layout state-dict paths: the
//! BatchNorm-folded `BasicConv2d`, the five Inception block kinds (A–E, with the FID variants of the
//! TF graph) and the trunk that chains them. Chains of convolutions are arrays run in order.

use std::cell::RefCell;
use tch::{Kind, Tensor, nn};

/// Conv (no bias) → BatchNorm (eval, running statistics) → ReLU, run as one biased convolution
/// with the BatchNorm folded in (`W·γ/√(σ²+ε)`, `β − μ·γ/√(σ²+ε)`, computed in float64 by
/// [`BnFold::apply`] after every load): same function, one pass over the activations fewer.
pub(super) struct BasicConv2d {
    weight: Tensor,
    bias: Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl BasicConv2d {
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), self.stride, self.padding, [1, 1], 1).relu_()
    }
}

/// One BasicConv2d's state-dict tensors (VarStore handles) and the folded tensors it computes.
pub(super) struct BnFold {
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
    pub(super) fn apply(&self) {
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
pub(super) struct Builder<'a> {
    pub(super) p: nn::Path<'a>,
    pub(super) eps: f64,
    pub(super) kind: Kind,
    pub(super) folds: &'a RefCell<Vec<BnFold>>,
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

/// Convolutions applied one after another.
fn chain(convs: &[BasicConv2d], x: &Tensor) -> Tensor {
    convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h))
}

fn avg_pool_3x3_excl_pad(x: &Tensor) -> Tensor {
    // TF's AVG_POOL SAME divides by the number of real pixels: count_include_pad = false.
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

pub(super) fn max_pool_3x3_s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// FID-InceptionA (`Mixed_5b/5c/5d`): output 64+64+96+pool_features channels.
pub(super) struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5: [BasicConv2d; 2],
    branch3x3dbl: [BasicConv2d; 3],
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(b: Builder, c_in: i64, pool_features: i64) -> Self {
        InceptionA {
            branch1x1: b.c1("branch1x1", c_in, 64),
            branch5x5: [b.c1("branch5x5_1", c_in, 48), b.conv("branch5x5_2", 48, 64, [5, 5], 1, [2, 2])],
            branch3x3dbl: [
                b.c1("branch3x3dbl_1", c_in, 64),
                b.conv("branch3x3dbl_2", 64, 96, [3, 3], 1, [1, 1]),
                b.conv("branch3x3dbl_3", 96, 96, [3, 3], 1, [1, 1]),
            ],
            branch_pool: b.c1("branch_pool", c_in, pool_features),
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let bp = self.branch_pool.forward(&avg_pool_3x3_excl_pad(x));
        Tensor::cat(&[b1, chain(&self.branch5x5, x), chain(&self.branch3x3dbl, x), bp], 1)
    }
}

/// InceptionB (`Mixed_6a`, unchanged from torchvision): 35×35 → 17×17, 384+96+c_in channels.
pub(super) struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl: [BasicConv2d; 3],
}

impl InceptionB {
    fn new(b: Builder, c_in: i64) -> Self {
        InceptionB {
            branch3x3: b.conv("branch3x3", c_in, 384, [3, 3], 2, [0, 0]),
            branch3x3dbl: [
                b.c1("branch3x3dbl_1", c_in, 64),
                b.conv("branch3x3dbl_2", 64, 96, [3, 3], 1, [1, 1]),
                b.conv("branch3x3dbl_3", 96, 96, [3, 3], 2, [0, 0]),
            ],
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(&[self.branch3x3.forward(x), chain(&self.branch3x3dbl, x), max_pool_3x3_s2(x)], 1)
    }
}

/// FID-InceptionC (`Mixed_6b..6e`): 768 channels at 17×17, factorised 7×7 convolutions.
pub(super) struct InceptionC {
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
    pub(super) fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let b1 = self.branch1x1.forward(x);
        let bp = self.branch_pool.forward(&avg_pool_3x3_excl_pad(x));
        (Tensor::cat(&[&b1, &chain(&self.branch7x7, x), &chain(&self.branch7x7dbl, x), &bp], 1), b1)
    }
}

/// InceptionD (`Mixed_7a`, unchanged): 17×17 → 8×8, 320+192+c_in channels.
pub(super) struct InceptionD {
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

    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(&[chain(&self.branch3x3, x), chain(&self.branch7x7x3, x), max_pool_3x3_s2(x)], 1)
    }
}

/// FID-InceptionE_1 (`Mixed_7b`, avg pool) and E_2 (`Mixed_7c`, max pool — a quirk of the TF
/// graph): 2048 channels at 8×8.
pub(super) struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    /// `branch3x3_2a` (1×3) and `_2b` (3×1), both on `branch3x3_1`'s output.
    branch3x3_2: [BasicConv2d; 2],
    /// `branch3x3dbl_1`, `_2` in a chain.
    branch3x3dbl: [BasicConv2d; 2],
    /// `branch3x3dbl_3a` (1×3) and `_3b` (3×1), both on the chain's output.
    branch3x3dbl_3: [BasicConv2d; 2],
    branch_pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(b: Builder, c_in: i64, max_pool: bool) -> Self {
        InceptionE {
            branch1x1: b.c1("branch1x1", c_in, 320),
            branch3x3_1: b.c1("branch3x3_1", c_in, 384),
            branch3x3_2: [b.conv("branch3x3_2a", 384, 384, [1, 3], 1, [0, 1]), b.conv("branch3x3_2b", 384, 384, [3, 1], 1, [1, 0])],
            branch3x3dbl: [b.c1("branch3x3dbl_1", c_in, 448), b.conv("branch3x3dbl_2", 448, 384, [3, 3], 1, [1, 1])],
            branch3x3dbl_3: [b.conv("branch3x3dbl_3a", 384, 384, [1, 3], 1, [0, 1]), b.conv("branch3x3dbl_3b", 384, 384, [3, 1], 1, [1, 0])],
            branch_pool: b.c1("branch_pool", c_in, 192),
            max_pool,
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let split = |pair: &[BasicConv2d; 2], h: &Tensor| Tensor::cat(&[pair[0].forward(h), pair[1].forward(h)], 1);
        let b3 = split(&self.branch3x3_2, &self.branch3x3_1.forward(x));
        let bd = split(&self.branch3x3dbl_3, &chain(&self.branch3x3dbl, x));
        let pooled = if self.max_pool {
            x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            avg_pool_3x3_excl_pad(x)
        };
        let bp = self.branch_pool.forward(&pooled);
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

pub(super) struct Trunk {
    pub(super) conv2d_1a_3x3: BasicConv2d,
    pub(super) conv2d_2a_3x3: BasicConv2d,
    pub(super) conv2d_2b_3x3: BasicConv2d,
    pub(super) conv2d_3b_1x1: BasicConv2d,
    pub(super) conv2d_4a_3x3: BasicConv2d,
    pub(super) mixed_5: [InceptionA; 3],
    pub(super) mixed_6a: InceptionB,
    pub(super) mixed_6: [InceptionC; 4],
    pub(super) mixed_7a: InceptionD,
    pub(super) mixed_7b: InceptionE,
    pub(super) mixed_7c: InceptionE,
}

impl Trunk {
    pub(super) fn new(top: &Builder) -> Self {
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
