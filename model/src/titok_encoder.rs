//! `TiTokEncoder` (prefix `encoder.`): ViT over 16×16 patches plus learnable latent tokens
//! (../shared/spec/sftok-model.md §4). Output z: [B, token_size, 1, num_latent_tokens].

use crate::transformer::{ResidualAttentionBlock, run_blocks};
use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    pub image_size: i64,
    pub patch_size: i64,
    pub width: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_latent_tokens: i64,
    pub token_size: i64,
}

#[derive(Debug)]
pub struct TiTokEncoder {
    patch_embed: nn::Conv2D,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    latent_token_positional_embedding: Tensor,
    ln_pre: nn::LayerNorm,
    transformer: Vec<ResidualAttentionBlock>,
    ln_post: nn::LayerNorm,
    conv_out: nn::Conv2D,
    cfg: EncoderConfig,
}

impl TiTokEncoder {
    pub fn new(p: nn::Path, cfg: &EncoderConfig) -> Self {
        let w = cfg.width;
        let grid = cfg.image_size / cfg.patch_size;
        let scale = (w as f64).powf(-0.5);
        let randn = |name: &str, dims: &[i64]| p.var(name, dims, nn::Init::Randn { mean: 0.0, stdev: scale });
        let conv = |name: &str, cin, cout, k| {
            nn::conv2d(&p / name, cin, cout, k, nn::ConvConfig { stride: k, ..Default::default() })
        };
        TiTokEncoder {
            patch_embed: conv("patch_embed", 3, w, cfg.patch_size),
            class_embedding: randn("class_embedding", &[1, w]),
            positional_embedding: randn("positional_embedding", &[grid * grid + 1, w]),
            latent_token_positional_embedding: randn("latent_token_positional_embedding", &[cfg.num_latent_tokens, w]),
            ln_pre: nn::layer_norm(&p / "ln_pre", vec![w], Default::default()),
            transformer: (0..cfg.num_layers).map(|i| ResidualAttentionBlock::new(&p / "transformer" / i, w, cfg.num_heads, "sftok encoder")).collect(),
            ln_post: nn::layer_norm(&p / "ln_post", vec![w], Default::default()),
            conv_out: conv("conv_out", w, cfg.token_size, 1),
            cfg: cfg.clone(),
        }
    }

    /// x: [B, 3, H, W] in [0, 1]; latent_tokens: [N, W] → z [B, token_size, 1, N].
    pub fn forward(&self, x: &Tensor, latent_tokens: &Tensor) -> Tensor {
        let b = x.size()[0];
        let (w, n) = (self.cfg.width, self.cfg.num_latent_tokens);
        let patches = self.patch_embed.forward(x).flatten(2, 3).transpose(1, 2); // [B, P, W], p = h·g + w
        let cls = self.class_embedding.unsqueeze(0).expand([b, 1, w], false);
        let t = Tensor::cat(&[cls, patches], 1) + &self.positional_embedding; // [B, P+1, W]
        let latents = (latent_tokens + &self.latent_token_positional_embedding).unsqueeze(0).expand([b, n, w], false);
        let t = self.ln_pre.forward(&Tensor::cat(&[t, latents], 1)); // [B, P+1+N, W]
        let first = t.size()[1] - n;
        let u = self.ln_post.forward(&run_blocks(&self.transformer, t, first, n)); // [B, N, W]: the latent tokens
        // Legacy reshape (is_legacy = True): reinterpret the row-major [N, W] matrix as [W, N] —
        // not a transpose. The released weights depend on it.
        let u = u.contiguous().view([b, w, n, 1]);
        self.conv_out.forward(&u).reshape([b, self.cfg.token_size, 1, n])
    }
}
