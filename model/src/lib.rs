//! sftok's tensor side (tch): models, checkpoint I/O, training and evaluation.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod diff_aug;
pub mod dino_discriminator;
pub mod disc_loss;
pub mod doctor;
pub mod eval;
pub mod handoff;
pub mod image_bert;
pub mod inception;
pub mod losses;
pub mod lpips;
pub mod maskgit_sampler;
pub mod maskgit_step;
pub mod multistep_decoder;
pub mod optvq;
pub mod patchgan;
pub mod proxy_codes;
pub mod sftok;
pub mod stage3_loss;
pub mod titok_encoder;
pub mod train;
pub mod transformer;
pub mod vqgan;
