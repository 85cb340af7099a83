//! One sample, bytes to training pixels: decode, shorter-edge resize, the sample's view (random,
//! center, or the stored view its proxy codes were computed on), flip. Runs on the decode pool.

use super::order::{TAG_VIEW, key_hash};
use super::tar_samples::TarSample;
use crate::codes::ShardCodes;
use crate::rng::Rng;
use crate::transform::decode_view_into;
use crate::view::View;

/// What the transform needs from the loader configuration.
#[derive(Clone, Copy, Debug)]
pub struct TransformSpec {
    pub resize_shorter_edge: u32,
    pub crop_size: u32,
    pub random_crop: bool,
    pub random_flip: bool,
    /// False (only with codes attached): skip decoding; the sample's stored view and codes are what the batch carries.
    pub pixels: bool,
}

/// The proxy codes travelling with a sample.
#[derive(Clone, Debug)]
pub enum CodeChoice {
    /// No code store attached.
    None,
    /// A store is attached but has no codes for this key.
    Missing,
    /// The stored view drawn for this epoch, and its codes.
    Chosen { view_id: u8, view: View, codes: Vec<u16> },
}

/// Per-sample random stream: a pure function of (seed, epoch, key), so the draw does not depend on
/// rank count, shuffle position or worker timing.
pub fn sample_rng(seed: u64, epoch: u64, key: &str) -> Rng {
    Rng::keyed(&[seed, TAG_VIEW, epoch, key_hash(key)])
}

/// Draws one of the key's stored views (uniformly, seeded).
pub fn choose_codes(codes: Option<&ShardCodes>, seed: u64, epoch: u64, key: &str) -> CodeChoice {
    let Some(views) = codes.and_then(|c| c.get(key)).filter(|v| !v.is_empty()) else { return CodeChoice::Missing };
    let pick = views[sample_rng(seed, epoch, key).below(views.len() as u64) as usize];
    CodeChoice::Chosen { view_id: pick.view_id, view: pick.view, codes: pick.codes.to_vec() }
}

/// A sample ready for a batch.
#[derive(Debug)]
pub struct Decoded {
    pub key: String,
    pub label: i64,
    pub pixels: Vec<u8>,
    pub code: Option<(u8, Vec<u16>)>,
}

/// Decodes and transforms into `pixels` (a recycled buffer: any length, any content); `Err` is
/// the reason the sample is skipped.
pub fn process(sample: TarSample, code: CodeChoice, spec: TransformSpec, seed: u64, epoch: u64, mut pixels: Vec<u8>) -> Result<Decoded, String> {
    let image = sample.image.ok_or("no image member (jpg/jpeg/png/webp)")?;
    let cls = sample.cls.ok_or("no cls member")?;
    let label = std::str::from_utf8(&cls)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .ok_or_else(|| format!("cls `{}` is not an integer", String::from_utf8_lossy(&cls)))?;
    pixels.resize(spec.crop_size as usize * spec.crop_size as usize * 3, 0);
    let (stored, code) = match code {
        CodeChoice::Chosen { view_id, view, codes } => (Some(view), Some((view_id, codes))),
        CodeChoice::Missing => return Err("no proxy codes for this key".into()),
        CodeChoice::None => (None, None),
    };
    if !spec.pixels {
        pixels.clear();
        return Ok(Decoded { key: sample.key, label, pixels, code });
    }
    let pick = |rw: u32, rh: u32| match stored {
        Some(view) => Ok(view),
        None => View::random(&mut sample_rng(seed, epoch, &sample.key), rw, rh, spec.crop_size, spec.random_crop, spec.random_flip),
    };
    decode_view_into(&image, spec.resize_shorter_edge, spec.crop_size, pick, &mut pixels).map_err(|e| match stored {
        Some(_) => format!("{e:#} (proxy codes made with another resize rule?)"),
        None => format!("{e:#}"),
    })?;
    Ok(Decoded { key: sample.key, label, pixels, code })
}
