//! Parameter draws on the host: crop boxes and colour-jitter factors, from the caller's
//! generator, exactly as torchvision's transforms draw them.
use super::recipes::Jitter;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A crop box in pixels of the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 attempts at a box of random area and
/// aspect ratio that fits, else a centre crop with the aspect ratio clamped to `ratio`.
pub fn draw_crop(
    rng: &mut ChaCha8Rng,
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        // Python's round() rounds half to even.
        let w = (target_area * aspect).sqrt().round_ties_even() as usize;
        let h = (target_area / aspect).sqrt().round_ties_even() as usize;
        if w > 0 && w <= width && h > 0 && h <= height {
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (
            width,
            ((width as f64 / ratio.0).round_ties_even() as usize).max(1),
        )
    } else if in_ratio > ratio.1 {
        (
            ((height as f64 * ratio.1).round_ties_even() as usize).max(1),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

pub(super) fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// One sample's colour jitter: factors (brightness, contrast, saturation, hue shift) and the
/// order the four operations run in (indices into that list).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterDraw {
    pub factors: [f32; 4],
    pub order: [usize; 4],
}

/// Draws whether a jitter applied with probability `p` happens and, if so, its factors (as
/// torchvision's `ColorJitter.get_params`) and a random order of the four operations.
pub fn draw_jitter(rng: &mut ChaCha8Rng, jitter: &Jitter, p: f64) -> Option<JitterDraw> {
    if rng.gen::<f64>() >= p {
        return None;
    }
    let factor = |rng: &mut ChaCha8Rng, x: f64| uniform(rng, (1.0 - x).max(0.0), 1.0 + x) as f32;
    let brightness = factor(rng, jitter.brightness);
    let contrast = factor(rng, jitter.contrast);
    let saturation = factor(rng, jitter.saturation);
    let hue = uniform(rng, -jitter.hue, jitter.hue) as f32;
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    Some(JitterDraw {
        factors: [brightness, contrast, saturation, hue],
        order,
    })
}
