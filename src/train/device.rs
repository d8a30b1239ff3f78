//! How the engine uses its device: the name runs, logs and estimates give it, and the arithmetic
//! autocast computes in there.
use crate::config::Precision;
use crate::torch_ext::{self, AutocastGuard, ReducedPrecision};
use anyhow::bail;
use tch::Device;

/// What autocast computes in for `precision` on `device` (None = plain fp32).
pub fn reduced_precision(
    precision: Precision,
    device: Device,
) -> anyhow::Result<Option<ReducedPrecision>> {
    let bf16_native = torch_ext::cuda_bf16_supported(device);
    Ok(match precision {
        Precision::Fp32 => None,
        Precision::Auto if !device.is_cuda() => None,
        Precision::Auto if bf16_native => Some(ReducedPrecision::Bf16),
        Precision::Auto | Precision::Fp16 => Some(ReducedPrecision::Fp16),
        Precision::Bf16 if device.is_cuda() && !bf16_native => bail!(
            "precision: {} does not compute in bf16 natively (compute capability below 8.0); \
             use fp16 or auto",
            device_name(device)
        ),
        Precision::Bf16 => Some(ReducedPrecision::Bf16),
    })
}

/// How the log, `doctor` and the bench name a resolved precision.
pub fn precision_label(precision: Option<ReducedPrecision>) -> &'static str {
    match precision {
        None => "fp32",
        Some(ReducedPrecision::Bf16) => "bf16 autocast",
        Some(ReducedPrecision::Fp16) => "fp16 autocast with loss scaling",
    }
}

/// An autocast region for the forward passes, or nothing in fp32.
pub(crate) fn autocast(
    device: Device,
    precision: Option<ReducedPrecision>,
) -> anyhow::Result<Option<AutocastGuard>> {
    precision.map(|p| AutocastGuard::new(device, p)).transpose()
}

/// "cpu" or "cuda:N": how runs, logs and estimates name a device.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
