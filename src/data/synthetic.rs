//! The built-in synthetic dataset: procedurally drawn shapes in ten classes.
//!
//! Each image is a wallpaper of one shape (the class): copies on a regular grid with a random cell
//! size, offset and slight rotation, in a random grey level, on a two-level grey gradient
//! background with a faint random tint and pixel noise. Brightness, size and position carry no
//! information about the class, so a kNN classifier on encoder features scores well only when
//! the encoder looks past them to shape. Repeating the shape keeps it in view under MoCo's random
//! crops (a single small shape is often cropped away, leaving two views with nothing in common).
//!
//! Why grey levels rather than random colours: MoCo learns whatever tells one image from the
//! others across two augmented views. A random colour per image survives the colour jitter of the
//! CIFAR recipe well enough to be that cue, so the encoder learns colour and kNN on shape does not
//! improve (a narrow ResNet-18 stayed at 14–18 % over 6 epochs). With brightness, which the
//! jitter's brightness and contrast factors scramble, instances differ mostly by shape, cell size
//! and rotation, and the same run goes from 36 % at random initialisation to 56 %.
//!
//! Images are drawn on demand from a generator seeded by (seed, split, index), so the set costs no
//! memory, is identical on every machine, and needs no download.
use super::Dataset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seed of the built-in set (fixed so every install sees the same images).
pub const SYNTHETIC_SEED: u64 = 0x5eed_5a9e;

pub const CLASS_NAMES: [&str; 10] = [
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_bars",
    "vertical_bars",
    "diamond",
    "star",
    "checker",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

pub struct Synthetic {
    seed: u64,
    split: Split,
    len: usize,
    size: usize,
    class_names: Vec<String>,
}

impl Synthetic {
    pub fn new(seed: u64, split: Split, len: usize, size: usize) -> Self {
        Synthetic {
            seed,
            split,
            len,
            size,
            class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Classes cycle with the index, so every class holds len/10 images (±1).
    pub fn class_of(index: usize) -> usize {
        index % CLASS_NAMES.len()
    }

    fn rng_for(&self, index: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let split = match self.split {
            Split::Train => 0u64,
            Split::Test => 1u64,
        };
        rng.set_stream((split << 48) | index as u64);
        rng
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }

    fn image_size(&self) -> (usize, usize) {
        (self.size, self.size)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn label(&self, index: usize) -> i64 {
        Self::class_of(index) as i64
    }

    fn read_into(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            index < self.len,
            "image {index} is out of range (synthetic split of {} images)",
            self.len
        );
        anyhow::ensure!(
            out.len() == self.size * self.size * 3,
            "buffer of {} bytes for a {}×{} RGB image",
            out.len(),
            self.size,
            self.size
        );
        draw(
            &mut self.rng_for(index),
            Self::class_of(index),
            self.size,
            out,
        );
        Ok(())
    }
}

/// A grey level with a faint tint: each channel within ±`TINT` of one random level.
fn random_grey(rng: &mut ChaCha8Rng) -> [f32; 3] {
    const TINT: f32 = 0.06;
    let level: f32 = rng.gen();
    let mut channel = || (level + rng.gen_range(-TINT..TINT)).clamp(0.0, 1.0);
    [channel(), channel(), channel()]
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Is the point (u, v), in shape coordinates (the shape spans [-1, 1]²), inside shape `class`?
fn inside(class: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match class {
        0 => r <= 1.0,
        1 => u.abs().max(v.abs()) <= 0.8,
        2 => {
            // Equilateral-ish triangle pointing up: base at v = 0.8, apex at v = -0.9.
            let t = (v + 0.9) / 1.7;
            (0.0..=1.0).contains(&t) && u.abs() <= t
        }
        3 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        4 => (0.55..=1.0).contains(&r),
        5 => u.abs() <= 1.0 && v.abs() <= 1.0 && ((v + 1.0) * 2.5).floor() as i32 % 2 == 0,
        6 => u.abs() <= 1.0 && v.abs() <= 1.0 && ((u + 1.0) * 2.5).floor() as i32 % 2 == 0,
        7 => u.abs() + v.abs() <= 1.0,
        8 => {
            // Five-pointed star: the edge radius swings between 0.4 (valleys) and 1.0 (tips).
            let theta = v.atan2(u) + std::f32::consts::FRAC_PI_2;
            let k = (theta * 5.0 / std::f32::consts::TAU).rem_euclid(1.0);
            let d = (1.0 - 2.0 * k).abs();
            r <= 0.4 + 0.6 * d * d
        }
        _ => {
            u.abs() <= 1.0
                && v.abs() <= 1.0
                && (((u + 1.0) * 2.0).floor() as i32 + ((v + 1.0) * 2.0).floor() as i32) % 2 == 0
        }
    }
}

/// Draws one image of `class` into `out` (HWC, `size`×`size`).
fn draw(rng: &mut ChaCha8Rng, class: usize, size: usize, out: &mut [u8]) {
    let s = size as f32;
    let bg_a = random_grey(rng);
    // The gradient spans at most 0.3 in distance, leaving room for a foreground apart from both
    // ends.
    let mut bg_b = random_grey(rng);
    for _ in 0..16 {
        if distance(bg_a, bg_b) < 0.3 {
            break;
        }
        bg_b = random_grey(rng);
    }
    // A foreground far enough from both background levels that the shape is always visible.
    let mut fg = random_grey(rng);
    for _ in 0..32 {
        if distance(fg, bg_a) > 0.45 && distance(fg, bg_b) > 0.45 {
            break;
        }
        fg = random_grey(rng);
    }
    let gradient_angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    let (gx, gy) = (gradient_angle.cos(), gradient_angle.sin());
    let noise: f32 = rng.gen_range(0.0..0.08);
    // Grid cells of 30–50% of the image side, each holding one copy of the shape at 80% of the
    // cell, from a random origin.
    let cell = s * rng.gen_range(0.30f32..0.50);
    let half = cell * 0.4;
    let ox: f32 = rng.gen_range(0.0..cell);
    let oy: f32 = rng.gen_range(0.0..cell);
    // A small rotation keeps squares apart from diamonds and horizontal bars from vertical ones.
    let angle: f32 = rng.gen_range(-0.26f32..0.26);
    let (sin, cos) = angle.sin_cos();
    for y in 0..size {
        for x in 0..size {
            let px = x as f32 + 0.5;
            let py = y as f32 + 0.5;
            // Offset from the centre of this pixel's cell, in units of the shape's half side.
            let dx = ((px - ox).rem_euclid(cell) - cell / 2.0) / half;
            let dy = ((py - oy).rem_euclid(cell) - cell / 2.0) / half;
            let u = cos * dx + sin * dy;
            let v = -sin * dx + cos * dy;
            let colour = if inside(class, u, v) {
                fg
            } else {
                // Position along the gradient direction, 0..1 across the image.
                let t = (((px / s - 0.5) * gx + (py / s - 0.5) * gy) + 0.71) / 1.42;
                let t = t.clamp(0.0, 1.0);
                [
                    bg_a[0] + (bg_b[0] - bg_a[0]) * t,
                    bg_a[1] + (bg_b[1] - bg_a[1]) * t,
                    bg_a[2] + (bg_b[2] - bg_a[2]) * t,
                ]
            };
            let o = (y * size + x) * 3;
            // One draw per pixel: three 21-bit uniform numbers for the three channels' noise.
            let bits: u64 = rng.gen();
            for c in 0..3 {
                let unit = ((bits >> (21 * c)) & 0x1f_ffff) as f32 / 2_097_152.0;
                let n = (unit * 2.0 - 1.0) * noise;
                out[o + c] = ((colour[c] + n).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_foreground_pixels_in_its_box() {
        for class in 0..10 {
            let count = (0..40)
                .flat_map(|y| (0..40).map(move |x| (x, y)))
                .filter(|&(x, y)| inside(class, x as f32 / 20.0 - 1.0, y as f32 / 20.0 - 1.0))
                .count();
            assert!(count > 200 && count < 1600, "class {class}: {count}");
        }
    }
}
