//! Stage 2, self-forcing guided visual reconstruction (../shared/spec/sftok-training.md §6): a
//! no-grad all-masked pass predicts every token; with random arccos masking, the visible positions
//! take that first-step prediction (with probability `model.decoder.replace_prob`) instead of the
//! teacher's codes. `training.guided_mask: False` is the paper's "Vanilla" ablation: visible
//! positions keep the teacher's codes.

use super::token_task::{TokenStage, TokenTask, require_flag};
use crate::config::Config;
use crate::multistep_decoder::DecoderInput;
use crate::sftok::{ForwardOutput, SFTok};
use anyhow::Result;
use tch::Tensor;

pub struct Stage2;

/// `sftok-train stage2`.
pub type Stage2Task = TokenTask<Stage2>;

impl TokenStage for Stage2 {
    const NAME: &'static str = "stage2";

    fn check_config(cfg: &Config) -> Result<()> {
        let t = &cfg.training;
        require_flag(t.single_step_generation, false, "training.single_step_generation", Self::NAME, "masks a random share of the tokens")?;
        if !t.guided_mask {
            eprintln!("training.guided_mask = False: the \"Vanilla\" ablation (visible tokens are the teacher's codes, no self-forcing)");
        }
        Ok(())
    }

    fn forward(model: &SFTok, cfg: &Config, x: &Tensor, codes: &Tensor) -> ForwardOutput {
        if !cfg.training.guided_mask {
            return model.forward(x, codes, &DecoderInput::Random(None));
        }
        model.forward_self_forcing(x, codes)
    }

    fn decode_steps(cfg: &Config) -> i64 {
        cfg.model.generator.num_steps
    }
}
