//! The `SFTok` wrapper (../shared/spec/sftok-model.md §7, §9): encoder + latent tokens + OptVQ +
//! multi-step decoder, and — for stage-3 / released models (`finetune_decoder`) — the soft-code
//! path through `pixel_quantize` and the MaskGIT-VQGAN `pixel_decoder`.

use crate::config::Config;
use crate::multistep_decoder::{DecoderConfig, DecoderInput, GenerateOutput, MaskingConfig, MultiStepDecoder, SamplingConfig};
use crate::optvq::{OptVq, OptVqConfig, QuantizerOutput};
use crate::titok_encoder::{EncoderConfig, TiTokEncoder};
use crate::vqgan::{self, VectorQuantizer, VqganConfig};
use anyhow::{Result, bail};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Everything that fixes the network's shape and behaviour, derived from a [`Config`].
#[derive(Clone, Debug)]
pub struct SFTokConfig {
    pub encoder: EncoderConfig,
    pub quantizer: OptVqConfig,
    pub decoder: DecoderConfig,
    pub masking: MaskingConfig,
    pub sampling: SamplingConfig,
    /// Some(..) when `model.vq_model.finetune_decoder` (stage 3, released checkpoints).
    pub pixel_decoder: Option<VqganConfig>,
}

impl SFTokConfig {
    pub fn from_config(cfg: &Config) -> Result<SFTokConfig> {
        let vq = &cfg.model.vq_model;
        let dec = &cfg.model.decoder;
        let enc_size = cfg.model.transformer_size(&vq.vit_enc_model_size)?;
        let dec_size = cfg.model.transformer_size(&dec.vit_dec_model_size)?;
        let image_size = cfg.dataset.preprocessing.crop_size as i64;
        if !vq.is_legacy || !dec.is_legacy {
            bail!("model.vq_model.is_legacy / model.decoder.is_legacy = False is dead code in the reference (no released weights); set them to True");
        }
        if vq.quantize_mode != "vq" || vq.num_group != 1 || !vq.use_l2_norm {
            bail!("only quantize_mode \"vq\" with num_group 1 and use_l2_norm True is supported (the reference's only live path)");
        }
        let grid = image_size / dec.vit_dec_patch_size;
        if grid * grid != dec.num_proxy_codes {
            bail!(
                "model.decoder.num_proxy_codes = {} but dataset.preprocessing.crop_size / model.decoder.vit_dec_patch_size = {grid} (expected {grid}² = {})",
                dec.num_proxy_codes,
                grid * grid
            );
        }
        if image_size % vq.vit_enc_patch_size != 0 {
            bail!("dataset.preprocessing.crop_size {image_size} is not a multiple of model.vq_model.vit_enc_patch_size {}", vq.vit_enc_patch_size);
        }
        if dec.num_latent_tokens != vq.num_latent_tokens || dec.token_size != vq.token_size {
            bail!("model.decoder.num_latent_tokens/token_size must equal model.vq_model's ({}/{})", vq.num_latent_tokens, vq.token_size);
        }
        if vq.finetune_decoder && cfg.model.pixel_decoder.num_embeddings != dec.codebook_size {
            bail!(
                "model.pixel_decoder.num_embeddings = {} but model.decoder.codebook_size = {}: the soft path weights the pixel codebook by the decoder's logits, so they must be equal",
                cfg.model.pixel_decoder.num_embeddings,
                dec.codebook_size
            );
        }
        let g = &cfg.model.generator;
        Ok(SFTokConfig {
            encoder: EncoderConfig {
                image_size,
                patch_size: vq.vit_enc_patch_size,
                width: enc_size.width,
                num_layers: enc_size.num_layers,
                num_heads: enc_size.num_heads,
                num_latent_tokens: vq.num_latent_tokens,
                token_size: vq.token_size,
            },
            quantizer: OptVqConfig { codebook_size: vq.codebook_size, token_size: vq.token_size, commitment_cost: vq.commitment_cost },
            decoder: DecoderConfig {
                width: dec_size.width,
                num_layers: dec_size.num_layers,
                num_heads: dec_size.num_heads,
                num_proxy_codes: dec.num_proxy_codes,
                vocab_size: dec.codebook_size,
                num_latent_tokens: vq.num_latent_tokens,
                token_size: vq.token_size,
            },
            masking: MaskingConfig {
                schedule: cfg.training.mask_schedule,
                power: cfg.training.mask_power,
                min_ratio: cfg.training.min_mask_ratio,
                max_ratio: cfg.training.max_mask_ratio,
                replace_prob: dec.replace_prob,
                finetune_decoder: vq.finetune_decoder,
            },
            sampling: SamplingConfig {
                num_steps: g.num_steps,
                randomize_temperature: g.randomize_temperature,
                softmax_temperature_annealing: g.softmax_temperature_annealing,
            },
            pixel_decoder: vq.finetune_decoder.then(|| VqganConfig::from(&cfg.model.pixel_decoder)),
        })
    }
}

#[derive(Debug)]
pub struct SFTok {
    pub encoder: TiTokEncoder,
    pub latent_tokens: Tensor,
    pub quantize: OptVq,
    pub decoder: MultiStepDecoder,
    pub pixel_quantize: Option<VectorQuantizer>,
    pub pixel_decoder: Option<vqgan::Decoder>,
    pub cfg: SFTokConfig,
}

/// Output of a training-style forward pass.
#[derive(Debug)]
pub struct ForwardOutput {
    /// [B, L, V]
    pub logits: Tensor,
    /// [B, L] bool, true = [MASK]
    pub masks: Tensor,
    /// [B, L] decoder input ids
    pub ids: Tensor,
    pub quant: QuantizerOutput,
    /// Stage 3: the soft-path reconstruction [B, 3, H, W], not clamped.
    pub decoded_img: Option<Tensor>,
}

/// Output of `decode_tokens`.
#[derive(Debug)]
pub struct DecodeOutput {
    pub generated: GenerateOutput,
    /// Stage 3: soft-path image from the last-step logits (not clamped). Stage 1/2 models return
    /// None: their ids are decoded by the teacher.
    pub image: Option<Tensor>,
}

impl SFTok {
    /// Builds the network under `root` with the reference's parameter paths.
    pub fn new(root: &nn::Path, cfg: &SFTokConfig) -> SFTok {
        let encoder = TiTokEncoder::new(root / "encoder", &cfg.encoder);
        let decoder = MultiStepDecoder::new(root / "decoder", &cfg.decoder);
        let scale = (cfg.encoder.width as f64).powf(-0.5);
        let latent_tokens = root.var(
            "latent_tokens",
            &[cfg.encoder.num_latent_tokens, cfg.encoder.width],
            nn::Init::Randn { mean: 0.0, stdev: scale },
        );
        let quantize = OptVq::new(root / "quantize", &cfg.quantizer);
        let (pixel_quantize, pixel_decoder) = match &cfg.pixel_decoder {
            Some(p) => (Some(VectorQuantizer::new(root / "pixel_quantize", p)), Some(vqgan::Decoder::new(root / "pixel_decoder", p))),
            None => (None, None),
        };
        SFTok { encoder, latent_tokens, quantize, decoder, pixel_quantize, pixel_decoder, cfg: cfg.clone() }
    }

    /// The reference's initialisation for training from scratch (§8): Linear/Conv weights and the
    /// code embedding N(0, 0.02) (trunc-normal with ±2 bounds is effectively untruncated), biases
    /// 0, LayerNorms 1/0; raw embeddings keep their W^-½·N(0,1); `in_proj_weight` Xavier-uniform;
    /// the quantizer (uniform ±1/K codebook, identity shared linear) is created after this init.
    pub fn reference_init(vs: &nn::VarStore) {
        // Sorted: `variables()` is a HashMap, and the draws must not depend on its iteration order.
        let vars: std::collections::BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        tch::no_grad(|| {
            for (name, mut t) in vars {
                let in_scope = name.starts_with("encoder.") || name.starts_with("decoder.");
                if !in_scope || name.ends_with("in_proj_weight") || name.ends_with("in_proj_bias") {
                    continue;
                }
                let is_ln = name.contains(".ln_");
                if name.ends_with(".bias") {
                    let _ = t.zero_();
                } else if is_ln && name.ends_with(".weight") {
                    let _ = t.fill_(1.0);
                } else if name.ends_with(".weight") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, t.device())) * 0.02));
                }
            }
        });
    }

    /// x [B, 3, H, W] in [0, 1] → (z_q_ste [B, D, 1, N], quantizer output).
    pub fn encode(&self, x: &Tensor) -> (Tensor, QuantizerOutput) {
        let z = self.encoder.forward(x, &self.latent_tokens);
        // The reference disables autocast inside the quantizer: it always runs in float32.
        crate::autocast::float32(|| self.quantize.forward(&z))
    }

    /// Training-style forward: encode, mask, decode; stage 3 also decodes pixels.
    pub fn forward(&self, x: &Tensor, proxy_codes: &Tensor, mode: &DecoderInput) -> ForwardOutput {
        let (z_q, quant) = self.encode(x);
        self.decode_from(z_q, quant, proxy_codes, mode)
    }

    /// The forward after the encode: mask, decode; stage 3 also decodes pixels.
    fn decode_from(&self, z_q: Tensor, quant: QuantizerOutput, proxy_codes: &Tensor, mode: &DecoderInput) -> ForwardOutput {
        let (logits, masks, ids) = self.decoder.forward(proxy_codes, &z_q, mode, &self.cfg.masking);
        let decoded_img = self.pixel_decoder.as_ref().map(|_| self.soft_decode(&logits));
        ForwardOutput { logits, masks, ids, quant, decoded_img }
    }

    /// Self-forcing guidance: a second encode and an all-masked decoder pass, no gradient →
    /// logits [B, L, V] of the first-step prediction.
    pub fn generate_guided_mask(&self, x: &Tensor, proxy_codes: &Tensor) -> Tensor {
        let (z_q, _) = tch::no_grad(|| self.encode(x));
        self.guidance_logits(&z_q, proxy_codes)
    }

    /// The all-masked decoder pass of the guidance on a given z_q, without gradient.
    fn guidance_logits(&self, z_q: &Tensor, proxy_codes: &Tensor) -> Tensor {
        tch::no_grad(|| self.decoder.forward(proxy_codes, &z_q.detach(), &DecoderInput::MaskAll, &self.cfg.masking).0)
    }

    /// Stages 2 and 3's step (§7.4): the float32 guidance pass, then the training forward with
    /// the guidance's argmax at the visible positions. The reference encodes twice, once inside
    /// `generate_guided_mask`; with the same weights and input the two encodes are the same
    /// numbers in float32 (no dropout, no random draw), so here the guidance decodes the training
    /// encode's z_q, detached: one encoder forward fewer per step (~1/8 of a stage-2 step). Under
    /// autocast the training encode is in bf16/fp16 and the reference's guidance in float32, so
    /// there the float32 second encode is kept.
    pub fn forward_self_forcing(&self, x: &Tensor, proxy_codes: &Tensor) -> ForwardOutput {
        if crate::autocast::is_enabled(x.device()) {
            let guided = crate::autocast::float32(|| self.generate_guided_mask(x, proxy_codes));
            return self.forward(x, proxy_codes, &DecoderInput::Random(Some(&guided)));
        }
        self.forward_self_forcing_one_encode(x, proxy_codes)
    }

    /// [`SFTok::forward_self_forcing`]'s float32 path: one encode, its z_q reused by the guidance.
    pub fn forward_self_forcing_one_encode(&self, x: &Tensor, proxy_codes: &Tensor) -> ForwardOutput {
        let (z_q, quant) = self.encode(x);
        let guided = self.guidance_logits(&z_q, proxy_codes);
        self.decode_from(z_q, quant, proxy_codes, &DecoderInput::Random(Some(&guided)))
    }

    /// Soft-code path (§9): softmax over the V codes of every cell, weighted sum of the pixel
    /// codebook → [B, C, g, g]. Only for `finetune_decoder` models.
    pub fn soft_embedding(&self, logits: &Tensor) -> Tensor {
        let pq = self.pixel_quantize.as_ref().expect("soft path needs finetune_decoder = True");
        let (b, l, v) = logits.size3().expect("[B, L, V]");
        let g = (l as f64).sqrt() as i64;
        let p = logits.transpose(1, 2).reshape([b, v, g, g]).softmax(1, Kind::Float);
        Tensor::einsum("nchw,cd->ndhw", &[p, pq.embedding.shallow_clone()], None::<i64>)
    }

    /// Soft embedding → pixel decoder → image [B, 3, H, W] (not clamped).
    pub fn soft_decode(&self, logits: &Tensor) -> Tensor {
        let dec = self.pixel_decoder.as_ref().expect("soft path needs finetune_decoder = True");
        dec.forward(&self.soft_embedding(logits))
    }

    /// Tokens [B, 1, N] or [B, N] → exact code vectors as the decoder condition [B, D, 1, N].
    pub fn condition_from_tokens(&self, tokens: &Tensor) -> Tensor {
        let b = tokens.size()[0];
        let n = self.cfg.encoder.num_latent_tokens;
        let d = self.cfg.quantizer.token_size;
        self.quantize.get_codebook_entry(&tokens.reshape([b, n])).reshape([b, 1, n, d]).permute([0, 3, 1, 2])
    }

    /// `decode_tokens`: iterative decoding with `model.generator` settings; stage-3 models also
    /// return the soft-path image of the last step's logits.
    pub fn decode_tokens(&self, tokens: &Tensor) -> DecodeOutput {
        tch::no_grad(|| {
            let condition = self.condition_from_tokens(tokens);
            let generated = self.decoder.generate(&condition, &self.cfg.sampling);
            let image = self.pixel_decoder.as_ref().map(|_| self.soft_decode(&generated.last_logits));
            DecodeOutput { generated, image }
        })
    }
}

/// Legacy key names accepted when loading (spec §6, §11.3).
pub const KEY_ALIASES: &[(&str, &str)] = &[("decoder.embedding_positional_embedding", "decoder.learnable_embedding_positional_embedding")];

/// A model with its weights and the config it was built from.
pub struct LoadedSFTok {
    pub vs: nn::VarStore,
    pub model: SFTok,
    pub config: Config,
}

/// Where a checkpoint's config comes from: `--config` if given, else `config.json` in a Hugging
/// Face-style directory or next to the weights file.
pub fn resolve_config(checkpoint: &std::path::Path, explicit: Option<&std::path::Path>, overrides: &[String]) -> Result<Config> {
    if let Some(c) = explicit {
        return Config::load(c, overrides);
    }
    let dir = if checkpoint.is_dir() { checkpoint.to_path_buf() } else { checkpoint.parent().unwrap_or(std::path::Path::new(".")).to_path_buf() };
    let json = dir.join("config.json");
    if json.is_file() {
        return Config::load(&json, overrides);
    }
    bail!(
        "no config for checkpoint {}: pass --config configs/<model>.yaml (e.g. configs/sftok_b64_stage3.yaml for the released SFTok-B) or put its config.json next to it",
        checkpoint.display()
    )
}

impl LoadedSFTok {
    /// Builds the model from `config` and loads `checkpoint` strictly (any supported format).
    pub fn load(checkpoint: &std::path::Path, config: Config, device: tch::Device) -> Result<LoadedSFTok> {
        use anyhow::Context;
        let scfg = SFTokConfig::from_config(&config)?;
        let vs = nn::VarStore::new(device);
        let model = SFTok::new(&vs.root(), &scfg);
        let mut sd = crate::checkpoint::read(checkpoint)?;
        sd.apply_aliases(KEY_ALIASES);
        crate::checkpoint::load_into(&vs, &sd, true)
            .with_context(|| format!("loading {} into the model of its config (model.vq_model.finetune_decoder = {}, decoder size {:?})",
                checkpoint.display(), config.model.vq_model.finetune_decoder, config.model.decoder.vit_dec_model_size))?;
        crate::conv_layout::prefer_channels_last(&vs, "pixel_decoder.")?;
        Ok(LoadedSFTok { vs, model, config })
    }

    /// `sftok-train init`: a model of `config` with the reference's initialisation from `seed`,
    /// saved as [`LoadedSFTok::save_dir`] does; returns the number of parameters.
    pub fn write_initialised(config: &Config, seed: i64, dir: &std::path::Path) -> Result<i64> {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _model = SFTok::new(&vs.root(), &SFTokConfig::from_config(config)?);
        SFTok::reference_init(&vs);
        Self::save_dir(&vs, config, dir)?;
        Ok(vs.trainable_variables().iter().map(|t| t.numel() as i64).sum())
    }

    /// Saves `model.safetensors` + `config.json` (the full config, reference layout) in `dir`, the
    /// layout `PyTorchModelHubMixin` uses, so the Python reference loads it strictly.
    pub fn save_dir(vs: &nn::VarStore, config: &Config, dir: &std::path::Path) -> Result<()> {
        crate::checkpoint::save_weights_dir(vs.variables(), config, dir)
    }
}
