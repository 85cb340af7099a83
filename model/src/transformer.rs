//! `ResidualAttentionBlock(d_model=W, n_head=H, mlp_ratio=4.0)` shared by the TiTok encoder and the
//! multi-step decoder (../shared/spec/sftok-model.md §3). Parameter names follow
//! `torch.nn.MultiheadAttention` + the reference's MLP: `ln_1`, `attn.in_proj_weight`,
//! `attn.in_proj_bias`, `attn.out_proj.{weight,bias}`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`.
//!
//! The reference runs sequence-first [L, B, W]; we run batch-first [B, L, W] (a layout convention
//! only). Attention uses libtorch's scaled_dot_product_attention as PyTorch's MHA does
//! ([`crate::attention::sdpa`], under the block's `site` name).
//!
//! The encoder keeps only its latent tokens' rows after the last block, and the decoder only its
//! proxy-code rows; [`run_blocks`] computes the last block's queries, attention output and MLP for
//! those rows alone (the other rows still give their keys and values). The kept rows' values are
//! the full block's, up to float32 rounding; the work saved is ~4 % of an SFTok-B training step
//! (encoder: 257 of 321 rows of the last layer, forward and backward).

use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Debug)]
pub struct ResidualAttentionBlock {
    ln_1: nn::LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    ln_2: nn::LayerNorm,
    c_fc: nn::Linear,
    c_proj: nn::Linear,
    n_head: i64,
    /// Which network this block belongs to, for [`crate::attention::probe`].
    site: &'static str,
}

impl ResidualAttentionBlock {
    pub fn new(p: nn::Path, width: i64, n_head: i64, site: &'static str) -> Self {
        let attn = &p / "attn";
        let mlp = &p / "mlp";
        let bound = (6.0 / (width + 3 * width) as f64).sqrt(); // PyTorch's Xavier-uniform for in_proj
        ResidualAttentionBlock {
            ln_1: nn::layer_norm(&p / "ln_1", vec![width], Default::default()),
            in_proj_weight: attn.var("in_proj_weight", &[3 * width, width], nn::Init::Uniform { lo: -bound, up: bound }),
            in_proj_bias: attn.zeros("in_proj_bias", &[3 * width]),
            out_proj: nn::linear(&attn / "out_proj", width, width, Default::default()),
            ln_2: nn::layer_norm(&p / "ln_2", vec![width], Default::default()),
            c_fc: nn::linear(&mlp / "c_fc", width, 4 * width, Default::default()),
            c_proj: nn::linear(&mlp / "c_proj", 4 * width, width, Default::default()),
            n_head,
            site,
        }
    }
}

impl ResidualAttentionBlock {
    /// [B, rows, W] → [B, H, rows, hd]
    fn heads(&self, t: &Tensor) -> Tensor {
        let (b, rows, w) = t.size3().expect("[B, rows, W]");
        t.view([b, rows, self.n_head, w / self.n_head]).transpose(1, 2)
    }

    /// The block after the projections: the queries of rows `x` [B, len, W] attend to every
    /// row's keys and values, then out_proj, the residual onto `x`, and the MLP → [B, len, W].
    fn attend_then_mlp(&self, x: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, len, w) = x.size3().expect("[B, len, W]");
        let (q, k, v) = (self.heads(q), self.heads(k), self.heads(v));
        let a = crate::attention::sdpa(self.site, &q, &k, &v, 0.0, None);
        let x = x + self.out_proj.forward(&a.transpose(1, 2).reshape([b, len, w]));
        let h = self.c_fc.forward(&self.ln_2.forward(&x)).gelu("none"); // exact (erf) GELU
        &x + self.c_proj.forward(&h)
    }

    /// The block's output at rows `start .. start + len` only: x [B, L, W] → [B, len, W]. Keys and
    /// values come from every row; queries, the attention output and the MLP only from the kept ones.
    pub fn forward_rows(&self, x: &Tensor, start: i64, len: i64) -> Tensor {
        let w = x.size3().expect("[B, L, W]").2;
        let h = self.ln_1.forward(x);
        // in_proj_weight stacks [W_q; W_k; W_v]: K and V for all rows, Q for the kept ones.
        let kv = h.linear(&self.in_proj_weight.narrow(0, w, 2 * w), Some(&self.in_proj_bias.narrow(0, w, 2 * w))); // [B, L, 2W]
        let q = h.narrow(1, start, len).linear(&self.in_proj_weight.narrow(0, 0, w), Some(&self.in_proj_bias.narrow(0, 0, w))); // [B, len, W]
        let kv = kv.split(w, -1);
        self.attend_then_mlp(&x.narrow(1, start, len), &q, &kv[0], &kv[1])
    }
}

impl Module for ResidualAttentionBlock {
    /// x: [B, L, W] → [B, L, W]
    fn forward(&self, x: &Tensor) -> Tensor {
        let w = x.size3().expect("[B, L, W]").2;
        let qkv = self.ln_1.forward(x).linear(&self.in_proj_weight, Some(&self.in_proj_bias)); // [B, L, 3W]
        let qkv = qkv.split(w, -1);
        self.attend_then_mlp(x, &qkv[0], &qkv[1], &qkv[2])
    }
}

/// `blocks` in sequence over x [B, L, W], keeping rows `start .. start + len` of the last one's
/// output → [B, len, W] (what `x = block(x)` for every block, then `x[:, start:start+len]`, gives).
pub fn run_blocks(blocks: &[ResidualAttentionBlock], x: Tensor, start: i64, len: i64) -> Tensor {
    let Some((last, rest)) = blocks.split_last() else { return x.narrow(1, start, len) };
    let x = rest.iter().fold(x, |x, block| block.forward(&x));
    last.forward_rows(&x, start, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The last block computed for some rows equals the full block's rows, values and gradients.
    #[test]
    fn forward_rows_is_the_full_block_at_those_rows() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let blocks: Vec<ResidualAttentionBlock> = (0..2).map(|i| ResidualAttentionBlock::new(vs.root() / i, 32, 4, "test")).collect();
        let x = Tensor::randn([3, 11, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let (start, len) = (7, 4);
        let full = blocks.iter().fold(x.shallow_clone(), |t, b| b.forward(&t)).narrow(1, start, len);
        let kept = run_blocks(&blocks, x.shallow_clone(), start, len);
        assert_eq!(kept.size(), [3, len, 32]);
        let d = (&full - &kept).abs().max().double_value(&[]);
        assert!(d < 1e-5, "values differ by {d:e}");
        // Gradients through every row's keys and values, with a weighting that differs per row.
        let w = Tensor::randn([3, len, 32], (Kind::Float, Device::Cpu));
        let g_full = Tensor::run_backward(&[(&full * &w).sum(Kind::Float)], &[&x], false, false).remove(0);
        let g_kept = Tensor::run_backward(&[(&kept * &w).sum(Kind::Float)], &[&x], false, false).remove(0);
        let dg = (&g_full - &g_kept).abs().max().double_value(&[]);
        assert!(dg < 1e-5, "input gradients differ by {dg:e}");
        // Rows before `start` reach the kept rows only through keys and values: their gradient is not 0.
        assert!(g_kept.narrow(1, 0, start).abs().max().double_value(&[]) > 1e-3);
    }
}
