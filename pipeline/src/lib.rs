//! sftok's data side: files, bytes and pixels. Never depends on libtorch.

pub mod batch;
pub mod codes;
pub mod loader;
pub mod rng;
pub mod synth;
pub mod transform;
pub mod view;
