//! MaskGIT-VQGAN (../shared/spec/teacher-maskgit-vqgan.md): the frozen teacher that turns images
//! into 16×16 proxy codes from a 1024-entry codebook, and — under the prefixes `pixel_decoder` /
//! `pixel_quantize` — SFTok's stage-3 pixel decoder. Parameter paths equal the reference's keys
//! (`encoder.down.2.block.0.nin_shortcut.weight`, `quantize.embedding.weight`, …).
//!
//! No attention anywhere; SiLU activations; GroupNorm(32, eps 1e-6). Every convolution has stride 1
//! and an odd kernel, so TF "SAME" padding is plain symmetric zero padding (1 for 3×3, 0 for 1×1).

use anyhow::{Result, bail};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The wrapper's hard-coded hyper-parameters (spec §1); the tiny fixture shrinks the widths.
#[derive(Clone, Debug, PartialEq)]
pub struct VqganConfig {
    pub num_channels: i64,
    pub hidden_channels: i64,
    pub channel_mult: Vec<i64>,
    pub num_res_blocks: i64,
    pub z_channels: i64,
    pub num_embeddings: i64,
}

impl From<&crate::config::PixelDecoder> for VqganConfig {
    fn from(p: &crate::config::PixelDecoder) -> Self {
        VqganConfig {
            num_channels: p.num_channels,
            hidden_channels: p.hidden_channels,
            channel_mult: p.channel_mult.clone(),
            num_res_blocks: p.num_res_blocks,
            z_channels: p.z_channels,
            num_embeddings: p.num_embeddings,
        }
    }
}

impl Default for VqganConfig {
    fn default() -> Self {
        VqganConfig {
            num_channels: 3,
            hidden_channels: 128,
            channel_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 256,
            num_embeddings: 1024,
        }
    }
}

const GN_GROUPS: i64 = 32;
const GN_EPS: f64 = 1e-6;

/// GroupNorm(32) with affine weight and bias, as `norm1`, `norm2`, `norm_out` (tch's layer, with
/// the plain kernel as in the reference's CPU/GPU runs).
fn group_norm(p: nn::Path, c: i64) -> nn::GroupNorm {
    nn::group_norm(p, GN_GROUPS, c, nn::GroupNormConfig { eps: GN_EPS, cudnn_enabled: false, ..Default::default() })
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, k, nn::ConvConfig { padding: k / 2, bias, ..Default::default() })
}

/// `ResnetBlock(c_in, c_out)`. Quirk kept from the JAX original: when the width changes, the 1×1
/// `nin_shortcut` (c_out → c_out) is applied to the *output* of conv2 and the input is dropped.
#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    nin_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        ResnetBlock {
            norm1: group_norm(&p / "norm1", c_in),
            conv1: conv(&p / "conv1", c_in, c_out, 3, false),
            norm2: group_norm(&p / "norm2", c_out),
            conv2: conv(&p / "conv2", c_out, c_out, 3, false),
            nin_shortcut: (c_in != c_out).then(|| conv(&p / "nin_shortcut", c_out, c_out, 1, false)),
        }
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu()); // dropout p = 0
        match &self.nin_shortcut {
            Some(s) => s.forward(&h) + h,
            None => h + x,
        }
    }
}

fn widths(cfg: &VqganConfig) -> Vec<i64> {
    cfg.channel_mult.iter().map(|m| m * cfg.hidden_channels).collect()
}

/// `encoder.*`: [B, 3, H, W] in [0, 1] → [B, z_channels, H/16, W/16].
#[derive(Debug)]
pub struct Encoder {
    conv_in: nn::Conv2D,
    /// Per level: its res blocks; every level but the last ends with a 2×2 average pool.
    down: Vec<Vec<ResnetBlock>>,
    mid: Vec<ResnetBlock>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    pub fn new(p: nn::Path, cfg: &VqganConfig) -> Self {
        let w = widths(cfg);
        let conv_in = conv(&p / "conv_in", cfg.num_channels, cfg.hidden_channels, 3, false);
        let mut c = cfg.hidden_channels;
        let down = w
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let level = &p / "down" / i as i64 / "block";
                (0..cfg.num_res_blocks)
                    .map(|j| {
                        let b = ResnetBlock::new(&level / j, c, c_out);
                        c = c_out;
                        b
                    })
                    .collect()
            })
            .collect();
        let mid = (0..cfg.num_res_blocks).map(|j| ResnetBlock::new(&p / "mid" / j, c, c)).collect();
        Encoder {
            conv_in,
            down,
            mid,
            norm_out: group_norm(&p / "norm_out", c),
            conv_out: conv(&p / "conv_out", c, cfg.z_channels, 1, true),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        let last = self.down.len() - 1;
        for (i, level) in self.down.iter().enumerate() {
            for b in level {
                h = b.forward(&h);
            }
            if i < last {
                h = h.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
            }
        }
        for b in &self.mid {
            h = b.forward(&h);
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// `decoder.*`: [B, z_channels, h, w] (hard or soft code vectors) → [B, 3, 16h, 16w], unclamped.
#[derive(Debug)]
pub struct Decoder {
    conv_in: nn::Conv2D,
    mid: Vec<ResnetBlock>,
    /// Stored by level (`up.0` = full resolution) and executed from the last level down.
    up: Vec<(Vec<ResnetBlock>, Option<nn::Conv2D>)>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    pub fn new(p: nn::Path, cfg: &VqganConfig) -> Self {
        let w = widths(cfg);
        let top = *w.last().expect("channel_mult is not empty");
        let conv_in = conv(&p / "conv_in", cfg.z_channels, top, 3, true);
        let mid = (0..cfg.num_res_blocks).map(|j| ResnetBlock::new(&p / "mid" / j, top, top)).collect();
        let mut up: Vec<_> = Vec::new();
        let mut c = top;
        for i in (0..w.len()).rev() {
            let level = &p / "up" / i as i64;
            let blocks = (0..cfg.num_res_blocks)
                .map(|j| {
                    let b = ResnetBlock::new(&level / "block" / j, c, w[i]);
                    c = w[i];
                    b
                })
                .collect();
            let upsample = (i > 0).then(|| conv(&level / "upsample_conv", c, c, 3, true));
            up.push((blocks, upsample));
        }
        Decoder {
            conv_in,
            mid,
            up,
            norm_out: group_norm(&p / "norm_out", c),
            conv_out: conv(&p / "conv_out", c, cfg.num_channels, 3, true),
        }
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(z);
        for b in &self.mid {
            h = b.forward(&h);
        }
        for (blocks, upsample) in &self.up {
            for b in blocks {
                h = b.forward(&h);
            }
            if let Some(conv) = upsample {
                let (hh, ww) = (h.size()[2], h.size()[3]);
                h = conv.forward(&h.upsample_nearest2d([hh * 2, ww * 2], None, None));
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// `quantize.*`: plain Euclidean nearest-neighbour VQ over `embedding.weight` [K, D].
#[derive(Debug)]
pub struct VectorQuantizer {
    pub embedding: Tensor,
}

impl VectorQuantizer {
    pub fn new(p: nn::Path, cfg: &VqganConfig) -> Self {
        let embedding = (&p / "embedding").randn_standard("weight", &[cfg.num_embeddings, cfg.z_channels]);
        VectorQuantizer { embedding }
    }

    /// [B, D, h, w] → (z_q [B, D, h, w] = exact codebook rows, codes [B, h·w] int64 raster order).
    pub fn forward(&self, z: &Tensor) -> (Tensor, Tensor) {
        let (b, d, h, w) = z.size4().expect("quantizer input is [B, D, h, w]");
        let flat = z.permute([0, 2, 3, 1]).reshape([-1, d]); // row = b·hw + y·w + x
        let e = &self.embedding;
        // ‖z‖² + ‖e‖² − 2⟨z, e⟩ in float32, as the reference's addmm; argmin keeps the first index on ties.
        let dist = flat.pow_tensor_scalar(2).sum_dim_intlist(1, true, Kind::Float)
            + e.pow_tensor_scalar(2).sum_dim_intlist(1, false, Kind::Float).unsqueeze(0)
            - flat.matmul(&e.tr()) * 2.0;
        let codes = dist.argmin(1, false).reshape([b, h * w]);
        (self.codebook_entry(&codes.reshape([b, h, w])).expect("3-D codes"), codes)
    }

    /// Codes [B, N] (N a perfect square) or [B, h, w] → code vectors [B, D, h, w].
    pub fn codebook_entry(&self, codes: &Tensor) -> Result<Tensor> {
        let size = codes.size();
        let (b, h, w) = match size.as_slice() {
            [b, n] => {
                let s = (*n as f64).sqrt().round() as i64;
                if s * s != *n {
                    bail!("codes [B, {n}]: {n} is not a square number of positions");
                }
                (*b, s, s)
            }
            [b, h, w] => (*b, *h, *w),
            _ => bail!("codes must be [B, N] or [B, h, w], got {size:?}"),
        };
        let d = self.embedding.size()[1];
        Ok(self.embedding.index_select(0, &codes.reshape([-1])).reshape([b, h, w, d]).permute([0, 3, 1, 2]))
    }
}

/// The teacher as the reference's `PretrainedTokenizer` wraps it: frozen, float32.
#[derive(Debug)]
pub struct MaskgitVqgan {
    pub encoder: Encoder,
    pub quantize: VectorQuantizer,
    pub decoder: Decoder,
}

impl MaskgitVqgan {
    pub fn new(root: &nn::Path, cfg: &VqganConfig) -> Self {
        MaskgitVqgan {
            encoder: Encoder::new(root / "encoder", cfg),
            quantize: VectorQuantizer::new(root / "quantize", cfg),
            decoder: Decoder::new(root / "decoder", cfg),
        }
    }

    /// Images [B, 3, H, W] in [0, 1] → proxy codes [B, (H/16)·(W/16)] int64, raster order.
    pub fn encode(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.quantize.forward(&self.encoder.forward(x)).1)
    }

    /// Codes [B, N] or [B, h, w] → images clamped to [0, 1].
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        Ok(self.decode_raw(codes)?.clamp(0.0, 1.0))
    }

    /// As `decode`, without the clamp.
    pub fn decode_raw(&self, codes: &Tensor) -> Result<Tensor> {
        let z = self.quantize.codebook_entry(codes)?;
        Ok(tch::no_grad(|| self.decoder.forward(&z)))
    }
}

/// Where the teacher's weights come from: a checkpoint file, or `random:SEED` — a seeded random
/// initialisation for smoke tests and the demo (its codes are meaningless; callers say so).
pub fn load_teacher(spec: &str, device: tch::Device) -> Result<(nn::VarStore, MaskgitVqgan)> {
    load_teacher_sized(spec, &VqganConfig::default(), device)
}

/// As [`load_teacher`] with other sizes (`random:SEED` teachers of tiny stage-3 models).
pub fn load_teacher_sized(spec: &str, cfg: &VqganConfig, device: tch::Device) -> Result<(nn::VarStore, MaskgitVqgan)> {
    let vs = nn::VarStore::new(device);
    let model = if let Some(seed) = crate::checkpoint::random_weights_seed(spec) {
        tch::manual_seed(seed?);
        MaskgitVqgan::new(&vs.root(), cfg)
    } else {
        let model = MaskgitVqgan::new(&vs.root(), cfg);
        crate::checkpoint::load_file(&vs, std::path::Path::new(spec))
            .map_err(|e| e.context("loading the MaskGIT-VQGAN teacher (maskgit-vqgan-imagenet-f16-256.bin from the TiTok release)"))?;
        model
    };
    crate::conv_layout::prefer_channels_last(&vs, "")?;
    Ok((vs, model))
}
