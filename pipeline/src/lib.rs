//! sftok's data side: files, bytes and pixels. Never depends on libtorch.

pub mod convert;
pub mod imagenet;
pub mod jpeg_scan;
pub mod manifest;
pub mod ordered;
pub mod rng;
pub mod shard;
pub mod sniff;
pub mod synth;
pub mod wds;
