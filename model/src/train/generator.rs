//! `sftok-train generator` (../shared/spec/generator-maskgit.md §4–§5): the class-conditional
//! MaskGIT generator (ImageBert) learns to predict a frozen SFTok tokenizer's 64 tokens per image.
//!
//! Targets: stored tokens (`dataset.params.pretokenization`, from `sftok-prep tokenize`; the
//! loader joins them to the shards like proxy codes and cuts the pixels of the chosen stored view)
//! or, like the reference, the tokenizer's encoder on every micro-batch (`--tokenizer`). Either
//! way OptVQ's Sinkhorn assignment is batch-wide, so ids depend on the batch they were encoded in
//! (`sftok-prep tokenize` documents its grouping).
//!
//! Loss (§4.3): arccos masking, cross-entropy with label smoothing over all positions, weight 1 on
//! masked and `loss_weight_unmasked_token` on visible ones; label dropout `class_label_dropout`.
//! Optimiser, schedule, clipping, EMA and checkpoints are the generic loop's (§4.4–4.6).
//! Previews (`experiment.generate_every`) are class-conditional sample grids with the EMA weights,
//! one row per class, decoded by the tokenizer (a stage-3 model, or a teacher for stage 1–2 ones).

use super::optim::trainable_param_groups;
use super::plot::Panel;
use super::task::{Metrics, ParamGroup, Preview, StepContext, StepOutput, Task};
use crate::config::Config;
use crate::eval::sample::{TokenDecoder, rgb_images, to_uint8_nhwc};
use crate::image_bert::{self, ImageBert, ImageBertConfig};
use crate::losses::{masked_token_accuracy, token_ce, weighted_mean};
use crate::maskgit_sampler::{GeneratorSampling, generate};
use anyhow::{Context, Result, bail};
use sftok_pipeline::batch::Batch;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

pub const NAME: &str = "generator";

/// Preview grid: at most this many classes (rows) and samples per class (columns).
const PREVIEW_CLASSES: i64 = 8;
const PREVIEW_PER_CLASS: i64 = 4;

pub struct GeneratorOptions {
    pub config: Config,
    pub device: Device,
    /// The frozen tokenizer: targets on the fly (when no stored tokens) and preview decoding.
    pub tokenizer: Option<TokenDecoder>,
    /// Generator weights to start from (`experiment.init_weight` when None).
    pub init: Option<PathBuf>,
}

pub struct GeneratorTask {
    cfg: Config,
    vs: nn::VarStore,
    model: ImageBert,
    tokenizer: Option<TokenDecoder>,
    init: Option<PathBuf>,
}

/// Refuses configs that are not generator configs, naming the key.
pub fn check_config(cfg: &Config) -> Result<()> {
    let g = &cfg.model.img_generator;
    ImageBertConfig::from_config(cfg)?;
    GeneratorSampling::from_config(g)?;
    if !(0.0..=1.0).contains(&g.class_label_dropout) {
        bail!("model.img_generator.class_label_dropout = {}: a probability in [0, 1]", g.class_label_dropout);
    }
    if !cfg.dataset.params.train_proxy_codes_path.is_empty() {
        bail!("dataset.params.train_proxy_codes_path is for tokenizer stages 1–2; the generator's stored targets go in dataset.params.pretokenization (sftok-prep tokenize)");
    }
    Ok(())
}

impl GeneratorTask {
    pub fn new(o: GeneratorOptions) -> Result<GeneratorTask> {
        let cfg = o.config;
        check_config(&cfg)?;
        let mc = ImageBertConfig::from_config(&cfg)?;
        if let Some(t) = &o.tokenizer {
            t.check_pairs_with(&mc)?;
        }
        if cfg.dataset.params.pretokenization.is_empty() && o.tokenizer.is_none() {
            bail!(
                "no targets: set dataset.params.pretokenization=tokens/train (from `sftok-prep tokenize`), \
                 or pass --tokenizer SFTOK_CHECKPOINT to tokenize every batch on the fly (the reference's way)"
            );
        }
        // Seeded: construction draws the initial weights.
        tch::manual_seed(cfg.training.seed as i64);
        let vs = nn::VarStore::new(o.device);
        let model = ImageBert::new(&vs.root(), &mc);
        let init = o.init.or_else(|| cfg.experiment.init_weight_path());
        Ok(GeneratorTask { cfg, vs, model, tokenizer: o.tokenizer, init })
    }

    /// The generator being trained (tests).
    pub fn model(&self) -> &ImageBert {
        &self.model
    }

    /// The 64 target ids per image [B, N] of a batch: its stored tokens, else the tokenizer's
    /// encoding of the batch's pixels (one encoder call for the whole micro-batch, float32).
    pub fn targets(&self, batch: &Batch, device: Device) -> Result<Tensor> {
        let n = self.model.cfg.seq_len;
        if let Some(ids) = crate::handoff::codes(batch, device) {
            if ids.size()[1] != n {
                bail!("the stored tokens have {} ids per image, model.img_generator.image_seq_len is {n}", ids.size()[1]);
            }
            return Ok(ids);
        }
        let Some(t) = &self.tokenizer else {
            bail!("the batch has no stored tokens: set dataset.params.pretokenization or pass --tokenizer");
        };
        Ok(t.tokenize(&crate::handoff::images(batch, device)))
    }

    fn labels(&self, batch: &Batch, device: Device) -> Result<Tensor> {
        let c = self.model.cfg.num_classes;
        if let Some(i) = batch.labels.iter().position(|&l| l < 0 || l >= c) {
            bail!(
                "sample {} has class {}, outside model.img_generator.condition_num_classes = {c}: set condition_num_classes to the dataset's class count",
                batch.keys.get(i).map_or("?", String::as_str),
                batch.labels[i]
            );
        }
        Ok(Tensor::from_slice(&batch.labels).to_device(device))
    }
}

impl Task for GeneratorTask {
    fn name(&self) -> &'static str {
        NAME
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        trainable_param_groups(&self.vs, self.cfg.optimizer.params.weight_decay)
    }

    fn init_fresh(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        if let Some(init) = &self.init {
            let sd = crate::checkpoint::read(init).context("experiment.init_weight / --init")?;
            image_bert::load_state_dict(&self.vs, sd).with_context(|| format!("initialising the generator from {}", init.display()))?;
            log(&format!("initialised from {}", init.display()));
        }
        Ok(())
    }

    fn step(&mut self, batch: &Batch, ctx: &StepContext) -> Result<StepOutput> {
        let tokens = self.targets(batch, ctx.device)?;
        let labels = self.labels(batch, ctx.device)?;
        let (masked, masks) = self.model.masking_input_tokens(&tokens);
        let g = &self.cfg.model.img_generator;
        let logits = ctx.autocast(|| self.model.forward(&masked, &labels, g.class_label_dropout, true).0).to_kind(Kind::Float);
        let l = &self.cfg.losses;
        let ce = token_ce(&logits, &tokens, l.label_smoothing);
        let loss = weighted_mean(&ce, &masks, l.loss_weight_unmasked_token);
        let scalar = |t: &Tensor| t.to_kind(Kind::Double).double_value(&[]);
        // The masked positions alone (same smoothing): what the learning bound of the tests refers to.
        let masked_only = tch::no_grad(|| weighted_mean(&ce.detach(), &masks, 0.0));
        let metrics = Metrics::from([
            ("train/loss".into(), scalar(&loss)),
            ("train/masked_loss".into(), scalar(&masked_only)),
            ("train/correct_tokens".into(), scalar(&masked_token_accuracy(&logits, &tokens, &masks))),
        ]);
        Ok(StepOutput { loss, metrics })
    }

    /// Class-conditional samples with the preview settings of §5 (the config's sampling keys;
    /// `softmax_temperature_annealing` is False there), the same seed at every preview.
    fn preview(&mut self, _n: usize) -> Result<Preview> {
        let Some(tok) = &self.tokenizer else {
            return Ok(Preview::Unavailable("no --tokenizer: generated tokens need the tokenizer's decoder to become images".into()));
        };
        let device = self.vs.device();
        let classes = self.model.cfg.num_classes.min(PREVIEW_CLASSES);
        let labels = Tensor::arange(classes, (Kind::Int64, device)).repeat_interleave_self_int(PREVIEW_PER_CLASS, None, None);
        let settings = GeneratorSampling::from_config(&self.cfg.model.img_generator)?;
        tch::manual_seed(self.cfg.training.seed as i64);
        let ids = generate(&self.model, &labels, &settings).ids;
        let images = rgb_images(&to_uint8_nhwc(&tok.decode(&ids)?))?;
        let rows: Vec<Vec<&sftok_pipeline::transform::RgbImage>> = images.chunks(PREVIEW_PER_CLASS as usize).map(|r| r.iter().collect()).collect();
        Ok(Preview::Image(sftok_pipeline::transform::grid(&rows, 2)))
    }

    fn preview_tag(&self) -> &'static str {
        "Train Generated"
    }

    fn console_summary(&self, m: &Metrics) -> String {
        format!("loss {:.4} | acc {:.3}", m["train/loss"], m["train/correct_tokens"])
    }

    fn metric_panels(&self) -> Vec<Panel> {
        vec![
            Panel::new("MLM loss (label smoothing, unmasked weight) / masked positions only", &["train/loss", "train/masked_loss"]),
            Panel::new("masked-token accuracy", &["train/correct_tokens"]),
        ]
    }

    fn save_weights(&self, tensors: Vec<(String, Tensor)>, dir: &Path) -> Result<()> {
        crate::checkpoint::save_weights_dir(tensors, &self.cfg, dir)
    }
}
