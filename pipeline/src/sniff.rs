//! What a file really is, from its bytes, without decoding pixels: ImageNet's `.JPEG` files include
//! PNGs, CMYK JPEGs, grayscale and progressive JPEGs, and the odd truncated or empty file. The
//! header check here is what `--verify header` runs on every file.

/// The format found in a file's bytes (not its name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Jpeg(JpegInfo),
    Png,
    /// Another format the `image` crate recognises (BMP, PNM, …); converted to JPEG.
    Other(image::ImageFormat),
}

/// What the marker segments before the scan data say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: u32,
    pub height: u32,
    /// 1 = grayscale, 3 = YCbCr (or RGB), 4 = CMYK or YCCK.
    pub components: u8,
    pub progressive: bool,
    /// The colour transform byte of an Adobe APP14 segment (0 = none: CMYK/RGB, 1 = YCbCr,
    /// 2 = YCCK). Its presence also means 4-component data is stored inverted (Photoshop style).
    pub adobe_transform: Option<u8>,
}

impl JpegInfo {
    /// CMYK/YCCK: PIL and most training loaders cannot hand these to a model as RGB without a
    /// conversion, so the converter stores them as RGB JPEGs.
    pub fn needs_conversion(&self) -> bool {
        self.components == 4
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Classifies `bytes`; `Err` carries the reason the file is skipped.
pub fn sniff(bytes: &[u8]) -> Result<Kind, String> {
    if bytes.is_empty() {
        return Err("zero-byte file".into());
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return jpeg_header(bytes).map(Kind::Jpeg);
    }
    if bytes.starts_with(PNG_MAGIC) {
        return Ok(Kind::Png);
    }
    match image::guess_format(bytes) {
        Ok(format) if format.reading_enabled() => Ok(Kind::Other(format)),
        Ok(format) => Err(format!("{format:?} image: format not supported by this build")),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(format!("not an image: unknown magic bytes {}", head.join(" ")))
        }
    }
}

/// Walks the marker segments up to the first scan. Catches truncation (no end-of-image marker),
/// broken segment lengths and missing or unusable frame headers without decoding anything.
pub fn jpeg_header(bytes: &[u8]) -> Result<JpegInfo, String> {
    // Some real JPEGs carry zero padding after the end-of-image marker.
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    if end < 4 || bytes[end - 2..end] != [0xFF, 0xD9] {
        return Err("truncated JPEG: no end-of-image marker (FF D9)".into());
    }
    let mut frame: Option<JpegInfo> = None;
    let mut adobe = None;
    let mut pos = 2;
    loop {
        if pos >= end || bytes[pos] != 0xFF {
            return Err(format!("corrupt JPEG header: no marker at byte {pos}"));
        }
        while pos < end && bytes[pos] == 0xFF {
            pos += 1; // fill bytes
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err("corrupt JPEG header: ends inside a marker".into());
        };
        pos += 1;
        match marker {
            0x01 | 0xD0..=0xD7 => continue, // stand-alone markers
            0xD8 | 0xD9 => return Err(format!("corrupt JPEG header: unexpected marker FF {marker:02X} before the scan")),
            _ => {}
        }
        if pos + 2 > end {
            return Err("corrupt JPEG header: segment length beyond the end of the file".into());
        }
        let len = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]) as usize;
        if len < 2 || pos + len > end {
            return Err(format!("corrupt JPEG header: segment FF {marker:02X} length {len} beyond the end of the file"));
        }
        let seg = &bytes[pos + 2..pos + len];
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => frame = Some(frame_header(marker, seg)?),
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => adobe = Some(seg[11]),
            0xDA => {
                let Some(mut info) = frame else {
                    return Err("corrupt JPEG header: scan before any frame header".into());
                };
                info.adobe_transform = adobe;
                return Ok(info);
            }
            _ => {}
        }
        pos += len;
    }
}

fn frame_header(marker: u8, seg: &[u8]) -> Result<JpegInfo, String> {
    if seg.len() < 6 {
        return Err("corrupt JPEG header: short frame header".into());
    }
    match marker {
        0xC3 | 0xC7 | 0xCB | 0xCF => return Err("lossless JPEG: not supported by common decoders".into()),
        0xC9..=0xCB | 0xCD..=0xCF => return Err("arithmetic-coded JPEG: not supported by common decoders".into()),
        _ => {}
    }
    let precision = seg[0];
    if precision != 8 {
        return Err(format!("{precision}-bit JPEG: only 8-bit samples are supported"));
    }
    let height = u16::from_be_bytes([seg[1], seg[2]]) as u32;
    let width = u16::from_be_bytes([seg[3], seg[4]]) as u32;
    let components = seg[5];
    if width == 0 || height == 0 {
        return Err(format!("JPEG frame header gives size {width}x{height}"));
    }
    if !matches!(components, 1 | 3 | 4) {
        return Err(format!("JPEG with {components} components: not an image format we can store"));
    }
    Ok(JpegInfo { width, height, components, progressive: matches!(marker, 0xC2 | 0xC6), adobe_transform: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(color: jpeg_encoder::ColorType, w: u16, h: u16, progressive: bool) -> Vec<u8> {
        let bpp = match color {
            jpeg_encoder::ColorType::Luma => 1,
            jpeg_encoder::ColorType::Rgb => 3,
            _ => 4,
        };
        let px = vec![128u8; w as usize * h as usize * bpp];
        let mut buf = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut buf, 90);
        enc.set_progressive(progressive);
        enc.encode(&px, w, h, color).unwrap();
        buf
    }

    #[test]
    fn reads_size_components_and_mode_from_the_header() {
        let info = jpeg_header(&encode(jpeg_encoder::ColorType::Rgb, 37, 21, false)).unwrap();
        assert_eq!((info.width, info.height, info.components, info.progressive), (37, 21, 3, false));
        let info = jpeg_header(&encode(jpeg_encoder::ColorType::Luma, 5, 9, true)).unwrap();
        assert_eq!((info.width, info.height, info.components, info.progressive), (5, 9, 1, true));
        let info = jpeg_header(&encode(jpeg_encoder::ColorType::Cmyk, 8, 8, false)).unwrap();
        assert_eq!((info.components, info.adobe_transform), (4, Some(0)));
        assert!(info.needs_conversion());
        let info = jpeg_header(&encode(jpeg_encoder::ColorType::CmykAsYcck, 8, 8, false)).unwrap();
        assert_eq!((info.components, info.adobe_transform), (4, Some(2)));
    }

    #[test]
    fn trailing_zero_padding_is_accepted() {
        let mut jpg = encode(jpeg_encoder::ColorType::Rgb, 8, 8, false);
        jpg.extend_from_slice(&[0; 300]);
        assert!(jpeg_header(&jpg).is_ok());
    }

    #[test]
    fn truncation_wrong_magic_and_empty_files_are_rejected_without_decoding() {
        let jpg = encode(jpeg_encoder::ColorType::Rgb, 64, 64, false);
        for cut in [3, 20, jpg.len() / 2, jpg.len() - 1] {
            let err = sniff(&jpg[..cut]).unwrap_err();
            assert!(err.contains("truncated") || err.contains("corrupt"), "cut {cut}: {err}");
        }
        assert_eq!(sniff(&[]).unwrap_err(), "zero-byte file");
        assert!(sniff(b"hello world, not an image").unwrap_err().contains("not an image"));
        // Right magic and end marker, but garbage in between.
        let mut fake = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x02, 0x12, 0x34];
        fake.extend_from_slice(&[0xFF, 0xD9]);
        assert!(sniff(&fake).unwrap_err().contains("corrupt JPEG header"));
    }

    #[test]
    fn png_bytes_are_recognised_whatever_the_name() {
        let mut png = Vec::new();
        image::RgbImage::new(3, 2)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(sniff(&png).unwrap(), Kind::Png);
    }
}
