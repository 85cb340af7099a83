//! The configuration schema: one struct per YAML section of [`Config`], the reference's key
//! names. Each default is stated once, in the section's `Default` impl (serialised, the
//! defaults are also the list of valid keys that `engine` checks against).
//!
//! [`Config`]: super::Config

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub project: String,
    pub name: String,
    pub output_dir: String,
    pub max_train_examples: u64,
    pub save_every: u64,
    pub eval_every: u64,
    pub generate_every: u64,
    pub log_every: u64,
    pub log_grad_norm_every: u64,
    /// Resume from the newest `output_dir/checkpoint-*` when present.
    pub resume: bool,
    /// Weights to start from (stage 2: stage-1 EMA weights; stage 3: stage-2 EMA weights).
    pub init_weight: String,
    /// Generator training / sampling: the SFTok tokenizer weights.
    pub tokenizer_checkpoint: String,
    /// Generator sampling: the generator weights.
    pub generator_checkpoint: String,
    /// How many `checkpoint-*` directories to keep (0 = all). Not in the reference, which keeps all.
    pub keep_last_checkpoints: u64,
}

impl Experiment {
    /// `init_weight` as a path (None when empty): where a fresh run starts unless `--init` says otherwise.
    pub fn init_weight_path(&self) -> Option<std::path::PathBuf> {
        (!self.init_weight.is_empty()).then(|| std::path::PathBuf::from(&self.init_weight))
    }
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            project: "sftok".into(),
            name: "sftok_run".into(),
            output_dir: "outputs/sftok_run".into(),
            max_train_examples: 1_281_167,
            save_every: 25_000,
            eval_every: 50_000,
            generate_every: 5_000,
            log_every: 50,
            log_grad_norm_every: 1_000,
            resume: true,
            init_weight: String::new(),
            tokenizer_checkpoint: String::new(),
            generator_checkpoint: String::new(),
            keep_last_checkpoints: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Model {
    /// "sftok" (the only tokenizer implemented).
    pub model_type: String,
    pub vq_model: VqModel,
    pub decoder: DecoderConfig,
    /// Iterative decoding of the tokenizer (`SFTok.generate_codes`). Absent from the reference's
    /// configs although its code reads it (spec gap 2); defaults are the intended values.
    pub generator: SamplingConfig,
    /// The class-conditional MaskGIT generator (`ImageBert`).
    pub img_generator: ImgGenerator,
    /// Extra transformer sizes by name (tiny test models); `small`, `base`, `large` are built in.
    pub size_tables: BTreeMap<String, TransformerSize>,
    /// Stage 3 / released models: the MaskGIT-VQGAN `pixel_quantize` + `pixel_decoder` (the
    /// reference hard-codes MaskGIT's sizes; a key here so tiny models can shrink it). The teacher
    /// whose decoder initialises it (§8) must have the same sizes.
    pub pixel_decoder: PixelDecoder,
}

/// Sizes of the MaskGIT-VQGAN decoder and codebook (../shared/spec/teacher-maskgit-vqgan.md);
/// the defaults are MaskGIT's (`maskgit-vqgan-imagenet-f16-256.bin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PixelDecoder {
    pub channel_mult: Vec<i64>,
    pub hidden_channels: i64,
    pub num_res_blocks: i64,
    pub z_channels: i64,
    pub num_channels: i64,
    /// Codebook entries (`pixel_quantize.embedding.weight` rows): the decoder's vocabulary.
    pub num_embeddings: i64,
}

impl Default for PixelDecoder {
    fn default() -> Self {
        PixelDecoder { channel_mult: vec![1, 1, 2, 2, 4], hidden_channels: 128, num_res_blocks: 2, z_channels: 256, num_channels: 3, num_embeddings: 1024 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSize {
    pub width: i64,
    pub num_layers: i64,
    pub num_heads: i64,
}

impl Model {
    /// Width / layers / heads of a size name: the reference's table plus `model.size_tables`.
    pub fn transformer_size(&self, name: &str) -> Result<TransformerSize> {
        if let Some(s) = self.size_tables.get(name) {
            return Ok(*s);
        }
        match name {
            "small" => Ok(TransformerSize { width: 512, num_layers: 8, num_heads: 8 }),
            "base" => Ok(TransformerSize { width: 768, num_layers: 12, num_heads: 12 }),
            "large" => Ok(TransformerSize { width: 1024, num_layers: 24, num_heads: 16 }),
            _ => bail!("model size {name:?} is not small, base, large or a name under model.size_tables"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VqModel {
    pub codebook_size: i64,
    pub token_size: i64,
    pub use_l2_norm: bool,
    pub commitment_cost: f64,
    pub vit_enc_model_size: String,
    pub vit_enc_patch_size: i64,
    /// TiTok configs put the decoder size here; SFTok reads `model.decoder.vit_dec_model_size`.
    pub vit_dec_model_size: String,
    pub vit_dec_patch_size: i64,
    pub num_latent_tokens: i64,
    pub num_group: i64,
    /// Stage 3: soft codes → pixel decoder; encoder and quantizer frozen.
    pub finetune_decoder: bool,
    /// Inert (the "dinov2" branch is dead code in the reference).
    pub semantic_guide: Option<String>,
    pub quantize_mode: String,
    pub is_legacy: bool,
    /// The MaskGIT-VQGAN teacher checkpoint (proxy codes; stage-3 pixel decoder init).
    pub pretrained_tokenizer_weight: String,
}

impl Default for VqModel {
    fn default() -> Self {
        VqModel {
            codebook_size: 8192,
            token_size: 32,
            use_l2_norm: true,
            commitment_cost: 0.25,
            vit_enc_model_size: "base".into(),
            vit_enc_patch_size: 16,
            vit_dec_model_size: "base".into(),
            vit_dec_patch_size: 16,
            num_latent_tokens: 64,
            num_group: 1,
            finetune_decoder: false,
            semantic_guide: None,
            quantize_mode: "vq".into(),
            is_legacy: true,
            pretrained_tokenizer_weight: "maskgit-vqgan-imagenet-f16-256.bin".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderConfig {
    pub vit_dec_model_size: String,
    pub vit_dec_patch_size: i64,
    pub num_latent_tokens: i64,
    pub token_size: i64,
    pub num_proxy_codes: i64,
    /// Teacher vocabulary (mask id = codebook_size).
    pub codebook_size: i64,
    pub is_legacy: bool,
    /// Probability that a visible position takes the self-forcing prediction (stage 2).
    pub replace_prob: f64,
    /// Inert in the reference (the decoder always uses its own width).
    pub embedding_width: Option<i64>,
    /// Inert in the reference (the True branch loads from a placeholder path).
    pub embedding_init: bool,
    /// Inert: the decoder reads `model.vq_model.finetune_decoder`.
    pub finetune_decoder: Option<bool>,
    /// Inert.
    pub semantic_guide: Option<String>,
    /// The reference lists the sampling values here too; `model.generator` is what is used.
    pub randomize_temperature: f64,
    pub guidance_scale: f64,
    pub guidance_decay: String,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            vit_dec_model_size: "base".into(),
            vit_dec_patch_size: 16,
            num_latent_tokens: 64,
            token_size: 32,
            num_proxy_codes: 256,
            codebook_size: 1024,
            is_legacy: true,
            replace_prob: 1.0,
            embedding_width: None,
            embedding_init: false,
            finetune_decoder: None,
            semantic_guide: None,
            randomize_temperature: 1.0,
            guidance_scale: 0.0,
            guidance_decay: "constant".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Inert: the decoder ignores class dropout.
    pub class_label_dropout: f64,
    pub guidance_scale: f64,
    pub guidance_decay: String,
    pub guidance_scale_pow: f64,
    pub randomize_temperature: f64,
    pub softmax_temperature_annealing: bool,
    pub num_steps: i64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            class_label_dropout: 0.1,
            guidance_scale: 0.0,
            guidance_decay: "constant".into(),
            guidance_scale_pow: 3.0,
            randomize_temperature: 1.0,
            softmax_temperature_annealing: false,
            num_steps: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImgGenerator {
    pub model_type: String,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub dropout: f64,
    pub attn_drop: f64,
    pub num_steps: i64,
    pub class_label_dropout: f64,
    pub image_seq_len: i64,
    pub condition_num_classes: i64,
    pub randomize_temperature: f64,
    pub guidance_scale: f64,
    pub guidance_decay: String,
    /// Exponent of the `power-cosine` guidance schedule (§6.1).
    pub guidance_scale_pow: f64,
    /// Divide the logits by `0.5 + 0.8·(1 − r)` while sampling. The reference's config default
    /// (False) is what training previews use; `sftok-eval sample` defaults to True, TiTok's
    /// sampling script (generator-maskgit.md §11).
    pub softmax_temperature_annealing: bool,
}

impl Default for ImgGenerator {
    fn default() -> Self {
        ImgGenerator {
            model_type: "ViT".into(),
            hidden_size: 768,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 3072,
            dropout: 0.1,
            attn_drop: 0.1,
            num_steps: 8,
            class_label_dropout: 0.1,
            image_seq_len: 64,
            condition_num_classes: 1000,
            randomize_temperature: 1.0,
            guidance_scale: 4.5,
            guidance_decay: "constant".into(),
            guidance_scale_pow: 3.0,
            softmax_temperature_annealing: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Losses {
    pub quantizer_weight: f64,
    pub label_smoothing: f64,
    pub loss_weight_unmasked_token: f64,
    // Stage 3 (pixel losses and GAN).
    pub discriminator_start: u64,
    pub discriminator_factor: f64,
    pub discriminator_weight: f64,
    /// "dinodisc" (reference) or "patchgan".
    pub discriminator_type: String,
    pub perceptual_loss: String,
    pub perceptual_weight: f64,
    pub reconstruction_loss: String,
    pub reconstruction_weight: f64,
    pub lecam_regularization_weight: f64,
    /// Reference quirk (spec gap 18): let the generator step leak gradients into the discriminator.
    pub reference_discriminator_grad_leak: bool,
}

impl Default for Losses {
    fn default() -> Self {
        Losses {
            quantizer_weight: 1.0,
            label_smoothing: 0.0,
            loss_weight_unmasked_token: 0.1,
            discriminator_start: 20_000,
            discriminator_factor: 1.0,
            discriminator_weight: 0.5,
            discriminator_type: "dinodisc".into(),
            perceptual_loss: "lpips".into(),
            perceptual_weight: 1.0,
            reconstruction_loss: "l2".into(),
            reconstruction_weight: 1.0,
            lecam_regularization_weight: 0.001,
            reference_discriminator_grad_leak: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Dataset {
    pub params: DatasetParams,
    pub preprocessing: Preprocessing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetParams {
    /// Shard directory, manifest or brace pattern (`train-{000000..001281}.tar`).
    pub train_shards_path_or_url: String,
    pub eval_shards_path_or_url: String,
    /// Precomputed proxy codes (`sftok-prep proxy-codes` output) for the train shards.
    pub train_proxy_codes_path: String,
    pub num_workers_per_gpu: u64,
    pub dataset_type: String,
    pub pretokenization: String,
    /// Samples in the training stream's shuffle buffer (the reference's webdataset shuffle: 5000);
    /// 0 reads every rank's shards in order.
    pub shuffle_buffer_size: u64,
}

impl Default for DatasetParams {
    fn default() -> Self {
        DatasetParams {
            train_shards_path_or_url: "shards/train".into(),
            eval_shards_path_or_url: "shards/val".into(),
            train_proxy_codes_path: String::new(),
            num_workers_per_gpu: 12,
            dataset_type: "simple_image_dataset".into(),
            pretokenization: String::new(),
            shuffle_buffer_size: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preprocessing {
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    pub random_crop: bool,
    pub random_flip: bool,
}

impl Default for Preprocessing {
    fn default() -> Self {
        Preprocessing { resize_shorter_edge: 256, crop_size: 256, random_crop: true, random_flip: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Optimizer {
    pub name: String,
    pub params: OptimizerParams,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerParams {
    pub learning_rate: f64,
    pub discriminator_learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
}

impl Default for OptimizerParams {
    fn default() -> Self {
        OptimizerParams {
            learning_rate: 1e-4,
            discriminator_learning_rate: 1e-4,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 1e-4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrScheduler {
    pub scheduler: String,
    pub params: LrSchedulerParams,
}

impl Default for LrScheduler {
    fn default() -> Self {
        LrScheduler { scheduler: "cosine".into(), params: LrSchedulerParams::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrSchedulerParams {
    pub learning_rate: f64,
    pub warmup_steps: u64,
    pub end_lr: f64,
}

impl Default for LrSchedulerParams {
    fn default() -> Self {
        LrSchedulerParams { learning_rate: 1e-4, warmup_steps: 10_000, end_lr: 1e-5 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    No,
    Fp16,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskSchedule {
    Arccos,
    Linear,
    Quadratic,
    Cubic,
    Exponential,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    pub gradient_accumulation_steps: u64,
    pub per_gpu_batch_size: u64,
    pub mixed_precision: MixedPrecision,
    pub enable_tf32: bool,
    /// Inert here (no wandb); TensorBoard and JSONL are always written.
    pub enable_wandb: bool,
    pub use_ema: bool,
    pub seed: u64,
    pub max_train_steps: u64,
    pub num_generated_images: u64,
    pub max_grad_norm: f64,
    /// Stage 1: every proxy slot masked.
    pub single_step_generation: bool,
    /// Stages 2–3: self-forcing (visible tokens from a first all-masked pass).
    pub guided_mask: bool,
    pub mask_schedule: MaskSchedule,
    pub mask_power: f64,
    pub min_mask_ratio: f64,
    pub max_mask_ratio: f64,
    pub use_mlmloss: bool,
    /// Inert in the reference's training loop.
    pub use_soft_proxycodes: bool,
    /// Inert in the reference's training loop.
    pub soft_proxycode_sigma: f64,
}

impl Default for Training {
    fn default() -> Self {
        Training {
            gradient_accumulation_steps: 1,
            per_gpu_batch_size: 32,
            mixed_precision: MixedPrecision::Fp16,
            enable_tf32: true,
            enable_wandb: false,
            use_ema: true,
            seed: 42,
            max_train_steps: 200_000,
            num_generated_images: 2,
            max_grad_norm: 1.0,
            single_step_generation: false,
            guided_mask: false,
            mask_schedule: MaskSchedule::Arccos,
            mask_power: 1.0,
            min_mask_ratio: 0.0,
            max_mask_ratio: 1.0,
            use_mlmloss: true,
            use_soft_proxycodes: false,
            soft_proxycode_sigma: 0.0,
        }
    }
}

/// Paths whose children are free-form names (maps), not fixed fields.
pub(super) const OPEN_MAPS: &[&str] = &["model.size_tables"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn size_tables_accept_new_names_and_builtins_match_the_reference() {
        let cfg = Config::from_yaml_str("model:\n  size_tables:\n    tiny: {width: 64, num_layers: 2, num_heads: 4}\n", &[]).unwrap();
        assert_eq!(cfg.model.transformer_size("tiny").unwrap().width, 64);
        assert_eq!(cfg.model.transformer_size("large").unwrap(), TransformerSize { width: 1024, num_layers: 24, num_heads: 16 });
        assert!(cfg.model.transformer_size("huge").is_err());
    }
}
