//! The tensor kernels of the colour operations, on float `[N, 3, H, W]` images in [0, 1], as
//! torchvision computes them: grayscale, brightness, contrast, saturation, hue, solarize and the
//! Gaussian blur.
use super::Kernel;
use tch::{Kind, Tensor};

/// torchvision's `rgb_to_grayscale` weights.
const GRAY: [f64; 3] = [0.2989, 0.587, 0.114];

/// Blur kernel side for an image side: ≈ 10%, odd, at least 3.
pub fn blur_kernel_size(side: i64) -> i64 {
    let k = ((side as f64) * 0.1).round() as i64;
    let k = if k % 2 == 0 { k + 1 } else { k };
    k.max(3)
}

/// torchvision's `rgb_to_grayscale` of float `[N, 3, H, W]`: `[N, 1, H, W]`.
pub fn grayscale(x: &Tensor) -> Tensor {
    let mut gray = x.narrow(1, 0, 1) * GRAY[0];
    gray += x.narrow(1, 1, 1) * GRAY[1];
    gray += x.narrow(1, 2, 1) * GRAY[2];
    gray
}

fn clamp01(mut x: Tensor) -> Tensor {
    let _ = x.clamp_(0.0, 1.0);
    x
}

/// torchvision's `_blend` in place: `f·x + (1 − f)·other`, clamped to [0, 1].
fn blend_(mut x: Tensor, other: &Tensor, f: &Tensor) -> Tensor {
    x -= other;
    x *= f;
    x += other;
    clamp01(x)
}

/// torchvision's `adjust_brightness` with one factor per sample (`[N, 1, 1, 1]`).
pub fn adjust_brightness(x: &Tensor, factor: &Tensor) -> Tensor {
    brightness_(x.copy(), factor)
}

fn brightness_(mut x: Tensor, factor: &Tensor) -> Tensor {
    x *= factor;
    clamp01(x)
}

/// torchvision's `adjust_contrast`: blend with the mean of the grayscale image.
pub fn adjust_contrast(x: &Tensor, factor: &Tensor) -> Tensor {
    contrast_(x.copy(), factor)
}

fn contrast_(x: Tensor, factor: &Tensor) -> Tensor {
    let mean = grayscale(&x).mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
    blend_(x, &mean, factor)
}

/// torchvision's `adjust_saturation`: blend with the grayscale image.
pub fn adjust_saturation(x: &Tensor, factor: &Tensor) -> Tensor {
    saturation_(x.copy(), factor)
}

fn saturation_(x: Tensor, factor: &Tensor) -> Tensor {
    let gray = grayscale(&x);
    blend_(x, &gray, factor)
}

/// Inverts values at or above `threshold` (torchvision's `solarize` on float images).
pub fn solarize(x: &Tensor, threshold: f64) -> Tensor {
    // x + [x ≥ t]·(1 − 2x), with a 0/1 mask: `where` is slow on the CPU.
    let mut flip = x * -2.0;
    flip += 1.0;
    flip *= x.ge(threshold).to_kind(Kind::Float);
    flip += x;
    flip
}

/// One kernel on `x` ([n, 3, S, S] in [0, 1], owned: changed in place where the kernel can)
/// with one parameter per sample.
pub(super) fn apply(kernel: Kernel, x: Tensor, params: &Tensor) -> Tensor {
    let n = x.size()[0];
    let per_sample = || params.view([n, 1, 1, 1]);
    match kernel {
        Kernel::Brightness => brightness_(x, &per_sample()),
        Kernel::Contrast => contrast_(x, &per_sample()),
        Kernel::Saturation => saturation_(x, &per_sample()),
        Kernel::Hue => hue_(x, &per_sample()),
        Kernel::Grayscale => {
            let gray = grayscale(&x);
            let mut x = x;
            x.copy_(&gray.expand([n, 3, -1, -1], false));
            x
        }
        Kernel::Blur => gaussian_blur(&x, params),
        Kernel::Solarize { threshold } => solarize(&x, threshold),
    }
}

/// torchvision's `adjust_hue`: shift the hue in HSV space by `shift` (a fraction of the circle,
/// `[N, 1, 1, 1]`).
///
/// With V = max(r, g, b), m = min and C = V − m, HSV → RGB is `V − C·clamp(min(k, 4 − k), 0, 1)`
/// with `k = (n + 6H) mod 6` for n = 5, 3, 1 (R, G, B), so the round trip needs only 6H from RGB.
/// Written with cheap elementwise CPU kernels only (no `where`, `argmax` or `remainder`, which
/// are many times slower there).
pub fn adjust_hue(x: &Tensor, shift: &Tensor) -> Tensor {
    hue_(x.copy(), shift)
}

fn hue_(mut x: Tensor, shift: &Tensor) -> Tensor {
    let maxc = x.amax(1i64, true);
    let minc = x.amin(1i64, true);
    let chroma = &maxc - &minc;
    let mut six_h = {
        let r = x.narrow(1, 0, 1);
        let g = x.narrow(1, 1, 1);
        let b = x.narrow(1, 2, 1);
        // With C = 0 every difference below is 0 too, so any finite divisor does.
        let inv = chroma.clamp_min(1e-12).reciprocal();
        // 6H when r, g or b is the maximum. Where two tie the formulas agree modulo 6.
        let mut h_r = &g - &b;
        h_r *= &inv;
        let mut h_g = &b - &r;
        h_g *= &inv;
        h_g += 2.0;
        let mut h_b = &r - &g;
        h_b *= &inv;
        h_b += 4.0;
        // Select with 0/1 masks, r before g before b as torchvision: h = b; h += [g max]·(g − h);
        // h += [r max]·(r − h).
        h_g -= &h_b;
        h_g *= maxc.eq_tensor(&g).to_kind(Kind::Float);
        h_b += &h_g;
        h_r -= &h_b;
        h_r *= maxc.eq_tensor(&r).to_kind(Kind::Float);
        h_b += &h_r;
        h_b
    };
    six_h += shift * 6.0;
    // Into [0, 6]: 6H − 6·floor(6H / 6).
    let turns = (&six_h * (1.0 / 6.0)).floor();
    six_h -= turns * 6.0;
    // k = 6H + n ∈ [1, 11] for n = 5, 3, 1, written over x (no longer needed); the offsets are
    // made on the device (a host copy would synchronise a CUDA stream). On that range
    // clamp(min(k mod 6, 4 − k mod 6), 0, 1) = 1 − clamp(min(|k − 2|, |k − 8|) − 1, 0, 1), so
    // the channel is m + C·clamp(min(|k − 2|, |k − 8|) − 1, 0, 1).
    let offsets = Tensor::arange_start_step(5, 0, -2, (Kind::Float, x.device())).view([1, 3, 1, 1]);
    let _ = six_h.add_out(&x, &offsets);
    let mut far = &x - 8.0;
    let _ = far.abs_();
    x -= 2.0;
    let _ = x.abs_();
    let _ = x.clamp_max_tensor_(&far);
    x -= 1.0;
    let mut x = clamp01(x);
    x *= &chroma;
    x += &minc;
    x
}

/// Per-sample Gaussian blur (`sigma`: `[N]`): separable, reflection padding, one grouped
/// convolution per axis; kernel side from [`blur_kernel_size`].
pub fn gaussian_blur(x: &Tensor, sigma: &Tensor) -> Tensor {
    let size = x.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let k = blur_kernel_size(h.min(w)).min(2 * (h.min(w) - 1) + 1);
    let half = k / 2;
    let t = Tensor::arange_start(-half, half + 1, (Kind::Float, x.device())).view([1, k]);
    let sigma = sigma.view([n, 1]);
    let weights = (t.square() / (sigma.square() * -2.0)).exp();
    let weights = &weights / weights.sum_dim_intlist(1i64, true, Kind::Float);
    // One filter per (sample, channel): groups = n × c.
    let weights = weights.repeat_interleave_self_int(c, 0, None);
    let planes = x.reshape([1, n * c, h, w]);
    let across = planes.reflection_pad2d([half, half, 0, 0]).conv2d(
        &weights.view([n * c, 1, 1, k]),
        None::<Tensor>,
        1,
        0,
        1,
        n * c,
    );
    let down = across.reflection_pad2d([0, 0, half, half]).conv2d(
        &weights.view([n * c, 1, k, 1]),
        None::<Tensor>,
        1,
        0,
        1,
        n * c,
    );
    down.reshape([n, c, h, w])
}
