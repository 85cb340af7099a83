//! Which `crop × crop` window of the resized image a sample shows, and whether it is mirrored.
//! One struct describes both the loader's random train crops and the views stored with proxy
//! codes, so pixels and codes can only correspond if they were cut with the same `View`.
//!
//! Pure geometry on sizes: nothing here touches pixels, so `transform` builds on this module and
//! never the other way round.

use crate::rng::Rng;
use anyhow::{Result, bail};

/// torchvision `CenterCrop` offsets: `int(round((H − size) / 2))` with round-half-to-even.
pub fn center_crop_offsets(width: u32, height: u32, size: u32) -> (u32, u32) {
    let off = |d: u32| ((d as f64) / 2.0).round_ties_even() as u32;
    (off(width.saturating_sub(size)), off(height.saturating_sub(size)))
}

/// A crop window (top-left corner, in pixels of the *resized* image) plus a horizontal flip
/// applied after the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub crop_x: u16,
    pub crop_y: u16,
    pub flip: bool,
}

impl View {
    /// The eval view: torchvision `CenterCrop`, no flip.
    pub fn center(resized_w: u32, resized_h: u32, crop: u32) -> Result<View> {
        let (x, y) = center_crop_offsets(resized_w, resized_h, crop);
        View::at(x, y, false)
    }

    pub fn at(crop_x: u32, crop_y: u32, flip: bool) -> Result<View> {
        let (Ok(crop_x), Ok(crop_y)) = (u16::try_from(crop_x), u16::try_from(crop_y)) else {
            bail!("crop offset ({crop_x}, {crop_y}) does not fit 16 bits: the image's aspect ratio is beyond 1:250");
        };
        Ok(View { crop_x, crop_y, flip })
    }

    /// torchvision's `RandomCrop(crop)` then `RandomHorizontalFlip(0.5)`, with the same draw
    /// order (top, then left, then the flip) from our version-stable generator. With
    /// `random_crop == false` the crop is the center crop; with `random_flip == false` no flip.
    pub fn random(rng: &mut Rng, resized_w: u32, resized_h: u32, crop: u32, random_crop: bool, random_flip: bool) -> Result<View> {
        if resized_w < crop || resized_h < crop {
            bail!("a {resized_w}×{resized_h} image cannot be cropped to {crop}×{crop}");
        }
        let (x, y) = if random_crop {
            let top = rng.below((resized_h - crop + 1) as u64) as u32;
            let left = rng.below((resized_w - crop + 1) as u64) as u32;
            (left, top)
        } else {
            center_crop_offsets(resized_w, resized_h, crop)
        };
        let flip = random_flip && rng.f64() < 0.5;
        View::at(x, y, flip)
    }
}

/// The stored views of one image for precomputed proxy codes (issue 5), a pure function of the
/// resized size so the teacher pass and the loader agree without storing anything else:
///
/// * `v == 1`: the eval view (center crop, no flip) — validation sets.
/// * `v` even: `v / 2` crop offsets evenly spaced along the **long** side, from one end to the
///   other (`round(k · (long − crop) / (v/2 − 1))`, halves rounded up; one offset = the center),
///   with the short side center-cropped; each offset unflipped then flipped. View `i` is offset
///   `i / 2`, flipped iff `i` is odd. The default `v = 10` is five offsets × {no flip, flip}, the
///   ten-crop practice of 1d-tokenizer's pretokenisation. A square image gets `v/2` equal offsets.
pub fn views_for(resized_w: u32, resized_h: u32, crop: u32, v: usize) -> Result<Vec<View>> {
    if resized_w < crop || resized_h < crop {
        bail!("a {resized_w}×{resized_h} image cannot be cropped to {crop}×{crop}");
    }
    if v == 1 {
        return Ok(vec![View::center(resized_w, resized_h, crop)?]);
    }
    if v == 0 || v % 2 == 1 || v > 256 {
        bail!("views per image must be 1 (eval) or an even number up to 256 (offsets × flips), got {v}");
    }
    let offsets = (v / 2) as u64;
    let (cx, cy) = center_crop_offsets(resized_w, resized_h, crop);
    let long_is_x = resized_w >= resized_h;
    let span = (if long_is_x { resized_w } else { resized_h } - crop) as u64;
    let mut views = Vec::with_capacity(v);
    for k in 0..offsets {
        let along = if offsets == 1 {
            if long_is_x { cx } else { cy }
        } else {
            ((2 * k * span + (offsets - 1)) / (2 * (offsets - 1))) as u32
        };
        let (x, y) = if long_is_x { (along, cy) } else { (cx, along) };
        views.push(View::at(x, y, false)?);
        views.push(View::at(x, y, true)?);
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_crop_rounds_half_to_even() {
        assert_eq!(center_crop_offsets(341, 256, 256), (42, 0)); // 85/2 = 42.5 → 42
        assert_eq!(center_crop_offsets(343, 256, 256), (44, 0)); // 43.5 → 44
    }

    #[test]
    fn ten_views_are_five_offsets_along_the_long_side_times_two_flips() {
        // 500×375 → 341×256: span 85, offsets 0, 21.25→21, 42.5→43, 63.75→64, 85.
        let v = views_for(341, 256, 256, 10).unwrap();
        let xs: Vec<u16> = v.iter().step_by(2).map(|v| v.crop_x).collect();
        assert_eq!(xs, [0, 21, 43, 64, 85]);
        assert!(v.iter().all(|v| v.crop_y == 0));
        assert_eq!(v.iter().map(|v| v.flip).collect::<Vec<_>>(), [false, true].repeat(5));
        // Portrait, shorter edge resized to 288 > crop: the short side is centered (16).
        let p = views_for(288, 384, 256, 4).unwrap();
        assert_eq!(p, [View { crop_x: 16, crop_y: 0, flip: false }, View { crop_x: 16, crop_y: 0, flip: true },
                       View { crop_x: 16, crop_y: 128, flip: false }, View { crop_x: 16, crop_y: 128, flip: true }]);
        assert_eq!(views_for(341, 256, 256, 1).unwrap(), [View { crop_x: 42, crop_y: 0, flip: false }]);
        assert_eq!(views_for(341, 256, 256, 2).unwrap()[0].crop_x, 42);
        assert!(views_for(341, 256, 256, 3).is_err());
        assert!(views_for(200, 256, 256, 2).is_err());
    }

    #[test]
    fn random_views_cover_every_offset_and_both_flips() {
        let mut rng = Rng::keyed(&[1]);
        let mut seen_x = [false; 4];
        let mut flips = 0;
        for _ in 0..400 {
            let v = View::random(&mut rng, 259, 256, 256, true, true).unwrap();
            assert_eq!(v.crop_y, 0);
            seen_x[v.crop_x as usize] = true;
            flips += v.flip as u32;
        }
        assert!(seen_x.iter().all(|&s| s), "{seen_x:?}");
        assert!((150..250).contains(&flips), "{flips}");
        let c = View::random(&mut rng, 341, 256, 256, false, false).unwrap();
        assert_eq!(c, View { crop_x: 42, crop_y: 0, flip: false });
    }
}
