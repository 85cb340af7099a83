//! sftok's tensor side (tch): models, checkpoint I/O, training and evaluation.

pub mod config;
pub mod device;
pub mod doctor;
pub mod eval;
pub mod inception;
