//! `ImageBert.generate` (../shared/spec/generator-maskgit.md §6): class-conditional MaskGIT
//! sampling of the N image tokens with classifier-free guidance, in the reference's order of
//! random draws (per step: the label-drop draw of each forward, then the pick noise, then the
//! confidence noise), so seeded runs give the reference's ids exactly.

use crate::config::ImgGenerator;
use crate::image_bert::ImageBert;
use anyhow::{Result, bail};
use tch::{Kind, Tensor};

/// `guidance_decay`: how the CFG scale evolves over the steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GuidanceDecay {
    /// `lc + g·(lc − lu)` at every step (w = g + 1 in the usual `lu + w·(lc − lu)` form).
    Constant,
    /// No guidance at step 0, then `cfg = g·s/S` (set after step s − 1).
    Linear,
    /// `lu + cfg·(lc − lu)`, `cfg = (g − 1)·(1 − cos(π·(s/S)^pow))/2 + 1`.
    PowerCosine,
}

impl GuidanceDecay {
    pub fn parse(s: &str) -> Result<GuidanceDecay> {
        Ok(match s {
            "constant" => GuidanceDecay::Constant,
            "linear" => GuidanceDecay::Linear,
            "power-cosine" => GuidanceDecay::PowerCosine,
            other => bail!("guidance_decay = {other:?}: expected \"constant\", \"linear\" or \"power-cosine\""),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GuidanceDecay::Constant => "constant",
            GuidanceDecay::Linear => "linear",
            GuidanceDecay::PowerCosine => "power-cosine",
        }
    }
}

/// The sampling settings of §6/§8, named after `model.img_generator`'s keys.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSampling {
    pub guidance_scale: f64,
    pub guidance_decay: GuidanceDecay,
    pub guidance_scale_pow: f64,
    /// Gumbel temperature at step 0, annealed linearly to 0.
    pub randomize_temperature: f64,
    /// Divide the logits by `0.5 + 0.8·(1 − r)`.
    pub softmax_temperature_annealing: bool,
    pub num_steps: i64,
}

impl GeneratorSampling {
    pub fn from_config(g: &ImgGenerator) -> Result<GeneratorSampling> {
        if g.num_steps < 1 {
            bail!("model.img_generator.num_steps = {}: at least one step", g.num_steps);
        }
        Ok(GeneratorSampling {
            guidance_scale: g.guidance_scale,
            guidance_decay: GuidanceDecay::parse(&g.guidance_decay).map_err(|e| anyhow::anyhow!("model.img_generator.{e}"))?,
            guidance_scale_pow: g.guidance_scale_pow,
            randomize_temperature: g.randomize_temperature,
            softmax_temperature_annealing: g.softmax_temperature_annealing,
            num_steps: g.num_steps,
        })
    }

    /// One line for logs and gFID reports.
    pub fn describe(&self) -> String {
        format!(
            "guidance_scale {} ({}, pow {}), randomize_temperature {}, softmax_temperature_annealing {}, num_steps {}",
            self.guidance_scale,
            self.guidance_decay.name(),
            self.guidance_scale_pow,
            self.randomize_temperature,
            self.softmax_temperature_annealing,
            self.num_steps
        )
    }
}

pub struct SampleOutput {
    /// [B, N] int64 image tokens.
    pub ids: Tensor,
    /// [S, B, N]: the input ids of every step.
    pub step_input_ids: Tensor,
    /// [B, N, K]: the last step's guided (and annealed) logits (diagnostic).
    pub last_logits: Tensor,
}

/// Samples N tokens for each class of `labels` [B] (eval mode, no gradient).
pub fn generate(model: &ImageBert, labels: &Tensor, s: &GeneratorSampling) -> SampleOutput {
    tch::no_grad(|| {
        let b = labels.size()[0];
        let (n, mask_id) = (model.cfg.seq_len, model.cfg.mask_id());
        let dev = labels.device();
        let steps = s.num_steps;
        let mut ids = Tensor::full([b, n], mask_id, (Kind::Int64, dev));
        let mut inputs = Vec::with_capacity(steps as usize);
        let mut last_logits = None;
        let g = s.guidance_scale;
        let mut cfg = if s.guidance_decay == GuidanceDecay::Constant { g } else { 0.0 };
        for step in 0..steps {
            let ratio = (step + 1) as f64 / steps as f64;
            let temp = s.randomize_temperature * (1.0 - ratio);
            inputs.push(ids.shallow_clone());
            let forward = |p: f64| model.forward(&ids, labels, p, false).0;
            let mut logits = if s.guidance_decay == GuidanceDecay::PowerCosine {
                // The reference computes this scale in float32 tensors.
                let pow = Tensor::full([1], s.guidance_scale_pow, (Kind::Float, dev));
                let t = Tensor::pow_scalar(step as f64 / steps as f64, &pow);
                let scale = (-(t * std::f64::consts::PI).cos() + 1.0) * 0.5 * (g - 1.0) + 1.0;
                let (lc, lu) = (forward(0.0), forward(1.0));
                &lu + (&lc - &lu) * scale
            } else if cfg != 0.0 {
                let (lc, lu) = (forward(0.0), forward(1.0));
                &lc + (&lc - &lu) * cfg
            } else {
                forward(0.0)
            };
            if s.softmax_temperature_annealing {
                logits /= 0.5 + 0.8 * (1.0 - ratio);
            }
            // The head is a Linear: the logits are contiguous [B, N, K], and so is the noise.
            let u1 = Tensor::zeros(logits.size(), (Kind::Float, dev)).uniform_(0.0, 1.0);
            ids = crate::maskgit_step::reveal(&logits, &u1, &ids, mask_id, step, steps, temp);
            if s.guidance_decay == GuidanceDecay::Linear {
                cfg = ratio * g;
            }
            last_logits = Some(logits);
        }
        SampleOutput { ids, step_input_ids: Tensor::stack(&inputs, 0), last_logits: last_logits.expect("num_steps ≥ 1") }
    })
}

/// Command-line replacements for the config's sampling settings (None keeps the config's).
#[derive(Clone, Debug, Default)]
pub struct SamplingOverrides {
    pub guidance_scale: Option<f64>,
    pub guidance_decay: Option<String>,
    pub guidance_scale_pow: Option<f64>,
    pub randomize_temperature: Option<f64>,
    pub softmax_temperature_annealing: Option<bool>,
    pub num_steps: Option<i64>,
}

impl SamplingOverrides {
    pub fn apply(&self, mut s: GeneratorSampling) -> Result<GeneratorSampling> {
        s.guidance_scale = self.guidance_scale.unwrap_or(s.guidance_scale);
        if let Some(d) = &self.guidance_decay {
            s.guidance_decay = GuidanceDecay::parse(d).map_err(|e| anyhow::anyhow!("--guidance-decay: {e}"))?;
        }
        s.guidance_scale_pow = self.guidance_scale_pow.unwrap_or(s.guidance_scale_pow);
        s.randomize_temperature = self.randomize_temperature.unwrap_or(s.randomize_temperature);
        s.softmax_temperature_annealing = self.softmax_temperature_annealing.unwrap_or(s.softmax_temperature_annealing);
        s.num_steps = self.num_steps.unwrap_or(s.num_steps);
        if s.num_steps < 1 {
            bail!("--num-steps {}: at least one step", s.num_steps);
        }
        Ok(s)
    }
}
