//! Decoding to RGB (for `--verify full`, conversions and resizing), the optional shorter-side
//! downscale, and JPEG re-encoding. Errors are plain strings: they become a skipped file's reason.

use crate::sniff::JpegInfo;
use fast_image_resize as fir;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// JPEG's own size limit; zune's default cap (16384) would reject legal large photos.
const MAX_SIDE: usize = 65_535;

/// zune-jpeg into `out`, within the size limit: the pixels and the decoded (width, height).
fn zune_decode(bytes: &[u8], out: ColorSpace) -> Result<(Vec<u8>, Option<(u32, u32)>), String> {
    let options = DecoderOptions::default().set_max_width(MAX_SIDE).set_max_height(MAX_SIDE).jpeg_set_out_colorspace(out);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| format!("JPEG decode failed: {e}"))?;
    Ok((pixels, decoder.info().map(|i| (i.width as u32, i.height as u32))))
}

/// Full JPEG decode to RGB. Four-component files follow PIL's reading: with an Adobe APP14
/// segment the samples are stored inverted (what Photoshop writes) and zune-jpeg's CMYK/YCCK
/// conversion assumes exactly that; without one they are plain CMYK, which we convert ourselves.
pub fn decode_jpeg(bytes: &[u8], info: &JpegInfo) -> Result<Rgb, String> {
    let plain_cmyk = info.components == 4 && info.adobe_transform.is_none();
    let out = if plain_cmyk { ColorSpace::CMYK } else { ColorSpace::RGB };
    let (pixels, dims) = zune_decode(bytes, out)?;
    if dims != Some((info.width, info.height)) {
        return Err(format!("JPEG decode gave size {dims:?}, header says {}x{}", info.width, info.height));
    }
    let pixels = if plain_cmyk { plain_cmyk_to_rgb(&pixels) } else { pixels };
    if pixels.len() != info.width as usize * info.height as usize * 3 {
        return Err("JPEG decode returned a short pixel buffer".into());
    }
    Ok(Rgb { width: info.width, height: info.height, pixels })
}

/// `--verify full` for a JPEG stored as is. Baseline files take the entropy-decoding fast path
/// (`jpeg_scan`); everything else, and anything that path does not vouch for, gets the complete
/// zune decode, into the file's own colour space since the pixels are thrown away.
pub fn check_decodes(bytes: &[u8], info: &JpegInfo) -> Result<(), String> {
    if info.components != 4 && crate::jpeg_scan::baseline_sound(bytes) {
        return Ok(());
    }
    let (out, channels) = match (info.components, info.adobe_transform) {
        (1, _) => (ColorSpace::Luma, 1),
        (3, Some(0)) => (ColorSpace::RGB, 3),
        (3, _) => (ColorSpace::YCbCr, 3),
        _ => return decode_jpeg(bytes, info).map(drop),
    };
    let (pixels, dims) = zune_decode(bytes, out)?;
    if dims != Some((info.width, info.height)) || pixels.len() != info.width as usize * info.height as usize * channels {
        return Err(format!("JPEG decode gave size {dims:?}, header says {}x{}", info.width, info.height));
    }
    Ok(())
}

/// PIL's CMYK → RGB: R = (255 − C)(255 − K)/255, rounded.
fn plain_cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let nk = 255 - p[3] as u32;
        for &c in &p[..3] {
            rgb.push((((255 - c as u32) * nk + 127) / 255) as u8);
        }
    }
    rgb
}

/// Decodes PNG and the other formats of the `image` crate; alpha is dropped as PIL's
/// `convert("RGB")` does.
pub fn decode_other(bytes: &[u8], format: image::ImageFormat) -> Result<Rgb, String> {
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| format!("{format:?} decode failed: {e}"))?
        .into_rgb8();
    Ok(Rgb { width: img.width(), height: img.height(), pixels: img.into_raw() })
}

/// Downscales so that the shorter side is `shorter` (long side truncated like torchvision's
/// `Resize(int)`), with Catmull-Rom convolution, the closest match to PIL's antialiased bicubic.
/// `None` when the image is already that small: images are never upscaled.
pub fn resize_shorter(img: &Rgb, shorter: u32) -> Result<Option<Rgb>, String> {
    let (w, h) = (img.width, img.height);
    if w.min(h) <= shorter {
        return Ok(None);
    }
    let (nw, nh) = if w <= h {
        (shorter, (shorter as u64 * h as u64 / w as u64) as u32)
    } else {
        ((shorter as u64 * w as u64 / h as u64) as u32, shorter)
    };
    let src = fir::images::ImageRef::new(w, h, &img.pixels, fir::PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = fir::images::Image::new(nw, nh, fir::PixelType::U8x3);
    let options =
        fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom));
    fir::Resizer::new().resize(&src, &mut dst, &options).map_err(|e| format!("resize failed: {e}"))?;
    Ok(Some(Rgb { width: nw, height: nh, pixels: dst.into_vec() }))
}

/// Baseline RGB JPEG; jpeg-encoder uses 4:4:4 from quality 90 up, so conversions keep colour detail.
pub fn encode_jpeg(img: &Rgb, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = (u16::try_from(img.width), u16::try_from(img.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(format!("{}x{} is too large for a JPEG", img.width, img.height));
    };
    let mut buf = Vec::with_capacity(img.pixels.len() / 4);
    jpeg_encoder::Encoder::new(&mut buf, quality)
        .encode(&img.pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("JPEG encode failed: {e}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::jpeg_header;

    fn cmyk_jpeg(color: jpeg_encoder::ColorType, cmyk: [u8; 4]) -> Vec<u8> {
        let px: Vec<u8> = (0..16 * 16).flat_map(|_| cmyk).collect();
        let mut buf = Vec::new();
        jpeg_encoder::Encoder::new(&mut buf, 100).encode(&px, 16, 16, color).unwrap();
        buf
    }

    #[test]
    fn adobe_cmyk_and_ycck_come_out_with_the_right_colours() {
        // A known CMYK colour: C=0, M=255, Y=255, K=64 is a dark red.
        let cmyk = [0u8, 255, 255, 64];
        let want = [(255 - 0) * (255 - 64) / 255, 0, 0];
        for color in [jpeg_encoder::ColorType::Cmyk, jpeg_encoder::ColorType::CmykAsYcck] {
            let jpg = cmyk_jpeg(color, cmyk);
            let rgb = decode_jpeg(&jpg, &jpeg_header(&jpg).unwrap()).unwrap();
            let got = &rgb.pixels[8 * 16 * 3 + 8 * 3..][..3];
            for c in 0..3 {
                assert!((got[c] as i32 - want[c] as i32).abs() <= 4, "{color:?}: got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn full_check_accepts_sound_files_and_rejects_broken_entropy_tables() {
        for color in [jpeg_encoder::ColorType::Rgb, jpeg_encoder::ColorType::Luma] {
            let n = if color == jpeg_encoder::ColorType::Rgb { 3 } else { 1 };
            let px: Vec<u8> = (0..40 * 24 * n).map(|i| (i * 7 % 251) as u8).collect();
            let mut jpg = Vec::new();
            jpeg_encoder::Encoder::new(&mut jpg, 90).encode(&px, 40, 24, color).unwrap();
            let info = jpeg_header(&jpg).unwrap();
            check_decodes(&jpg, &info).unwrap();
            let dht = jpg.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
            jpg[dht + 5..dht + 21].fill(0xFF);
            assert!(check_decodes(&jpg, &info).is_err());
        }
    }

    #[test]
    fn plain_cmyk_is_not_inverted() {
        assert_eq!(plain_cmyk_to_rgb(&[0, 255, 255, 64]), vec![191, 0, 0]);
        assert_eq!(plain_cmyk_to_rgb(&[0, 0, 0, 0]), vec![255, 255, 255]);
    }

    #[test]
    fn resize_sets_the_shorter_side_and_never_upscales() {
        let img = Rgb { width: 300, height: 200, pixels: vec![90; 300 * 200 * 3] };
        let small = resize_shorter(&img, 100).unwrap().unwrap();
        assert_eq!((small.width, small.height), (150, 100));
        assert!(small.pixels.iter().all(|&p| p == 90));
        assert!(resize_shorter(&img, 200).unwrap().is_none());
        let jpg = encode_jpeg(&small, 95).unwrap();
        let info = jpeg_header(&jpg).unwrap();
        assert_eq!((info.width, info.height, info.components), (150, 100, 3));
    }
}
