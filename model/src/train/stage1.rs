//! Stage 1, warming up (../shared/spec/sftok-training.md §5): every proxy slot is [MASK], so the
//! model learns the single-step prediction that stage 2 feeds back as its own input. Previews and
//! evaluation decode in one step (argmax of the all-masked pass), the stage's eval path.

use super::token_task::{TokenStage, TokenTask, require_flag};
use crate::config::Config;
use crate::multistep_decoder::DecoderInput;
use crate::sftok::{ForwardOutput, SFTok};
use anyhow::Result;
use tch::Tensor;

pub struct Stage1;

/// `sftok-train stage1`.
pub type Stage1Task = TokenTask<Stage1>;

impl TokenStage for Stage1 {
    const NAME: &'static str = "stage1";

    fn check_config(cfg: &Config) -> Result<()> {
        let t = &cfg.training;
        require_flag(t.single_step_generation, true, "training.single_step_generation", Self::NAME, "predicts every token in one step")?;
        require_flag(t.guided_mask, false, "training.guided_mask", Self::NAME, "has no self-forcing pass (that is stage 2)")
    }

    fn forward(model: &SFTok, _cfg: &Config, x: &Tensor, codes: &Tensor) -> ForwardOutput {
        model.forward(x, codes, &DecoderInput::MaskAll)
    }

    fn decode_steps(_cfg: &Config) -> i64 {
        1
    }
}
