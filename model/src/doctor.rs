//! `doctor`: proves that this binary loads libtorch and computes on the chosen device.
//! Used by users after installation, by `make demo`, by tests (no LD_LIBRARY_PATH) and by
//! tools/gpu-check.sh on a GPU machine.

use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor};

#[derive(Debug, serde::Serialize)]
pub struct DoctorReport {
    pub device: String,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    /// max |A·B − reference| for a float32 matmul checked against a float64 one.
    pub matmul_f32_max_err: f64,
    /// max relative error of the same product in bfloat16.
    pub matmul_bf16_rel_err: f64,
}

pub fn run(device: Device) -> Result<DoctorReport> {
    tch::manual_seed(0);
    let a = Tensor::randn([256, 256], (Kind::Double, Device::Cpu));
    let b = Tensor::randn([256, 256], (Kind::Double, Device::Cpu));
    let reference = a.matmul(&b);
    let f32_prod = a.to_device(device).to_kind(Kind::Float).matmul(&b.to_device(device).to_kind(Kind::Float));
    let bf16_prod = a.to_device(device).to_kind(Kind::BFloat16).matmul(&b.to_device(device).to_kind(Kind::BFloat16));
    let err = |t: &Tensor| -> f64 { (t.to_device(Device::Cpu).to_kind(Kind::Double) - &reference).abs().max().double_value(&[]) };
    let scale = reference.abs().max().double_value(&[]);
    let report = DoctorReport {
        device: crate::device::describe(device),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        matmul_f32_max_err: err(&f32_prod),
        matmul_bf16_rel_err: err(&bf16_prod) / scale,
    };
    ensure!(report.matmul_f32_max_err < 1e-2, "float32 matmul on {} is wrong: {report:?}", report.device);
    ensure!(report.matmul_bf16_rel_err < 5e-2, "bfloat16 matmul on {} is wrong: {report:?}", report.device);
    Ok(report)
}
