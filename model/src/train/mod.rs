//! Training: one generic loop ([`fit`]) and the jobs it runs ([`task::Task`] implementations).
//!
//! A new training job is a new file implementing `Task` (see `stage1.rs` / `stage2.rs` over
//! `token_task.rs`), wired to a subcommand in `launch.rs`; the loop itself does not change.

pub mod ema;
pub mod fit;
pub mod generator;
pub mod launch;
pub mod optim;
pub mod plot;
pub mod run_log;
pub mod stage1;
pub mod stage2;
pub mod stage3;
pub mod state;
pub mod task;
pub mod tensorboard;
pub mod token_task;
