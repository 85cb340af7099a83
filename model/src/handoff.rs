//! Loader batches → tensors on the compute device: uint8 NHWC is copied once to the device
//! (pinned + non-blocking on CUDA) while still 8-bit (4× fewer bytes to move than float), then
//! permuted to NCHW and cast to float in [0, 1] there (`ToTensor`).

use sftok_pipeline::batch::Batch;
use sftok_pipeline::transform::RgbImage;
use tch::{Device, Kind, Tensor};

/// Images [B, 3, S, S] float in [0, 1] on `device`.
pub fn images(batch: &Batch, device: Device) -> Tensor {
    let s = batch.size as i64;
    nhwc_u8_to_float(&batch.images, [batch.len() as i64, s, s], device)
}

/// Row-major RGB8 pixels `[n, h, w, 3]` → float [n, 3, h, w] in [0, 1] on `device` (`ToTensor`).
pub fn nhwc_u8_to_float(bytes: &[u8], dims: [i64; 3], device: Device) -> Tensor {
    // Contiguous before the cast, so the float tensor has the plain NCHW layout convolutions expect.
    nhwc_u8_to_device(bytes, dims, device).permute([0, 3, 1, 2]).contiguous().to_kind(Kind::Float) / 255.0
}

/// Row-major RGB8 pixels `[n, h, w, 3]` → uint8 [n, h, w, 3] on `device` (pinned + non-blocking
/// copy on CUDA), the input the FID Inception takes.
pub fn nhwc_u8_to_device(bytes: &[u8], [n, h, w]: [i64; 3], device: Device) -> Tensor {
    let nhwc = Tensor::from_data_size(bytes, &[n, h, w, 3], Kind::Uint8);
    match device {
        Device::Cuda(_) => nhwc.pin_memory(device).to_device_(device, Kind::Uint8, true, false),
        _ => nhwc,
    }
}

/// RGB8 images of one size → their pixels back to back and their `[n, h, w]`, the input of
/// [`nhwc_u8_to_float`] / [`nhwc_u8_to_device`].
pub fn pack_rgb(images: &[RgbImage]) -> (Vec<u8>, [i64; 3]) {
    let (w, h) = (images[0].width as i64, images[0].height as i64);
    let bytes: Vec<u8> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
    (bytes, [images.len() as i64, h, w])
}

/// Proxy codes [B, L] int64 on `device`, when the batch carries them.
pub fn codes(batch: &Batch, device: Device) -> Option<Tensor> {
    let codes = batch.codes.as_ref()?;
    let v: Vec<i64> = codes.iter().map(|&c| c as i64).collect();
    Some(Tensor::from_slice(&v).reshape([batch.len() as i64, batch.codes_per_image as i64]).to_device(device))
}
