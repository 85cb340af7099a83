//! sftok's data side: files, bytes and pixels. Never depends on libtorch.

pub mod batch;
pub mod codes;
pub mod convert;
pub mod fsutil;
pub mod image_dir;
pub mod imagenet;
pub mod jpeg;
pub mod jpeg_scan;
pub mod launch_env;
pub mod loader;
pub mod manifest;
pub mod npy;
pub mod ordered;
pub mod part;
pub mod procstat;
pub mod progress;
pub mod rng;
pub mod sample_plan;
pub mod sample_store;
pub mod shard;
pub mod sniff;
pub mod synth;
pub mod transform;
pub mod view;
pub mod wds;
