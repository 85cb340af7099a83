//! JPEG decoding through the system libjpeg-turbo (csrc/sftok_jpeg.c), the decoder PIL uses:
//! with the same settings (islow IDCT, fancy upsampling) the pixels are PIL's, bit for bit.
//!
//! [`JpegDecoder::open`] reads the header; [`JpegDecoder::decode_region_into`] decodes only the
//! top rows and the columns a caller needs — a loader cutting a crop from the top of a portrait
//! image stops there and never entropy-decodes the rest.

use anyhow::{Result, bail};
use std::ffi::{CStr, c_char, c_int};
use std::ptr::NonNull;

#[repr(C)]
struct RawHandle {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn sftok_jpeg_open(data: *const u8, len: usize, out: *mut *mut RawHandle, width: *mut u32, height: *mut u32, msg: *mut c_char, cap: usize) -> c_int;
    fn sftok_jpeg_read(h: *mut RawHandle, x0: u32, x1: u32, rows: u32, pixels: *mut u8, stride: usize, msg: *mut c_char, cap: usize) -> c_int;
    fn sftok_jpeg_entropy_only(h: *mut RawHandle, msg: *mut c_char, cap: usize) -> c_int;
    fn sftok_jpeg_free(h: *mut RawHandle);
}

const OK: c_int = 0;
const UNSUPPORTED: c_int = 1;

/// PIL's decompression-bomb error threshold (2 × `Image.MAX_IMAGE_PIXELS`): a header claiming
/// more pixels is refused before any buffer is allocated, as PIL refuses to open it.
pub const MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// A JPEG whose header has been read. Borrows the encoded bytes: libjpeg reads them in place.
pub struct JpegDecoder<'a> {
    handle: NonNull<RawHandle>,
    pub width: u32,
    pub height: u32,
    _data: std::marker::PhantomData<&'a [u8]>,
}

// The handle is only touched through `&mut self` / by value, and libjpeg keeps no thread-local state.
unsafe impl Send for JpegDecoder<'_> {}

fn message(buf: &[c_char]) -> String {
    // SAFETY: the C side always NUL-terminates within the buffer (snprintf, or the zeroed buffer).
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

impl<'a> JpegDecoder<'a> {
    /// Reads the header. `Ok(None)`: a JPEG libjpeg-turbo does not turn into RGB the way PIL does
    /// (CMYK, YCCK, 12-bit): decode it another way.
    pub fn open(data: &'a [u8]) -> Result<Option<JpegDecoder<'a>>> {
        let mut msg = [0 as c_char; 256];
        let (mut handle, mut width, mut height) = (std::ptr::null_mut(), 0u32, 0u32);
        // SAFETY: valid pointers for the call; `data` outlives the handle (lifetime 'a).
        let rc = unsafe { sftok_jpeg_open(data.as_ptr(), data.len(), &mut handle, &mut width, &mut height, msg.as_mut_ptr(), msg.len()) };
        match rc {
            OK => {
                let handle = NonNull::new(handle).expect("sftok_jpeg_open returned OK without a handle");
                let decoder = JpegDecoder { handle, width, height, _data: std::marker::PhantomData };
                if width as u64 * height as u64 > MAX_PIXELS {
                    bail!("the JPEG claims {width}×{height} pixels, over PIL's decompression-bomb limit of {MAX_PIXELS}");
                }
                Ok(Some(decoder))
            }
            UNSUPPORTED => Ok(None),
            _ => bail!("cannot decode the JPEG: {}", message(&msg)),
        }
    }

    /// Decodes the first `rows` rows (at most the height) as RGB8, `width · 3` bytes a row.
    pub fn decode_rows(self, rows: u32) -> Result<Vec<u8>> {
        let len = rows.min(self.height) as usize * self.width as usize * 3;
        // Not zeroed: with all columns the C side writes every byte before the length is set.
        let mut pixels = Vec::<u8>::with_capacity(len);
        let width = self.width;
        // SAFETY: the buffer has room for `rows · width · 3` bytes, all of them written on success.
        unsafe {
            self.read(0, width, rows, pixels.as_mut_ptr())?;
            pixels.set_len(len);
        }
        Ok(pixels)
    }

    /// Decodes the first `rows` rows (at most the height), at least columns `cols`, into `out`
    /// laid out as the whole image (`width · 3` bytes a row). Columns outside the decoded range
    /// keep what `out` held; the few columns at the range's edges may differ from a full decode
    /// (libjpeg upsamples chroma there as at an image edge), so ask for a margin.
    pub fn decode_region_into(self, rows: u32, cols: std::ops::Range<u32>, out: &mut [u8]) -> Result<()> {
        let need = rows.min(self.height) as usize * self.width as usize * 3;
        if out.len() < need {
            bail!("a {}-wide, {rows}-row RGB region needs {need} bytes, the buffer holds {}", self.width, out.len());
        }
        // SAFETY: `out` holds the rows the C side writes (checked above).
        unsafe { self.read(cols.start, cols.end, rows, out.as_mut_ptr()) }
    }

    /// # Safety
    /// `pixels` must have room for `min(rows, height) · width · 3` bytes.
    unsafe fn read(self, x0: u32, x1: u32, rows: u32, pixels: *mut u8) -> Result<()> {
        let mut msg = [0 as c_char; 256];
        let (handle, stride) = (self.handle.as_ptr(), self.width as usize * 3);
        std::mem::forget(self); // sftok_jpeg_read frees the handle whatever happens
        // SAFETY: a live handle; the caller vouches for the buffer.
        let rc = unsafe { sftok_jpeg_read(handle, x0, x1, rows, pixels, stride, msg.as_mut_ptr(), msg.len()) };
        if rc != OK {
            bail!("cannot decode the JPEG: {}", message(&msg));
        }
        Ok(())
    }

    /// Entropy-decodes the whole file and nothing more (no IDCT, upsampling or colour
    /// conversion): the floor under any decode of it, which `bench-load` reports.
    pub fn entropy_decode_only(self) -> Result<()> {
        let mut msg = [0 as c_char; 256];
        let handle = self.handle.as_ptr();
        std::mem::forget(self); // sftok_jpeg_entropy_only frees the handle whatever happens
        // SAFETY: a live handle.
        if unsafe { sftok_jpeg_entropy_only(handle, msg.as_mut_ptr(), msg.len()) } != OK {
            bail!("cannot decode the JPEG: {}", message(&msg));
        }
        Ok(())
    }

    /// The whole image as RGB8.
    pub fn decode(self) -> Result<Vec<u8>> {
        let rows = self.height;
        self.decode_rows(rows)
    }
}

impl Drop for JpegDecoder<'_> {
    fn drop(&mut self) {
        // SAFETY: a live handle not yet given to sftok_jpeg_read (which frees it itself).
        unsafe { sftok_jpeg_free(self.handle.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(width: u16, height: u16, color: jpeg_encoder::ColorType, channels: usize) -> Vec<u8> {
        let px: Vec<u8> = (0..width as usize * height as usize * channels).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
        // 4:2:0 as in ImageNet: chroma upsampling is where partial decodes could go wrong.
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
        encoder.encode(&px, width, height, color).unwrap();
        out
    }

    #[test]
    fn top_rows_equal_the_full_decode() {
        let jpg = encoded(40, 50, jpeg_encoder::ColorType::Rgb, 3);
        let full = JpegDecoder::open(&jpg).unwrap().unwrap().decode().unwrap();
        assert_eq!(full.len(), 40 * 50 * 3);
        let top = JpegDecoder::open(&jpg).unwrap().unwrap().decode_rows(21).unwrap();
        assert_eq!(top[..], full[..40 * 21 * 3]);
        assert_eq!(JpegDecoder::open(&jpg).unwrap().unwrap().decode_rows(999).unwrap(), full);
    }

    #[test]
    fn a_column_range_matches_the_full_decode_inside_its_margin() {
        let jpg = encoded(96, 40, jpeg_encoder::ColorType::Rgb, 3);
        let full = JpegDecoder::open(&jpg).unwrap().unwrap().decode().unwrap();
        let mut out = vec![7u8; full.len()];
        JpegDecoder::open(&jpg).unwrap().unwrap().decode_region_into(30, 37..61, &mut out).unwrap();
        let row = 96 * 3;
        for r in 0..30 {
            // 4 columns of margin on each side of the requested range are exact.
            assert_eq!(out[r * row + 41 * 3..r * row + 57 * 3], full[r * row + 41 * 3..r * row + 57 * 3], "row {r}");
        }
        assert!(out[30 * row..].iter().all(|&v| v == 7), "rows below the range were written");
        assert!(out[..3].iter().all(|&v| v == 7), "column 0 lies outside the iMCU-aligned range and was written");
        assert!(JpegDecoder::open(&jpg).unwrap().unwrap().decode_region_into(30, 0..96, &mut out[..100]).is_err());
    }

    #[test]
    fn grayscale_becomes_rgb_and_cmyk_is_left_to_the_caller() {
        let gray = encoded(8, 8, jpeg_encoder::ColorType::Luma, 1);
        let rgb = JpegDecoder::open(&gray).unwrap().unwrap().decode().unwrap();
        assert!(rgb.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let cmyk = encoded(8, 8, jpeg_encoder::ColorType::Cmyk, 4);
        assert!(JpegDecoder::open(&cmyk).unwrap().is_none());
    }

    #[test]
    fn bad_data_is_an_error_not_a_crash() {
        let jpg = encoded(64, 64, jpeg_encoder::ColorType::Rgb, 3);
        let err = JpegDecoder::open(&jpg[..20]).err().expect("a cut header fails");
        assert!(format!("{err}").contains("cannot decode the JPEG"), "{err}");
        // Header intact, scan data cut: libjpeg pads with gray and warns; we refuse.
        let err = JpegDecoder::open(&jpg[..jpg.len() / 2]).unwrap().unwrap().decode().unwrap_err();
        assert!(format!("{err}").contains("truncated"), "{err}");
        // An unopened-then-dropped decoder frees its handle (run under valgrind/ASan to see it).
        drop(JpegDecoder::open(&jpg).unwrap().unwrap());
        assert!(JpegDecoder::open(b"not a jpeg at all").is_err());
        // A header claiming 60000×60000 pixels (SOF0 size fields patched) is refused up front.
        let mut bomb = jpg.clone();
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline SOF0 marker");
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let err = JpegDecoder::open(&bomb).err().expect("a bomb is refused");
        assert!(format!("{err}").contains("decompression-bomb"), "{err}");
    }
}
