//! `ImageBert` (prefix `model.`, ../shared/spec/generator-maskgit.md §2–§3): the class-conditional
//! MaskGIT generator over SFTok tokens — a Hugging Face `BertModel` (post-LN, no pooler) whose
//! `lm_head` predicts the `codebook_size` image tokens of positions 1..=N.
//!
//! Token space: `0..K` image tokens, `K` = [MASK], `K+1..=K+C` class `c` ↦ `c + K + 1`, `K+C+1` =
//! the null class of classifier-free guidance. Sequence: `[class, t_0, …, t_{N−1}]`.
//!
//! Parameter paths mirror the reference's state dict (391 tensors at full size):
//! `model.embeddings.{word,position,token_type}_embeddings.weight`, `model.embeddings.LayerNorm.*`,
//! `model.encoder.layer.{i}.{attention.self.{query,key,value},attention.output.{dense,LayerNorm},
//! intermediate.dense,output.{dense,LayerNorm}}.*`, `model.lm_head.*`.

use crate::config::Config;
use anyhow::{Result, bail};
use std::f64::consts::FRAC_PI_2;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// BERT's LayerNorm epsilon.
const LAYER_NORM_EPS: f64 = 1e-12;
/// BERT's `initializer_range`.
const INIT_STD: f64 = 0.02;
/// A stored `position_ids` buffer (transformers < 4.31) that loading accepts and ignores.
pub const IGNORED_KEYS: &[&str] = &["model.embeddings.position_ids"];

#[derive(Clone, Debug, PartialEq)]
pub struct ImageBertConfig {
    /// `model.vq_model.codebook_size` K: output classes; the [MASK] id is K.
    pub codebook_size: i64,
    /// `model.img_generator.condition_num_classes` C.
    pub num_classes: i64,
    /// `image_seq_len` N (64): tokens per image.
    pub seq_len: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub intermediate_size: i64,
    /// Hidden-state dropout (training only).
    pub dropout: f64,
    /// Attention-probability dropout (training only).
    pub attn_drop: f64,
}

impl ImageBertConfig {
    /// From `model.img_generator` and `model.vq_model`; refuses what the reference cannot build.
    pub fn from_config(cfg: &Config) -> Result<ImageBertConfig> {
        let g = &cfg.model.img_generator;
        if g.model_type != "ViT" {
            bail!("model.img_generator.model_type = {:?}: only \"ViT\" (ImageBert) exists; the reference's UViT branch cannot be selected either", g.model_type);
        }
        if g.hidden_size % g.num_attention_heads != 0 {
            bail!("model.img_generator.hidden_size {} is not a multiple of num_attention_heads {}", g.hidden_size, g.num_attention_heads);
        }
        let n = cfg.model.vq_model.num_latent_tokens;
        if g.image_seq_len != n {
            bail!("model.img_generator.image_seq_len = {} but model.vq_model.num_latent_tokens = {n}: the generator must produce the tokenizer's token count", g.image_seq_len);
        }
        Ok(ImageBertConfig {
            codebook_size: cfg.model.vq_model.codebook_size,
            num_classes: g.condition_num_classes,
            seq_len: g.image_seq_len,
            hidden_size: g.hidden_size,
            num_layers: g.num_hidden_layers,
            num_heads: g.num_attention_heads,
            intermediate_size: g.intermediate_size,
            dropout: g.dropout,
            attn_drop: g.attn_drop,
        })
    }

    pub fn mask_id(&self) -> i64 {
        self.codebook_size
    }

    pub fn null_class_id(&self) -> i64 {
        self.codebook_size + self.num_classes + 1
    }

    /// K + C + 2: image tokens, [MASK], the classes and the null class.
    pub fn vocab_size(&self) -> i64 {
        self.codebook_size + self.num_classes + 2
    }
}

fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![width], nn::LayerNormConfig { eps: LAYER_NORM_EPS, ..Default::default() })
}

/// One post-LN BERT layer (`model.encoder.layer.{i}`).
#[derive(Debug)]
struct BertLayer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_ln: nn::LayerNorm,
    intermediate: nn::Linear,
    out: nn::Linear,
    out_ln: nn::LayerNorm,
    num_heads: i64,
}

impl BertLayer {
    fn new(p: nn::Path, c: &ImageBertConfig, lin: nn::LinearConfig) -> BertLayer {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let att = &p / "attention";
        let own = &att / "self";
        BertLayer {
            query: nn::linear(&own / "query", h, h, lin),
            key: nn::linear(&own / "key", h, h, lin),
            value: nn::linear(&own / "value", h, h, lin),
            attn_out: nn::linear(&att / "output" / "dense", h, h, lin),
            attn_ln: layer_norm(&att / "output" / "LayerNorm", h),
            intermediate: nn::linear(&p / "intermediate" / "dense", h, i, lin),
            out: nn::linear(&p / "output" / "dense", i, h, lin),
            out_ln: layer_norm(&p / "output" / "LayerNorm", h),
            num_heads: c.num_heads,
        }
    }

    /// h: [B, L, H] → [B, L, H].
    fn forward(&self, h: &Tensor, c: &ImageBertConfig, train: bool) -> Tensor {
        let (b, l, w) = h.size3().expect("[B, L, H]");
        let hd = w / self.num_heads;
        let heads = |t: Tensor| t.view([b, l, self.num_heads, hd]).transpose(1, 2); // [B, nh, L, hd]
        let (q, k, v) = (heads(self.query.forward(h)), heads(self.key.forward(h)), heads(self.value.forward(h)));
        // softmax(q kᵀ / √hd) v with dropout on the probabilities (SDPA, as transformers' "sdpa").
        let p = if train { c.attn_drop } else { 0.0 };
        let a = crate::attention::sdpa("generator", &q, &k, &v, p, None);
        let a = a.transpose(1, 2).reshape([b, l, w]);
        let h = self.attn_ln.forward(&(self.attn_out.forward(&a).dropout(c.dropout, train) + h));
        let m = self.intermediate.forward(&h).gelu("none"); // exact (erf) GELU
        self.out_ln.forward(&(self.out.forward(&m).dropout(c.dropout, train) + &h))
    }
}

#[derive(Debug)]
pub struct ImageBert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embed_ln: nn::LayerNorm,
    layers: Vec<BertLayer>,
    lm_head: nn::Linear,
    pub cfg: ImageBertConfig,
}

impl ImageBert {
    /// Builds under `root / "model"` with the reference's initialisation (§3.4): N(0, 0.02) for
    /// embeddings and Linear weights, zero biases, unit LayerNorms — except `lm_head`, which the
    /// reference re-creates after BERT's `post_init` and so keeps PyTorch's default
    /// U(−1/√H, 1/√H) for weight and bias. Draws from libtorch's generator in construction order.
    pub fn new(root: &nn::Path, c: &ImageBertConfig) -> ImageBert {
        let p = root / "model";
        let e = &p / "embeddings";
        let h = c.hidden_size;
        let normal = nn::Init::Randn { mean: 0.0, stdev: INIT_STD };
        let bert_linear = nn::LinearConfig { ws_init: normal, bs_init: Some(nn::Init::Const(0.0)), bias: true };
        let bound = 1.0 / (h as f64).sqrt();
        let uniform = nn::Init::Uniform { lo: -bound, up: bound };
        let word_embeddings = (&e / "word_embeddings").var("weight", &[c.vocab_size(), h], normal);
        let position_embeddings = (&e / "position_embeddings").var("weight", &[c.seq_len + 1, h], normal);
        let token_type_embeddings = (&e / "token_type_embeddings").var("weight", &[2, h], normal);
        let embed_ln = layer_norm(&e / "LayerNorm", h);
        let layers = (0..c.num_layers).map(|i| BertLayer::new(&p / "encoder" / "layer" / i, c, bert_linear)).collect();
        let lm_head = nn::linear(&p / "lm_head", h, c.codebook_size, nn::LinearConfig { ws_init: uniform, bs_init: Some(uniform), bias: true });
        ImageBert { word_embeddings, position_embeddings, token_type_embeddings, embed_ln, layers, lm_head, cfg: c.clone() }
    }

    /// Class ids [B] → input ids of the class position; rows whose draw is below
    /// `cond_drop_prob` get the null class. Always draws rand [B] first (the reference's
    /// `rand_like(condition)`), so seeded runs consume the same numbers for any probability.
    /// Returns (class token ids [B], dropped [B] bool).
    pub fn class_tokens(&self, condition: &Tensor, cond_drop_prob: f64) -> (Tensor, Tensor) {
        let drop = Tensor::rand([condition.size()[0]], (Kind::Float, condition.device())).lt(cond_drop_prob);
        let cls = (condition + (self.cfg.codebook_size + 1)).masked_fill(&drop, self.cfg.null_class_id());
        (cls, drop)
    }

    /// Logits [B, N, K] of the image positions for ids [B, N] (image tokens or [MASK]) and
    /// classes [B]; see [`ImageBert::class_tokens`] for the label dropout. `train` enables dropout.
    pub fn forward(&self, input_ids: &Tensor, condition: &Tensor, cond_drop_prob: f64, train: bool) -> (Tensor, Tensor) {
        let (cls, dropped) = self.class_tokens(condition, cond_drop_prob);
        let b = input_ids.size()[0];
        let x = Tensor::cat(&[cls.view([b, 1]), input_ids.view([b, -1])], 1); // [B, N+1]
        (self.logits(&x, train), dropped)
    }

    /// Full sequences [B, N+1] (class first) → logits [B, N, K].
    pub fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        let l = x.size()[1];
        // BERT: word + token type 0, then + positions 0..L.
        let e = Tensor::embedding(&self.word_embeddings, x, -1, false, false) + self.token_type_embeddings.get(0);
        let e = e + self.position_embeddings.narrow(0, 0, l);
        let mut h = self.embed_ln.forward(&e).dropout(self.cfg.dropout, train);
        for layer in &self.layers {
            h = layer.forward(&h, &self.cfg, train);
        }
        self.lm_head.forward(&h.narrow(1, 1, l - 1))
    }

    /// The training input (§4.2): per sample t ~ U(0,1), ratio = clamp(arccos(t)/(π/2), 1e-6, 1),
    /// n = max(1, round-half-even(N·ratio)) positions chosen by a random permutation become [MASK].
    /// Draws uniform [B] then rand [B, N]. Returns (masked ids [B, N], masks [B, N] bool).
    pub fn masking_input_tokens(&self, tokens: &Tensor) -> (Tensor, Tensor) {
        let (b, n) = tokens.size2().expect("tokens [B, N]");
        let dev = tokens.device();
        let t = Tensor::zeros([b], (Kind::Float, dev)).uniform_(0.0, 1.0);
        let ratio = (t.acos() / FRAC_PI_2).clamp(1e-6, 1.0);
        let count = (ratio * n as f64).round().clamp_min(1.0);
        let perm = Tensor::rand([b, n], (Kind::Float, dev)).argsort(-1, false);
        let masks = perm.lt_tensor(&count.unsqueeze(1));
        let masked = tokens.masked_fill(&masks, self.cfg.mask_id());
        (masked, masks)
    }
}

/// Loads a reference state dict strictly (after [`IGNORED_KEYS`] are dropped): every key of the
/// model present with its shape, no other key.
pub fn load_state_dict(vs: &nn::VarStore, sd: crate::checkpoint::StateDict) -> Result<()> {
    let sd = crate::checkpoint::StateDict { tensors: sd.tensors.into_iter().filter(|(k, _)| !IGNORED_KEYS.contains(&k.as_str())).collect() };
    crate::checkpoint::load_into(vs, &sd, true).map(|_| ())
}
