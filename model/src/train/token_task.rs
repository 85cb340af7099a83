//! The SFTok token-prediction task of stages 1 and 2 (../shared/spec/sftok-training.md §5–§6):
//! images → proxy codes (precomputed or the teacher on the fly) → SFTok forward → masked-token
//! cross-entropy + quantizer loss. What differs between the stages — the config they accept, the
//! decoder input of the main pass and the decoding steps of previews and evaluation — is a
//! [`TokenStage`] (`stage1.rs`, `stage2.rs`).

use super::optim::trainable_param_groups;
use super::plot::Panel;
use super::task::{Metrics, ParamGroup, Preview, StepContext, StepOutput, Task};
use crate::config::Config;
use crate::eval::recon_eval::{ReconEvalOptions, evaluate_reconstruction};
use crate::inception::FidInception;
use crate::losses::masked_token_ce;
use crate::sftok::{ForwardOutput, SFTok, SFTokConfig};
use crate::vqgan::MaskgitVqgan;
use anyhow::{Context, Result, bail};
use sftok_pipeline::batch::Batch;
use sftok_pipeline::transform::RgbImage;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// What makes a token-prediction stage.
pub trait TokenStage {
    const NAME: &'static str;
    /// Refuses a config written for another stage, naming the disagreeing key.
    fn check_config(cfg: &Config) -> Result<()>;
    /// The main pass on images `x` with proxy codes `codes`.
    fn forward(model: &SFTok, cfg: &Config, x: &Tensor, codes: &Tensor) -> ForwardOutput;
    /// Decoding steps of previews and evaluation (the stage's eval path, spec §2).
    fn decode_steps(cfg: &Config) -> i64;
}

/// `training.X` must be `want` for this stage.
pub fn require_flag(cfg_value: bool, want: bool, key: &str, stage: &str, why: &str) -> Result<()> {
    if cfg_value != want {
        let cap = |b: bool| if b { "True" } else { "False" };
        bail!(
            "{key} = {} in this config, but `sftok-train {stage}` {why}: set {key}={} or use the subcommand this config was written for",
            cap(cfg_value),
            cap(want)
        );
    }
    Ok(())
}

/// Keys whose non-default values would ask for something stages 1–2 do not do (here, and for
/// `use_soft_proxycodes` in the reference either): refused rather than silently ignored.
fn refuse_unimplemented(cfg: &Config) -> Result<()> {
    let t = &cfg.training;
    if !t.use_mlmloss {
        bail!("training.use_mlmloss = False: stages 1–2 train with the masked-token loss only (the reference's live path); set it True");
    }
    if t.use_soft_proxycodes {
        bail!("training.use_soft_proxycodes = True: soft proxy codes are inert in the reference's training loop and not implemented; set it False");
    }
    if !cfg.dataset.params.pretokenization.is_empty() {
        bail!("dataset.params.pretokenization is for generator training; stages 1–2 read images (and proxy codes): leave it empty");
    }
    Ok(())
}

/// Periodic evaluation on the val shards (`experiment.eval_every`).
pub struct EvalSetup {
    /// `dataset.params.eval_shards_path_or_url`.
    pub shards: String,
    /// FID Inception (`--fid-weights`): adds rFID and IS.
    pub inception: Option<FidInception>,
    pub batch: usize,
    /// At most this many val images (all when None, as the reference).
    pub max_images: Option<usize>,
}

pub struct TokenTaskOptions {
    pub config: Config,
    pub device: Device,
    /// Weights to start from (stage 2: stage 1's EMA weights); overrides `experiment.init_weight`.
    pub init: Option<PathBuf>,
    /// Teacher for on-the-fly proxy codes and for decoding previews and evaluation.
    pub teacher: Option<(nn::VarStore, MaskgitVqgan)>,
    pub eval: Option<EvalSetup>,
}

pub struct TokenTask<S: TokenStage> {
    cfg: Config,
    vs: nn::VarStore,
    model: SFTok,
    init: Option<PathBuf>,
    teacher: Option<(nn::VarStore, MaskgitVqgan)>,
    eval: Option<EvalSetup>,
    /// The last micro-batch's images, for previews.
    last_images: Option<Tensor>,
    stage: PhantomData<S>,
}

impl<S: TokenStage> TokenTask<S> {
    pub fn new(o: TokenTaskOptions) -> Result<Self> {
        let cfg = o.config;
        S::check_config(&cfg)?;
        if cfg.model.vq_model.finetune_decoder {
            bail!("model.vq_model.finetune_decoder = True is stage 3; `sftok-train {}` trains with it False", S::NAME);
        }
        refuse_unimplemented(&cfg)?;
        if cfg.experiment.eval_every > 0 && o.teacher.is_none() {
            bail!(
                "experiment.eval_every = {} needs --teacher: stage-1/2 reconstructions are decoded by the teacher's decoder. \
                 Pass --teacher maskgit-vqgan-imagenet-f16-256.bin or set experiment.eval_every=0",
                cfg.experiment.eval_every
            );
        }
        // Seeded: construction draws the raw embeddings and the quantizer.
        tch::manual_seed(cfg.training.seed as i64);
        let vs = nn::VarStore::new(o.device);
        let mut model = SFTok::new(&vs.root(), &SFTokConfig::from_config(&cfg)?);
        // Only previews and evaluation decode tokens; the training forward never reads this.
        model.cfg.sampling.num_steps = S::decode_steps(&cfg);
        let init = o.init.or_else(|| cfg.experiment.init_weight_path());
        Ok(TokenTask { cfg, vs, model, init, teacher: o.teacher, eval: o.eval, last_images: None, stage: PhantomData })
    }

    fn teacher(&self) -> Option<&MaskgitVqgan> {
        self.teacher.as_ref().map(|t| &t.1)
    }

    fn proxy_codes(&self, batch: &Batch, x: &Tensor, device: Device) -> Result<Tensor> {
        if let Some(c) = crate::handoff::codes(batch, device) {
            return Ok(c);
        }
        match self.teacher() {
            Some(t) => Ok(t.encode(x)),
            None => bail!(
                "the batch has no proxy codes: set dataset.params.train_proxy_codes_path (sftok-prep proxy-codes output) \
                 or pass --teacher to compute them on the fly"
            ),
        }
    }

    /// Loss of one micro-batch (§7.1 + §7.2) and its metrics.
    fn loss(&self, x: &Tensor, codes: &Tensor) -> (Tensor, Metrics) {
        let out = S::forward(&self.model, &self.cfg, x, codes);
        let l = &self.cfg.losses;
        let rec = masked_token_ce(&out.logits, codes, &out.masks, l.label_smoothing, l.loss_weight_unmasked_token);
        let total = &rec + &out.quant.quantizer_loss * l.quantizer_weight;
        let metrics = tch::no_grad(|| {
            let pred = out.logits.argmax(-1, false);
            let masked = out.masks.to_kind(Kind::Float);
            let correct = pred.eq_tensor(codes).to_kind(Kind::Float);
            let acc = (&correct * &masked).sum(Kind::Float) / masked.sum(Kind::Float).clamp_min(1.0);
            let idx = out.quant.min_encoding_indices.flatten(0, -1);
            let hist = idx.bincount(None::<Tensor>, self.model.cfg.quantizer.codebook_size).to_kind(Kind::Double);
            let p = &hist / hist.sum(Kind::Double);
            let entropy = -(&p * (&p + 1e-12).log()).sum(Kind::Double);
            let unique = hist.gt(0.0).sum(Kind::Int64).int64_value(&[]) as f64;
            let scalar = |t: &Tensor| t.to_kind(Kind::Double).double_value(&[]);
            Metrics::from([
                ("train/total_loss".into(), scalar(&total)),
                ("train/reconstruction_loss".into(), scalar(&rec)),
                ("train/quantizer_loss".into(), scalar(&(&out.quant.quantizer_loss * l.quantizer_weight))),
                ("train/commitment_loss".into(), scalar(&out.quant.commitment_loss)),
                ("train/codebook_loss".into(), scalar(&out.quant.codebook_loss)),
                ("train/masked_token_accuracy".into(), scalar(&acc)),
                ("train/index_unique_ratio".into(), unique / idx.numel() as f64),
                ("train/codebook_perplexity".into(), scalar(&entropy.exp())),
                ("train/latent_spread".into(), out.quant.latent_spread()),
            ])
        });
        (total, metrics)
    }
}

impl<S: TokenStage> Task for TokenTask<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        trainable_param_groups(&self.vs, self.cfg.optimizer.params.weight_decay)
    }

    fn init_fresh(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        SFTok::reference_init(&self.vs);
        if let Some(init) = &self.init {
            let mut sd = crate::checkpoint::read(init).context("experiment.init_weight / --init")?;
            sd.apply_aliases(crate::sftok::KEY_ALIASES);
            crate::checkpoint::load_into(&self.vs, &sd, true).with_context(|| format!("initialising from {}", init.display()))?;
            log(&format!("initialised from {}", init.display()));
        }
        Ok(())
    }

    fn step(&mut self, batch: &Batch, ctx: &StepContext) -> Result<StepOutput> {
        let x = crate::handoff::images(batch, ctx.device);
        // The teacher's codes are computed outside autocast, in float32 (spec §4).
        let codes = self.proxy_codes(batch, &x, ctx.device)?;
        let (loss, metrics) = ctx.autocast(|| self.loss(&x, &codes));
        self.last_images = Some(x);
        Ok(StepOutput { loss, metrics })
    }

    fn preview(&mut self, n: usize) -> Result<Preview> {
        let (Some(teacher), Some(x)) = (self.teacher(), &self.last_images) else {
            return Ok(Preview::Unavailable("no --teacher: stage-1/2 reconstructions need the teacher's decoder".into()));
        };
        Ok(Preview::Image(reconstruction_grid(&self.model, Some(teacher), x, n as i64)?))
    }

    fn evaluate(&mut self) -> Result<Metrics> {
        let Some(eval) = &self.eval else { return Ok(Metrics::new()) };
        evaluate_val(&self.model, self.teacher(), eval, &self.cfg)
    }

    fn console_summary(&self, m: &Metrics) -> String {
        format!(
            "loss {:.4} | rec {:.4} | q {:.4} | acc {:.3}",
            m["train/total_loss"], m["train/reconstruction_loss"], m["train/quantizer_loss"], m["train/masked_token_accuracy"]
        )
    }

    fn metric_panels(&self) -> Vec<Panel> {
        vec![
            Panel::new("losses", &["train/total_loss", "train/reconstruction_loss", "train/quantizer_loss"]),
            Panel::new("quantizer terms", &["train/commitment_loss", "train/codebook_loss"]),
            Panel::new("masked-token accuracy", &["train/masked_token_accuracy"]),
            Panel::new("codebook use in the batch (unique ids / tokens)", &["train/index_unique_ratio"]),
            Panel::new("codebook perplexity in the batch", &["train/codebook_perplexity"]),
            Panel::new("encoder output spread across images (~0: collapsed)", &["train/latent_spread"]),
            Panel::new("EMA eval: PSNR (dB)", &["ema_eval/PSNR"]),
            Panel::new("EMA eval: rFID", &["ema_eval/rFID"]),
            Panel::new("EMA eval: codebook usage (fraction of the codebook)", &["ema_eval/CodebookUsage"]),
            Panel::new("EMA eval: codebook entropy (bits)", &["ema_eval/CodebookEntropy"]),
        ]
    }

    fn save_weights(&self, tensors: Vec<(String, Tensor)>, dir: &Path) -> Result<()> {
        crate::checkpoint::save_weights_dir(tensors, &self.cfg, dir)
    }
}

/// Reconstruction strip for TensorBoard: [original | reconstruction | |difference|] per image.
/// Stage-1/2 models decode through the teacher, stage-3 models through their pixel decoder.
pub(super) fn reconstruction_grid(model: &SFTok, teacher: Option<&MaskgitVqgan>, x: &Tensor, n: i64) -> Result<RgbImage> {
    let x = x.narrow(0, 0, n.min(x.size()[0]));
    let (y, _) = crate::eval::recon::reconstruct(model, teacher, &x)?;
    let diff = (&x - &y).abs();
    let (a, b, c) = (crate::eval::recon::to_images(&x)?, crate::eval::recon::to_images(&y)?, crate::eval::recon::to_images(&diff)?);
    let rows: Vec<Vec<&RgbImage>> = (0..a.len()).map(|i| vec![&a[i], &b[i], &c[i]]).collect();
    Ok(sftok_pipeline::transform::grid(&rows, 2))
}

/// `ema_eval/*` over the val shards: the stage's eval path, reconstructions rounded to 8 bits,
/// as `sftok-eval rfid` computes them (spec §11.3; SSIM and LPIPS are not computed).
pub(super) fn evaluate_val(model: &SFTok, teacher: Option<&MaskgitVqgan>, eval: &EvalSetup, cfg: &Config) -> Result<Metrics> {
    let pre = &cfg.dataset.preprocessing;
    let o = ReconEvalOptions {
        shards: eval.shards.clone(),
        resize_shorter_edge: pre.resize_shorter_edge,
        crop_size: pre.crop_size,
        batch: eval.batch,
        num: eval.max_images,
        seed: cfg.training.seed as i64,
        progress: false,
        save_images: None,
    };
    let device = model.latent_tokens.device();
    let r = evaluate_reconstruction(model, teacher, eval.inception.as_ref(), &o, device).context("periodic evaluation (experiment.eval_every)")?;
    let mut m = Metrics::from([
        ("ema_eval/PSNR".into(), r.psnr),
        ("ema_eval/CodebookUsage".into(), r.codebook_usage),
        ("ema_eval/CodebookEntropy".into(), r.codebook_entropy_bits),
    ]);
    m.extend(r.rfid.map(|v| ("ema_eval/rFID".to_string(), v)));
    m.extend(r.inception_score.map(|v| ("ema_eval/InceptionScore".to_string(), v)));
    Ok(m)
}
