//! Training: the stage-1/2 loop and its parts.

pub mod ema;
pub mod optim;
pub mod plot;
pub mod state;
pub mod tensorboard;
pub mod trainer;
