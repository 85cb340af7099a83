//! sftok's data side: files, bytes and pixels. Never depends on libtorch.

pub mod batch;
pub mod image_dir;
pub mod rng;
pub mod synth;
pub mod transform;
