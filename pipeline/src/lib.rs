//! sftok's data side: files, bytes and pixels. Never depends on libtorch.

pub mod image_dir;
pub mod rng;
pub mod synth;
