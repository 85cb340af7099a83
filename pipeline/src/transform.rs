//! Decoding and the reference's image transforms on RGB8 pixels (../shared/spec/sftok-training.md
//! §3, teacher-maskgit-vqgan.md §7): `Resize(S)` of the shorter edge with PIL-bicubic-antialias
//! semantics (fast_image_resize's CatmullRom convolution: PIL's bicubic is Keys a = −0.5), crops
//! and horizontal flips.

// Crop geometry (`View`, center-crop offsets) lives in `view`, which imports nothing from here:
// the dependency runs one way, pixels on top of geometry.
use crate::jpeg::JpegDecoder;
use crate::view::View;
use anyhow::{Context, Result, bail};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// Row-major RGB8 pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<RgbImage> {
        if data.len() != width as usize * height as usize * 3 {
            bail!("{}×{} RGB image needs {} bytes, got {}", width, height, width as usize * height as usize * 3, data.len());
        }
        Ok(RgbImage { width, height, data })
    }
}

/// Decodes JPEG/PNG/… bytes to RGB8 (grayscale and CMYK are converted).
///
/// RGB, YCbCr and grayscale JPEGs go through libjpeg-turbo with PIL's settings (`jpeg`), so their
/// pixels are PIL's; zune-jpeg (the image crate's decoder) blends the encoder's MCU padding into
/// the last row/column of 4:2:0 images, up to 25 levels off. Everything else (CMYK, 12-bit, PNG,
/// WebP, …) uses the image crate.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    if let Some(jpeg) = open_jpeg(bytes)? {
        let (w, h) = (jpeg.width, jpeg.height);
        return RgbImage::new(w, h, jpeg.decode()?);
    }
    decode_other(bytes)
}

fn open_jpeg(bytes: &[u8]) -> Result<Option<JpegDecoder<'_>>> {
    if bytes.starts_with(&[0xFF, 0xD8]) { JpegDecoder::open(bytes) } else { Ok(None) }
}

fn decode_other(bytes: &[u8]) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes).context("cannot decode the image")?.into_rgb8();
    let (w, h) = img.dimensions();
    RgbImage::new(w, h, img.into_raw())
}

/// Decode + `Resize(resize_shorter_edge)` + the view `pick` chooses from the resized size, into
/// `out` (`crop_size`² RGB8); returns the view. Equals [`view_transform`] on [`decode_rgb`]'s
/// image, but a JPEG is decoded only down to the last row, and across the columns, the resize
/// reads (into a per-thread scratch buffer).
pub fn decode_view_into(
    bytes: &[u8],
    resize_shorter_edge: u32,
    crop_size: u32,
    pick: impl FnOnce(u32, u32) -> Result<View>,
    out: &mut [u8],
) -> Result<View> {
    let Some(jpeg) = open_jpeg(bytes)? else {
        let img = decode_other(bytes)?;
        let resized = resized_size(img.width, img.height, resize_shorter_edge);
        let view = pick(resized.0, resized.1)?;
        resize_rows_into(RgbRows::of(&img), resized, crop_size, view, out)?;
        return Ok(view);
    };
    let (w, h) = (jpeg.width, jpeg.height);
    let resized = resized_size(w, h, resize_shorter_edge);
    let view = pick(resized.0, resized.1)?;
    let rows = reach(h, resized.1, crop_size, view.crop_y).end;
    let cols = reach(w, resized.0, crop_size, view.crop_x);
    // libjpeg treats the edges of a column range as image edges when upsampling chroma, which
    // changes the outermost decoded columns: keep them outside the filter's reach.
    let cols = cols.start.saturating_sub(JPEG_CROP_MARGIN)..(cols.end + JPEG_CROP_MARGIN).min(w);
    let need = rows as usize * w as usize * 3;
    let decode = |buf: &mut [u8]| -> Result<()> {
        jpeg.decode_region_into(rows, cols, buf)?;
        resize_rows_into(RgbRows { width: w, height: h, data: buf }, resized, crop_size, view, out)
    };
    if need > SCRATCH_MAX {
        decode(&mut vec![0; need])?;
    } else {
        // Reused across images: no allocation or page faults per sample. Stale pixels from an
        // earlier image outside `cols` are never read.
        SCRATCH.with_borrow_mut(|buf| {
            if buf.len() < need {
                buf.resize(need, 0);
            }
            decode(&mut buf[..need])
        })?;
    }
    Ok(view)
}

/// Columns of margin around a JPEG column range (libjpeg's edge upsampling reaches 1–2).
const JPEG_CROP_MARGIN: u32 = 4;
/// Larger decodes get a buffer of their own rather than growing the per-thread one.
const SCRATCH_MAX: usize = 32 << 20;

thread_local! {
    /// Decoded JPEG rows (`decode_view_into`).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The horizontal pass's output (`resize_rows_into`).
    static MID: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Source pixels for a resize: the top rows of a `width`×`height` RGB8 image (`width · 3` bytes
/// a row), as many as `data` holds. Columns a view does not read may hold anything.
#[derive(Clone, Copy, Debug)]
pub struct RgbRows<'a> {
    pub width: u32,
    pub height: u32,
    pub data: &'a [u8],
}

impl<'a> RgbRows<'a> {
    pub fn of(img: &'a RgbImage) -> RgbRows<'a> {
        RgbRows { width: img.width, height: img.height, data: &img.data }
    }

    fn rows(&self) -> u32 {
        (self.data.len() / (self.width as usize * 3).max(1)) as u32
    }
}

/// torchvision `Resize(shorter)` output size: the shorter side becomes `shorter`, the longer
/// `int(shorter · long / short)` (truncated).
pub fn resized_size(width: u32, height: u32, shorter: u32) -> (u32, u32) {
    let (short, long) = (width.min(height) as u64, width.max(height) as u64);
    let new_long = ((shorter as u64 * long) as f64 / short as f64) as u32;
    if width <= height { (shorter, new_long) } else { (new_long, shorter) }
}

/// Mirrors each row of `width` RGB pixels in place.
pub fn hflip_rows(data: &mut [u8], width: usize) {
    for row in data.chunks_exact_mut(width * 3) {
        // Left half against the right half read backwards; an odd middle pixel stays.
        let (left, right) = row.split_at_mut(width / 2 * 3);
        for (a, b) in left.chunks_exact_mut(3).zip(right.rchunks_exact_mut(3)) {
            let t = [a[0], a[1], a[2]];
            a.copy_from_slice(b);
            b.copy_from_slice(&t);
        }
    }
}

/// Cuts `view` out of the image resized to `resized` (w, h) and writes the `crop`×`crop` RGB
/// result to `out`. The crop is folded into the resize (fast_image_resize's source crop box with
/// fractional edges): every output pixel keeps its source centre `(x + 0.5) · src / resized` and
/// its filter taps, as when resizing the whole image and cropping after, for less work.
pub fn resize_view_into(img: &RgbImage, resized: (u32, u32), crop_size: u32, view: View, out: &mut [u8]) -> Result<()> {
    resize_rows_into(RgbRows::of(img), resized, crop_size, view, out)
}

/// The source pixels (along one axis of `size` pixels) that the resize to `resized` reads for the
/// crop `[offset, offset + crop)`: fast_image_resize's taps `floor(centre − radius) ..
/// ceil(centre + radius)`, radius 2 source pixels widened by the scale when shrinking (PIL's
/// antialias), plus one pixel each side for rounding.
pub fn reach(size: u32, resized: u32, crop: u32, offset: u16) -> std::ops::Range<u32> {
    let (lo, hi) = (offset as u32, offset as u32 + crop);
    if resized == size {
        return lo.min(size)..hi.min(size);
    }
    let scale = size as f64 / resized as f64;
    let radius = 2.0 * scale.max(1.0);
    let start = ((lo as f64 * scale - radius).floor() - 1.0).max(0.0) as u32;
    let end = ((hi as f64 * scale + radius).ceil() as u32 + 1).min(size);
    start..end
}

/// [`resize_view_into`] on the top rows of an image. Only the rows and columns in [`reach`] of
/// the view are read, so a partial decode gives the result of the whole image.
pub fn resize_rows_into(src: RgbRows, resized: (u32, u32), crop_size: u32, view: View, out: &mut [u8]) -> Result<()> {
    let (rw, rh) = resized;
    let (x, y) = (view.crop_x as u32, view.crop_y as u32);
    if x + crop_size > rw || y + crop_size > rh {
        bail!("view {view:?} with crop {crop_size} does not fit the resized {rw}×{rh} image");
    }
    let need = crop_size as usize * crop_size as usize * 3;
    if out.len() != need {
        bail!("output buffer holds {} bytes, a {crop_size}×{crop_size} RGB image needs {need}", out.len());
    }
    let (width, rows) = (src.width, src.rows());
    let band = reach(src.height, rh, crop_size, view.crop_y);
    if rows < band.end {
        bail!("the view needs {} decoded rows, the image has {rows}", band.end);
    }
    if (rw, rh) == (width, src.height) {
        // No resize (PIL and torchvision copy the image unchanged): a plain crop.
        let row = width as usize * 3;
        for (r, dst) in out.chunks_exact_mut(crop_size as usize * 3).enumerate() {
            let start = (y as usize + r) * row + x as usize * 3;
            dst.copy_from_slice(&src.data[start..start + dst.len()]);
        }
    } else {
        // Two one-dimensional passes in PIL's order, horizontal then vertical, each rounding to
        // u8: fast_image_resize alone runs u8 images vertical-first, and the intermediate
        // clipping of bicubic overshoot then differs from PIL by up to ~20 levels on textured
        // images (with PIL's order: max 3–8, see the parity test).
        let (sx, sy) = (width as f64 / rw as f64, src.height as f64 / rh as f64);
        let (left, top) = (x as f64 * sx, y as f64 * sy);
        // A window touching the far edge can overshoot it by a rounding error; clamp it.
        let box_width = (crop_size as f64 * sx).min(width as f64 - left);
        let box_height = (crop_size as f64 * sy).min(src.height as f64 - top);
        let bicubic = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
        let mut resizer = Resizer::new();
        // The horizontal pass runs only on the band of rows the vertical taps read; rows keep
        // their indices in `mid`, so the vertical pass sees the same coordinates (and gives the
        // same pixels) as with every row resized. Rows past the band are never read.
        let (first, src_row, mid_row) = (band.start as usize, width as usize * 3, crop_size as usize * 3);
        let (end, band_rows) = (band.end as usize, band.end - band.start);
        let band_src = ImageRef::new(width, band_rows, &src.data[first * src_row..end * src_row], PixelType::U8x3)?;
        // `mid` is a per-thread scratch buffer: rows above the band hold stale pixels, never read.
        MID.with_borrow_mut(|mid| -> Result<()> {
            if mid.len() < end * mid_row {
                mid.resize(end * mid_row, 0);
            }
            let mid = &mut mid[..end * mid_row];
            let mut band_dst = Image::from_slice_u8(crop_size, band_rows, &mut mid[first * mid_row..], PixelType::U8x3)?;
            resizer.resize(&band_src, &mut band_dst, &bicubic.crop(left, 0.0, box_width, band_rows as f64))?;
            let mid = ImageRef::new(crop_size, band.end, mid, PixelType::U8x3)?;
            let mut dst = Image::from_slice_u8(crop_size, crop_size, out, PixelType::U8x3)?;
            resizer.resize(&mid, &mut dst, &bicubic.crop(0.0, top, crop_size as f64, box_height))?;
            Ok(())
        })?;
    }
    if view.flip {
        hflip_rows(out, crop_size as usize);
    }
    Ok(())
}

/// `resize_view_into` to a new image: `Resize(resize_shorter_edge)`, crop at `view`, flip.
pub fn view_transform(img: &RgbImage, resize_shorter_edge: u32, crop_size: u32, view: View) -> Result<RgbImage> {
    let resized = resized_size(img.width, img.height, resize_shorter_edge);
    let mut data = vec![0; crop_size as usize * crop_size as usize * 3];
    resize_view_into(img, resized, crop_size, view, &mut data)?;
    RgbImage::new(crop_size, crop_size, data)
}

/// Eval transform: `Resize(resize_shorter)` → `CenterCrop(crop_size)`.
pub fn eval_transform(img: &RgbImage, resize_shorter_edge: u32, crop_size: u32) -> Result<RgbImage> {
    let (rw, rh) = resized_size(img.width, img.height, resize_shorter_edge);
    let view = View::center(rw, rh, crop_size).with_context(|| format!("resize_shorter_edge {resize_shorter_edge} < crop_size {crop_size}?"))?;
    view_transform(img, resize_shorter_edge, crop_size, view)
}

/// Tiles images into rows (each row left to right) with `gap` black pixels between cells.
pub fn grid(rows: &[Vec<&RgbImage>], gap: u32) -> RgbImage {
    let cell_w = rows.iter().flatten().map(|i| i.width).max().unwrap_or(0);
    let cell_h = rows.iter().flatten().map(|i| i.height).max().unwrap_or(0);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let w = cols * cell_w + cols.saturating_sub(1) * gap;
    let h = rows.len() as u32 * cell_h + (rows.len() as u32).saturating_sub(1) * gap;
    let mut data = vec![0u8; w as usize * h as usize * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let (x0, y0) = (c as u32 * (cell_w + gap), r as u32 * (cell_h + gap));
            for y in 0..img.height {
                let src = &img.data[(y * img.width * 3) as usize..((y + 1) * img.width * 3) as usize];
                let dst = (((y0 + y) * w + x0) * 3) as usize;
                data[dst..dst + src.len()].copy_from_slice(src);
            }
        }
    }
    RgbImage { width: w, height: h, data }
}

/// PNG bytes of an image.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &img.data,
        img.width,
        img.height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_truncates_like_torchvision() {
        assert_eq!(resized_size(500, 375, 256), (341, 256)); // 256·500/375 = 341.33
        assert_eq!(resized_size(333, 500, 256), (256, 384)); // 384.38
        assert_eq!(resized_size(256, 256, 256), (256, 256));
    }

    #[test]
    fn unresized_views_crop_and_flip_the_right_pixels() {
        // Resized size = image size: `resize_view_into` is a plain crop, then the flip.
        let img = RgbImage::new(4, 3, (0..4 * 3 * 3).collect()).unwrap();
        let cut = |x, y, flip| {
            let mut out = vec![0; 2 * 2 * 3];
            resize_view_into(&img, (4, 3), 2, View::at(x, y, flip).unwrap(), &mut out).map(|()| out)
        };
        let px = |x: usize, y: usize| img.data[(y * 4 + x) * 3..(y * 4 + x + 1) * 3].to_vec();
        assert_eq!(cut(1, 1, false).unwrap(), [px(1, 1), px(2, 1), px(1, 2), px(2, 2)].concat());
        assert_eq!(cut(1, 1, true).unwrap(), [px(2, 1), px(1, 1), px(2, 2), px(1, 2)].concat());
        assert!(cut(3, 0, false).is_err());
        // Odd width: the middle pixel stays, the outer ones swap.
        let mut odd: Vec<u8> = (0..9).collect();
        hflip_rows(&mut odd, 3);
        assert_eq!(odd, [6, 7, 8, 3, 4, 5, 0, 1, 2]);
    }
}
