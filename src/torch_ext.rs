//! Safe wrappers for the libtorch calls tch 0.24 does not expose (csrc/torch_ext.cpp): autocast
//! with a chosen reduced precision, the channels_last memory format, the gradient-scaler and fused
//! SGD kernels, the CUDA caching allocator's statistics, and the profiler's device time.
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::{Device, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn moco_ext_free(message: *mut c_char);
    fn moco_ext_autocast_enter(
        cuda: c_int,
        dtype: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> *mut c_char;
    fn moco_ext_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_dtype: c_int) -> *mut c_char;
    fn moco_ext_to_channels_last(input: *const c_void, out: *mut *mut c_void) -> *mut c_char;
    fn moco_ext_is_channels_last(input: *const c_void, out: *mut c_int) -> *mut c_char;
    fn moco_ext_unscale(
        grad: *const c_void,
        found_inf: *const c_void,
        inv_scale: *const c_void,
    ) -> *mut c_char;
    fn moco_ext_fused_sgd(
        param: *const c_void,
        grad: *const c_void,
        buf: *const c_void,
        momentum: f64,
        lr: f64,
        found_inf: *const c_void,
    ) -> *mut c_char;
    fn moco_ext_set_grad(param: *const c_void, grad: *const c_void) -> *mut c_char;
    fn moco_ext_cuda_bf16_supported(device: c_int, out: *mut c_int) -> *mut c_char;
    fn moco_ext_cuda_memory(
        device: c_int,
        allocated: *mut i64,
        reserved: *mut i64,
        peak: *mut i64,
    ) -> *mut c_char;
    fn moco_ext_profile_start(cuda: c_int) -> *mut c_char;
    fn moco_ext_profile_stop(busy_ns: *mut i64, device_activities: *mut i64) -> *mut c_char;
}

/// Turns the message of a failed call into an error (and frees it).
pub(crate) fn check(message: *mut c_char) -> anyhow::Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string from strdup, owned by us.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { moco_ext_free(message) };
    Err(anyhow::anyhow!("libtorch: {text}"))
}

pub(crate) fn raw(t: &Tensor) -> *const c_void {
    t.as_ptr() as *const c_void
}

/// The reduced precision autocast computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReducedPrecision {
    Bf16,
    Fp16,
}

impl ReducedPrecision {
    /// c10::ScalarType codes.
    fn scalar_type(self) -> c_int {
        match self {
            ReducedPrecision::Fp16 => 5,
            ReducedPrecision::Bf16 => 15,
        }
    }
}

/// While alive, operations on `device`'s type run under autocast (`torch.autocast`): matrix
/// products and convolutions in the reduced precision, reductions and losses in fp32. The state is
/// per thread, like grad mode; dropping the guard restores the previous state.
pub struct AutocastGuard {
    cuda: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl AutocastGuard {
    pub fn new(device: Device, precision: ReducedPrecision) -> anyhow::Result<Self> {
        let cuda = c_int::from(device.is_cuda());
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain values and out-pointers to locals.
        check(unsafe {
            moco_ext_autocast_enter(
                cuda,
                precision.scalar_type(),
                &mut prev_enabled,
                &mut prev_dtype,
            )
        })?;
        Ok(AutocastGuard {
            cuda,
            prev_enabled,
            prev_dtype,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: restores the values reported by the matching enter call.
        let result =
            check(unsafe { moco_ext_autocast_exit(self.cuda, self.prev_enabled, self.prev_dtype) });
        if let Err(e) = result {
            tracing::error!("leaving autocast failed: {e}");
        }
    }
}

/// `x` in the channels_last (NHWC) memory format, the layout cuDNN's tensor-core convolutions use
/// without transposing. Same values and shape; a copy unless `x` already is.
pub fn to_channels_last(x: &Tensor) -> Tensor {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `x` is a live tensor; on success `out` is a new at::Tensor that we own.
    check(unsafe { moco_ext_to_channels_last(raw(x), &mut out) })
        .expect("a 4-d tensor converts to channels_last");
    unsafe { Tensor::from_ptr(out as *mut C_tensor) }
}

/// Whether `x` is a 4-d tensor laid out channels_last.
pub fn is_channels_last(x: &Tensor) -> bool {
    let mut out = 0;
    // SAFETY: `x` is a live tensor; `out` a local.
    check(unsafe { moco_ext_is_channels_last(raw(x), &mut out) })
        .expect("querying a layout cannot fail");
    out != 0
}

/// `grad *= inv_scale`, and `found_inf` (a float scalar on grad's device) becomes 1 if any
/// element is NaN or infinite. Runs on the device without synchronising.
pub fn unscale_and_check(grad: &Tensor, found_inf: &Tensor, inv_scale: &Tensor) {
    // SAFETY: live tensors on one device; libtorch checks kinds and devices and reports errors.
    check(unsafe { moco_ext_unscale(raw(grad), raw(found_inf), raw(inv_scale)) })
        .expect("gradient unscaling on matching devices and kinds");
}

/// One SGD step on a flat parameter tensor, fused into one kernel: `buf = momentum·buf + grad;
/// param -= lr·buf` (torch.optim.SGD with dampening 0). With `found_inf` non-zero the step is
/// skipped on the device, with no host synchronisation.
pub fn fused_sgd_step(
    param: &Tensor,
    grad: &Tensor,
    buf: &Tensor,
    momentum: f64,
    lr: f64,
    found_inf: Option<&Tensor>,
) {
    let inf = found_inf.map_or(std::ptr::null(), raw);
    // SAFETY: live tensors of one shape and device; libtorch checks them.
    check(unsafe { moco_ext_fused_sgd(raw(param), raw(grad), raw(buf), momentum, lr, inf) })
        .expect("SGD step on matching tensors");
}

/// Makes `grad` the gradient tensor of `param` (`param.grad = grad`): backward accumulates into it
/// in place, so it may be a view into a larger buffer.
pub fn set_grad(param: &Tensor, grad: &Tensor) {
    // SAFETY: live tensors; libtorch checks shape, kind and device and reports a mismatch.
    check(unsafe { moco_ext_set_grad(raw(param), raw(grad)) })
        .expect("a gradient of the parameter's shape, kind and device");
}

/// Whether `device` computes natively in bf16 (a CUDA device of compute capability 8.0 or
/// newer); false for the CPU.
pub fn cuda_bf16_supported(device: Device) -> bool {
    let Device::Cuda(index) = device else {
        return false;
    };
    if !tch::Cuda::is_available() {
        return false;
    }
    let mut out = 0;
    // SAFETY: plain value and an out-pointer to a local.
    check(unsafe { moco_ext_cuda_bf16_supported(index as c_int, &mut out) }).is_ok() && out != 0
}

/// What the CUDA caching allocator holds on one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Held by live tensors now.
    pub allocated: i64,
    /// Reserved from the driver (allocated plus the allocator's cache).
    pub reserved: i64,
    /// Most ever held by live tensors.
    pub peak_allocated: i64,
}

/// Allocator statistics of `device`; None on the CPU.
pub fn device_memory(device: Device) -> Option<DeviceMemory> {
    let Device::Cuda(index) = device else {
        return None;
    };
    let (mut allocated, mut reserved, mut peak_allocated) = (0, 0, 0);
    // SAFETY: out-pointers to locals.
    check(unsafe {
        moco_ext_cuda_memory(
            index as c_int,
            &mut allocated,
            &mut reserved,
            &mut peak_allocated,
        )
    })
    .ok()?;
    Some(DeviceMemory {
        allocated,
        reserved,
        peak_allocated,
    })
}

/// Device time recorded by libtorch's profiler between `start` and `finish`.
pub struct DeviceProfile {
    finished: bool,
}

/// What the device did while profiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceActivity {
    /// Time during which at least one kernel, copy or memset ran (overlaps counted once).
    pub busy_ns: i64,
    /// Kernels, copies and memsets recorded.
    pub activities: i64,
}

impl DeviceProfile {
    /// Starts profiling this thread's work on `device`'s type (on the CPU nothing runs "on a
    /// device", so the result is zero).
    pub fn start(device: Device) -> anyhow::Result<Self> {
        // SAFETY: no arguments beyond a flag.
        check(unsafe { moco_ext_profile_start(c_int::from(device.is_cuda())) })?;
        Ok(DeviceProfile { finished: false })
    }

    /// Stops profiling (synchronise the device first so every kernel has ended).
    pub fn finish(mut self) -> anyhow::Result<DeviceActivity> {
        self.finished = true;
        stop_profiler()
    }
}

impl Drop for DeviceProfile {
    fn drop(&mut self) {
        // The profiler must not stay on after its owner is gone.
        if !self.finished {
            let _ = stop_profiler();
        }
    }
}

fn stop_profiler() -> anyhow::Result<DeviceActivity> {
    let (mut busy_ns, mut activities) = (0, 0);
    // SAFETY: out-pointers to locals.
    check(unsafe { moco_ext_profile_stop(&mut busy_ns, &mut activities) })?;
    Ok(DeviceActivity {
        busy_ns,
        activities,
    })
}
