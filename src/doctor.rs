//! `moco-server doctor`: what this build links and what the machine offers.
use std::fmt::Write;

/// libtorch version this crate is built for (tch 0.24 ↔ libtorch 2.11.0).
pub const LIBTORCH_VERSION: &str = "2.11.0";
pub const TCH_VERSION: &str = "0.24.0";

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub kind: String,
}

/// Devices training can run on: the CPU, then every CUDA device.
pub fn devices() -> Vec<DeviceInfo> {
    let mut out = vec![DeviceInfo {
        name: "cpu".into(),
        kind: format!("CPU, {} threads", tch::get_num_threads()),
    }];
    for i in 0..tch::Cuda::device_count() as usize {
        out.push(DeviceInfo {
            name: format!("cuda:{i}"),
            kind: cuda_device_name(i).unwrap_or_else(|| "CUDA device".into()),
        });
    }
    out
}

/// The marketing name of a CUDA device, from nvidia-smi when it is there (tch does not expose
/// cudaGetDeviceProperties).
fn cuda_device_name(index: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .nth(index)
        .map(|s| s.trim().to_string())
}

/// The report printed by `moco-server doctor`. Touching tch here is what loads libtorch.
pub fn report() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "moco-server {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(s, "tch         {TCH_VERSION}");
    let _ = writeln!(s, "libtorch    {LIBTORCH_VERSION}");
    let cuda = tch::Cuda::is_available();
    let _ = writeln!(
        s,
        "CUDA        {}",
        if cuda { "available" } else { "not available" }
    );
    let count = tch::Cuda::device_count();
    let _ = writeln!(s, "devices     {count} CUDA device(s)");
    for d in devices().iter().skip(1) {
        let _ = writeln!(s, "  {}  {}", d.name, d.kind);
    }
    let _ = writeln!(
        s,
        "cuDNN       {}",
        if tch::Cuda::cudnn_is_available() {
            "available"
        } else {
            "not available"
        }
    );
    let precision = crate::train::device::reduced_precision(
        crate::config::Precision::Auto,
        tch::Device::cuda_if_available(),
    );
    let _ = writeln!(
        s,
        "precision   {} (what precision = auto uses here)",
        precision.map_or("unknown", crate::train::device::precision_label)
    );
    let _ = writeln!(s, "threads     {} (intra-op)", tch::get_num_threads());
    let _ = writeln!(
        s,
        "MKL-DNN     {}",
        if tch::utils::has_mkldnn() {
            "yes"
        } else {
            "no"
        }
    );
    let _ = writeln!(
        s,
        "OpenMP      {}",
        if tch::utils::has_openmp() {
            "yes"
        } else {
            "no"
        }
    );
    s
}
