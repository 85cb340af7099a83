//! `MultiStepDecoder` (prefix `decoder.`, ../shared/spec/sftok-model.md §6): predicts, for every
//! 16×16 cell, a distribution over the teacher's codes, conditioned on the quantized tokens;
//! masking schedules, self-forcing (guided) masking, and the iterative MaskGIT-style `generate`.
//!
//! Random draws happen in the reference's order through libtorch's default generator, so seeded
//! runs reproduce the reference bit for bit.

use crate::config::MaskSchedule;
use crate::transformer::{ResidualAttentionBlock, run_blocks};
use std::f64::consts::FRAC_PI_2;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub width: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    /// Number of proxy-code slots L (256 = 16×16).
    pub num_proxy_codes: i64,
    /// Teacher vocabulary V (1024); the [MASK] id is V.
    pub vocab_size: i64,
    pub num_latent_tokens: i64,
    pub token_size: i64,
}

/// How the decoder input is masked (`masking_tokens`, §6.2).
#[derive(Clone, Copy, Debug)]
pub struct MaskingConfig {
    pub schedule: MaskSchedule,
    pub power: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
    /// Stage 2: probability that a visible position takes the first-step prediction.
    pub replace_prob: f64,
    /// Stage 3: every visible position takes the first-step prediction.
    pub finetune_decoder: bool,
}

/// Which input the decoder sees.
pub enum DecoderInput<'a> {
    /// `use_mask = False`: the ids as given (inference).
    Ids,
    /// Every slot is [MASK] (stage 1; the first step of self-forcing). Draws no random numbers.
    MaskAll,
    /// Random masking by the schedule; with `Some(guided logits)`, self-forcing replacement.
    Random(Option<&'a Tensor>),
}

/// Iterative decoding settings (`model.generator`).
#[derive(Clone, Debug)]
pub struct SamplingConfig {
    pub num_steps: i64,
    pub randomize_temperature: f64,
    pub softmax_temperature_annealing: bool,
}

#[derive(Debug)]
pub struct GenerateOutput {
    /// [B, L] final ids.
    pub ids: Tensor,
    /// [B, L, V] logits of the last decoder pass.
    pub last_logits: Tensor,
    /// [T, B, L] decoder input of every step.
    pub step_input_ids: Tensor,
}

#[derive(Debug)]
pub struct MultiStepDecoder {
    decoder_embed: nn::Linear,
    condition_positional_embedding: Tensor,
    class_embedding: Tensor,
    learnable_embedding: Tensor,
    learnable_embedding_positional_embedding: Tensor,
    ln_pre: nn::LayerNorm,
    transformer: Vec<ResidualAttentionBlock>,
    ln_post: nn::LayerNorm,
    ffn0: nn::Conv2D,
    ffn2: nn::Conv2D,
    pub cfg: DecoderConfig,
}

impl MultiStepDecoder {
    pub fn new(p: nn::Path, cfg: &DecoderConfig) -> Self {
        let w = cfg.width;
        let scale = (w as f64).powf(-0.5);
        let randn = |name: &str, dims: &[i64]| p.var(name, dims, nn::Init::Randn { mean: 0.0, stdev: scale });
        let conv1 = |name: &str, cin, cout| nn::conv2d(&p / "ffn" / name, cin, cout, 1, Default::default());
        MultiStepDecoder {
            decoder_embed: nn::linear(&p / "decoder_embed", cfg.token_size, w, Default::default()),
            condition_positional_embedding: randn("condition_positional_embedding", &[cfg.num_latent_tokens, w]),
            class_embedding: randn("class_embedding", &[1, w]),
            learnable_embedding: (&p / "learnable_embedding").var(
                "weight",
                &[cfg.vocab_size + 1, w],
                nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            learnable_embedding_positional_embedding: randn("learnable_embedding_positional_embedding", &[cfg.num_proxy_codes + 1, w]),
            ln_pre: nn::layer_norm(&p / "ln_pre", vec![w], Default::default()),
            transformer: (0..cfg.num_layers).map(|i| ResidualAttentionBlock::new(&p / "transformer" / i, w, cfg.num_heads, "sftok decoder")).collect(),
            ln_post: nn::layer_norm(&p / "ln_post", vec![w], Default::default()),
            ffn0: conv1("0", w, 2 * w),
            ffn2: conv1("2", 2 * w, cfg.vocab_size),
            cfg: cfg.clone(),
        }
    }

    pub fn mask_id(&self) -> i64 {
        self.cfg.vocab_size
    }

    /// Decoder pass on explicit input ids [B, L] (values in [0, V], V = [MASK]) conditioned on
    /// z_q [B, D, 1, N] → logits [B, L, V]. The logits are a transposed view of a [B, V, L] buffer
    /// (as in the reference; this layout decides how Gumbel noise is drawn in `generate`).
    pub fn logits(&self, ids: &Tensor, z_q: &Tensor) -> Tensor {
        let (b, d, _, n) = z_q.size4().expect("z_q is [B, D, 1, N]");
        let (w, l) = (self.cfg.width, self.cfg.num_proxy_codes);
        let c = self.decoder_embed.forward(&z_q.reshape([b, d, n]).transpose(1, 2)) + &self.condition_positional_embedding;
        let e = Tensor::embedding(&self.learnable_embedding, ids, -1, false, false); // [B, L, W]
        let cls = self.class_embedding.unsqueeze(0).expand([b, 1, w], false);
        let e = Tensor::cat(&[cls, e], 1) + &self.learnable_embedding_positional_embedding;
        let s = self.ln_pre.forward(&Tensor::cat(&[e, c], 1)); // [B, 1+L+N, W]
        let x = self.ln_post.forward(&run_blocks(&self.transformer, s, 1, l)); // [B, L, W]: the proxy-code rows
        let g = (l as f64).sqrt() as i64;
        let x = x.transpose(1, 2).reshape([b, w, g, g]);
        let x = self.ffn2.forward(&self.ffn0.forward(&x).tanh()); // [B, V, g, g]
        x.reshape([b, self.cfg.vocab_size, l]).transpose(1, 2)
    }

    /// `masking_tokens`: decoder input ids [B, L] and masks [B, L] (true = [MASK]).
    pub fn mask_tokens(&self, input_tokens: &Tensor, mode: &DecoderInput, m: &MaskingConfig) -> (Tensor, Tensor) {
        let (b, l) = input_tokens.size2().expect("[B, L] tokens");
        let dev = input_tokens.device();
        let guided = match mode {
            DecoderInput::Ids => return (input_tokens.shallow_clone(), Tensor::zeros([b, l], (Kind::Bool, dev))),
            DecoderInput::MaskAll => {
                return (input_tokens.full_like(self.mask_id()), Tensor::ones([b, l], (Kind::Bool, dev)));
            }
            DecoderInput::Random(guided) => guided,
        };
        let t = Tensor::zeros([b], (Kind::Float, dev)).uniform_(0.0, 1.0);
        let r = match m.schedule {
            MaskSchedule::Arccos => (t.acos() / FRAC_PI_2).pow_tensor_scalar(m.power),
            MaskSchedule::Linear => t.neg() + 1.0,
            MaskSchedule::Quadratic => (t.neg() + 1.0).pow_tensor_scalar(m.power),
            MaskSchedule::Cubic => (t.neg() + 1.0).pow_tensor_scalar(3),
            MaskSchedule::Exponential => (t * -m.power).exp(),
            MaskSchedule::Cosine => ((t * std::f64::consts::PI).cos() + 1.0) * 0.5,
        };
        let r = r.clamp(0.0, 1.0) * (m.max_ratio - m.min_ratio) + m.min_ratio;
        let lo = ((l as f64 * m.min_ratio) as i64).max(0);
        let hi = ((l as f64 * m.max_ratio) as i64).min(l);
        let n_mask = (r * l as f64).round().clamp(lo as f64, hi as f64).to_kind(Kind::Int64);
        let perm = Tensor::rand([b, l], (Kind::Float, dev)).argsort(-1, false);
        let masks = perm.lt_tensor(&n_mask.unsqueeze(1));
        let visible = match guided {
            None => input_tokens.shallow_clone(),
            Some(g) => {
                let pred = g.argmax(-1, false);
                if m.finetune_decoder {
                    pred
                } else {
                    let u = Tensor::rand([b, l], (Kind::Float, dev));
                    pred.where_self(&u.lt(m.replace_prob), input_tokens)
                }
            }
        };
        (visible.masked_fill(&masks, self.mask_id()), masks)
    }

    /// `decoder(proxy_codes, z_q, …)` → (logits [B, L, V], masks [B, L], input ids [B, L]).
    pub fn forward(&self, proxy_codes: &Tensor, z_q: &Tensor, mode: &DecoderInput, m: &MaskingConfig) -> (Tensor, Tensor, Tensor) {
        let (ids, masks) = self.mask_tokens(proxy_codes, mode, m);
        (self.logits(&ids, z_q), masks, ids)
    }

    /// Confidence-based iterative decoding from all-[MASK] (§6.3). Guidance is a no-op in the
    /// reference (the decoder ignores class dropout), so one pass per step is exact.
    pub fn generate(&self, condition: &Tensor, s: &SamplingConfig) -> GenerateOutput {
        tch::no_grad(|| {
            let b = condition.size()[0];
            let (l, v) = (self.cfg.num_proxy_codes, self.cfg.vocab_size);
            let dev: Device = condition.device();
            let t_steps = s.num_steps;
            let mut ids = Tensor::full([b, l], v, (Kind::Int64, dev));
            let mut inputs = Vec::new();
            let mut last_logits = None;
            for step in 0..t_steps {
                let ratio = (step + 1) as f64 / t_steps as f64;
                let temp = s.randomize_temperature * (1.0 - ratio);
                inputs.push(ids.shallow_clone());
                let mut logits = self.logits(&ids, condition);
                if s.softmax_temperature_annealing {
                    logits = logits / (0.5 + 0.8 * (1.0 - ratio));
                }
                // Noise in the logits' memory order ([B, V, L]), as `zeros_like(logits).uniform_()`.
                let u1 = Tensor::zeros([b, v, l], (Kind::Float, dev)).uniform_(0.0, 1.0).permute([0, 2, 1]);
                ids = crate::maskgit_step::reveal(&logits, &u1, &ids, v, step, t_steps, temp);
                last_logits = Some(logits);
            }
            GenerateOutput {
                ids,
                last_logits: last_logits.expect("num_steps ≥ 1"),
                step_input_ids: Tensor::stack(&inputs, 0),
            }
        })
    }
}
