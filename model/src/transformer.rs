//! `ResidualAttentionBlock(d_model=W, n_head=H, mlp_ratio=4.0)` shared by the TiTok encoder and the
//! multi-step decoder (../shared/spec/sftok-model.md §3). Parameter names follow
//! `torch.nn.MultiheadAttention` + the reference's MLP: `ln_1`, `attn.in_proj_weight`,
//! `attn.in_proj_bias`, `attn.out_proj.{weight,bias}`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`.
//!
//! The reference runs sequence-first [L, B, W]; we run batch-first [B, L, W] (a layout convention
//! only). Attention uses libtorch's scaled_dot_product_attention as PyTorch's MHA does.

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
}

impl ResidualAttentionBlock {
    pub fn new(p: nn::Path, width: i64, n_head: i64) -> Self {
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
        }
    }
}

impl Module for ResidualAttentionBlock {
    /// x: [B, L, W] → [B, L, W]
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, l, w) = x.size3().expect("[B, L, W]");
        let hd = w / self.n_head;
        let qkv = self.ln_1.forward(x).linear(&self.in_proj_weight, Some(&self.in_proj_bias)); // [B, L, 3W]
        let heads = |t: Tensor| t.view([b, l, self.n_head, hd]).transpose(1, 2); // [B, H, L, hd]
        let chunks = qkv.split(w, -1);
        let (q, k, v) = (heads(chunks[0].shallow_clone()), heads(chunks[1].shallow_clone()), heads(chunks[2].shallow_clone()));
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let a = self.out_proj.forward(&a.transpose(1, 2).reshape([b, l, w]));
        let x = x + a;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)).gelu("none"); // exact (erf) GELU
        x + self.c_proj.forward(&h)
    }
}
