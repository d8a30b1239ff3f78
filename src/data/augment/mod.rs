//! Batched augmentation on the training device: two independently augmented views per image.
//!
//! The recipes follow the official MoCo code (torchvision transforms) with their parameters:
//!
//! | recipe | crop scale | colour jitter (b, c, s, h), p | grayscale | blur σ∈[0.1, 2], p | solarize |
//! | --- | --- | --- | --- | --- | --- |
//! | v1 | 0.2–1 | 0.4, 0.4, 0.4, 0.4, always (after grayscale) | 0.2 | — | — |
//! | v2 | 0.2–1 | 0.4, 0.4, 0.4, 0.1, p 0.8 | 0.2 | 0.5 | — |
//! | cifar (demo) | 0.08–1 | 0.4, 0.4, 0.4, 0.1, p 0.8 | 0.2 | — | — |
//! | v3 view 1 | 0.08–1 | 0.4, 0.4, 0.2, 0.1, p 0.8 | 0.2 | 1.0 | — |
//! | v3 view 2 | 0.08–1 | 0.4, 0.4, 0.2, 0.1, p 0.8 | 0.2 | 0.1 | 0.2 |
//!
//! Every recipe crops with aspect ratio 3/4–4/3 and flips horizontally with p 0.5.
//!
//! How it runs: the random parameters of every sample (crop box, flip, which ops apply, jitter
//! factors and their order, blur sigma) are drawn on the host from the caller's
//! [`ChaCha8Rng`] — never from torch's global generator — so a run is reproducible and resumable
//! from the generator's state. They are uploaded as one small float tensor and one index tensor
//! per call (from pinned memory, without blocking, on CUDA). Then, per view:
//!
//! * crop + flip + resize in one resampling pass from the uint8 batch: each sample's affine map
//!   from output to input coordinates (scale to the crop box, shift to it, mirror for a flip) is
//!   evaluated into a sampling grid — per axis, since crops are axis-aligned, which is what
//!   `affine_grid_generator` would compute for the same matrices at a fraction of the cost —
//!   clamped to the box's outer pixel centres, and read with bilinear `grid_sampler`
//!   (align_corners = false). This equals torchvision's `RandomResizedCrop` (crop, then bilinear
//!   resize with `antialias=False`) + `RandomHorizontalFlip` to float precision. There is no
//!   antialiasing when a crop is downscaled; image folders are stored at `load_size` ≈ crop ×
//!   8/7, so crops are never strongly downscaled;
//! * colour ops on the samples they apply to (gathered with `index_select`, written back with
//!   `index_copy_`). Colour jitter follows torchvision's `ColorJitter` on float images —
//!   brightness, contrast (blend with the grayscale mean), saturation (blend with grayscale) and
//!   hue (shift in HSV) — and, as torchvision does per image, applies the four in a random order
//!   drawn per sample: the jittered samples are regrouped once per position in the order so each
//!   operation runs on one contiguous block;
//! * grayscale with torchvision's weights (0.2989, 0.587, 0.114), Gaussian blur with a per-sample
//!   sigma (kernel ≈ 10% of the image side, odd, reflection padding, a separable grouped
//!   convolution), solarize (pixels ≥ 128/255 inverted, as PIL's `ImageOps.solarize`);
//! * normalisation with the dataset's mean and std.
//!
//! The module's parts: `recipes` (what each view applies), `draws` (the random parameters, on
//! the host), `kernels` (the colour operations on the device); this file plans a batch's draws
//! into one upload and runs the views.
mod draws;
mod kernels;
mod recipes;

pub use draws::*;
pub use kernels::*;
pub use recipes::*;

use crate::config::AugRecipe;
use draws::uniform;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// The per-sample operations of one view, in the order they run.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Brightness,
    Contrast,
    Saturation,
    Hue,
    Grayscale,
    Blur,
    Solarize { threshold: f64 },
}

/// One colour operation of a view, as the device runs it. Sample indices live in the uploaded
/// int buffer, parameters in the float buffer (offsets below).
#[derive(Debug, Clone)]
enum Step {
    /// `kernel` on the samples at `ints[idx..idx + n]` (gathered, changed, written back), or on
    /// the whole batch when `all`; one parameter per sample at `floats[param..param + n]`.
    Subset {
        kernel: Kernel,
        n: usize,
        idx: usize,
        param: usize,
        all: bool,
    },
    /// Colour jitter in a per-sample random order. The `n` jittered samples are gathered once
    /// (`ints[gather..]`); for each of the four slots they are reordered so that the samples
    /// whose operation in that slot is the same form one contiguous range, which is changed in
    /// place; at the end they are written back (`ints[scatter..]`). Five copies of the subset in
    /// all, however the operations are ordered.
    Jitter {
        n: usize,
        gather: usize,
        slots: Vec<JitterSlot>,
        scatter: usize,
    },
}

#[derive(Debug, Clone)]
struct JitterSlot {
    /// Reorders the gathered samples from the previous slot's order (`ints[r..r + n]`); none for
    /// the first slot, gathered in its order.
    reorder: Option<usize>,
    /// (operation, first row, rows, offset of their factors in the float buffer).
    ranges: Vec<(Kernel, usize, usize, usize)>,
}

/// What the host decided for one view; the numbers live in the shared upload buffers.
struct ViewPlan {
    /// Offset of the sampling grid: N × S x-coordinates, then N × S y-coordinates.
    grid: usize,
    steps: Vec<Step>,
}

/// Host-side buffers of one call, uploaded once.
#[derive(Default)]
struct Upload {
    floats: Vec<f32>,
    ints: Vec<i64>,
}

impl Upload {
    fn subset(&mut self, kernel: Kernel, samples: &[(usize, f32)], batch: usize) -> Option<Step> {
        if samples.is_empty() {
            return None;
        }
        let idx = self.ints.len();
        let param = self.floats.len();
        let mut in_order = samples.len() == batch;
        for (k, &(i, v)) in samples.iter().enumerate() {
            in_order &= i == k;
            self.ints.push(i as i64);
            self.floats.push(v);
        }
        Some(Step::Subset {
            kernel,
            n: samples.len(),
            idx,
            param,
            all: in_order,
        })
    }

    /// Copies both buffers to `device` (asynchronously from pinned memory on CUDA).
    fn to_device(&self, device: Device) -> (Tensor, Tensor) {
        (
            upload(Tensor::from_slice(&self.floats), device),
            upload(Tensor::from_slice(&self.ints), device),
        )
    }
}

fn upload(t: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        let kind = t.kind();
        t.pin_memory(device).to_device_(device, kind, true, false)
    } else {
        t
    }
}

/// Where a view's random parameters come from: one generator for the whole batch, in the order
/// the plan draws them, or one per image.
enum Draws<'a> {
    Shared(&'a mut ChaCha8Rng),
    PerImage(&'a mut [ChaCha8Rng]),
}

impl Draws<'_> {
    /// The generator image `i` draws from.
    fn of(&mut self, i: usize) -> &mut ChaCha8Rng {
        match self {
            Draws::Shared(rng) => rng,
            Draws::PerImage(rngs) => &mut rngs[i],
        }
    }
}

/// Batched two-view augmentation for one recipe, output size and normalisation.
#[derive(Debug, Clone)]
pub struct Augmenter {
    recipe: Option<AugRecipe>,
    views: [ViewSpec; 2],
    out_size: i64,
    mean: [f64; 3],
    std: [f64; 3],
}

impl Augmenter {
    pub fn new(recipe: AugRecipe, out_size: i64, mean: [f64; 3], std: [f64; 3]) -> Self {
        let mut a = Self::with_views(ViewSpec::for_recipe(recipe), out_size, mean, std);
        a.recipe = Some(recipe);
        a
    }

    /// The augmenter a run's config asks for: its recipe, crop size and crop minimum, normalising
    /// with `mean` and `std`.
    pub fn for_run(cfg: &crate::config::RunConfig, mean: [f64; 3], std: [f64; 3]) -> Self {
        Self::new(cfg.augmentation, cfg.image_size, mean, std).with_crop_min(cfg.crop_min_scale)
    }

    /// The mean and std the views are normalised with.
    pub fn normalisation(&self) -> ([f64; 3], [f64; 3]) {
        (self.mean, self.std)
    }

    /// The views' random resized crops start at `min_scale` of the area instead of the recipe's
    /// own minimum (0 keeps the recipe's).
    pub fn with_crop_min(mut self, min_scale: f64) -> Self {
        if min_scale > 0.0 {
            for view in &mut self.views {
                view.scale.0 = min_scale;
            }
        }
        self
    }

    /// An augmenter with hand-made view specs (tests, previews of single operations).
    pub fn with_views(views: [ViewSpec; 2], out_size: i64, mean: [f64; 3], std: [f64; 3]) -> Self {
        assert!(out_size > 0, "the output size must be positive");
        Augmenter {
            recipe: None,
            views,
            out_size,
            mean,
            std,
        }
    }

    pub fn recipe(&self) -> Option<AugRecipe> {
        self.recipe
    }

    pub fn views(&self) -> &[ViewSpec; 2] {
        &self.views
    }

    pub fn out_size(&self) -> i64 {
        self.out_size
    }

    /// Two independently augmented views of a uint8 `[N, 3, H, W]` batch: float
    /// `[N, 3, S, S]`, normalised, on the batch's device. All randomness comes from `rng`.
    pub fn two_views(&self, images_u8: &Tensor, rng: &mut ChaCha8Rng) -> (Tensor, Tensor) {
        self.two_views_from(images_u8, &mut Draws::Shared(rng))
    }

    /// [`two_views`](Self::two_views) with image `i` drawing from `rngs[i]` alone, so an image's
    /// views depend on its own stream and not on the rest of the batch: a data-parallel rank
    /// that augments only its share of a batch draws what one process augmenting all of it
    /// would.
    pub fn two_views_per_image(
        &self,
        images_u8: &Tensor,
        rngs: &mut [ChaCha8Rng],
    ) -> (Tensor, Tensor) {
        assert_eq!(
            rngs.len() as i64,
            images_u8.size()[0],
            "one generator per image"
        );
        self.two_views_from(images_u8, &mut Draws::PerImage(rngs))
    }

    fn two_views_from(&self, images_u8: &Tensor, draws: &mut Draws) -> (Tensor, Tensor) {
        let _guard = tch::no_grad_guard();
        let (n, h, w) = check_batch(images_u8);
        let mut up = Upload::default();
        self.push_normalisation(&mut up);
        let p1 = self.plan(&self.views[0], n, h, w, draws, &mut up);
        let p2 = self.plan(&self.views[1], n, h, w, draws, &mut up);
        let (floats, ints) = up.to_device(images_u8.device());
        let source = to_unit_float(images_u8);
        let v1 = self.run(&p1, &source, n, &floats, &ints);
        let v2 = self.run(&p2, &source, n, &floats, &ints);
        (v1, v2)
    }

    /// One view with a given spec (the previews and tests use it).
    pub fn view(&self, spec: &ViewSpec, images_u8: &Tensor, rng: &mut ChaCha8Rng) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (n, h, w) = check_batch(images_u8);
        let mut up = Upload::default();
        self.push_normalisation(&mut up);
        let plan = self.plan(spec, n, h, w, &mut Draws::Shared(rng), &mut up);
        let (floats, ints) = up.to_device(images_u8.device());
        let source = to_unit_float(images_u8);
        self.run(&plan, &source, n, &floats, &ints)
    }

    /// The evaluation transform: images already `S × S` are only converted and normalised;
    /// others have their shorter side resized (bilinear, antialiased) to S × 8/7 — or to S when
    /// they are smaller than that — and are centre-cropped to S × S.
    pub fn eval_view(&self, images_u8: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (_n, h, w) = check_batch(images_u8);
        let s = self.out_size;
        let mut x = to_unit_float(images_u8);
        if (h, w) != (s, s) {
            let short = h.min(w);
            let target = if short <= s {
                s
            } else {
                ((s as f64) * 8.0 / 7.0).round() as i64
            };
            // torchvision's Resize(int): the long side is truncated, as int(target × long / short).
            let (rh, rw) = if h <= w {
                (target, ((target * w) as f64 / h as f64) as i64)
            } else {
                (((target * h) as f64 / w as f64) as i64, target)
            };
            if (rh, rw) != (h, w) {
                x = x
                    .internal_upsample_bilinear2d_aa([rh, rw], false, None, None)
                    .clamp(0.0, 1.0);
            }
            // torchvision's CenterCrop rounds the offset.
            let top = ((rh - s) as f64 / 2.0).round() as i64;
            let left = ((rw - s) as f64 / 2.0).round() as i64;
            x = x.narrow(2, top, s).narrow(3, left, s);
        }
        let mut up = Upload::default();
        self.push_normalisation(&mut up);
        let (floats, _) = up.to_device(images_u8.device());
        normalise(x, &floats)
    }

    /// floats[0..3] = mean, floats[3..6] = 1 / std.
    fn push_normalisation(&self, up: &mut Upload) {
        up.floats.extend(self.mean.iter().map(|&m| m as f32));
        up.floats.extend(self.std.iter().map(|&s| (1.0 / s) as f32));
    }

    /// Draws every random parameter of one view on the host.
    fn plan(
        &self,
        spec: &ViewSpec,
        n: i64,
        h: i64,
        w: i64,
        draws: &mut Draws,
        up: &mut Upload,
    ) -> ViewPlan {
        let n = n as usize;
        let size = self.out_size as usize;
        // Output pixel centres in normalised coordinates (align_corners = false).
        let centres: Vec<f64> = (0..size)
            .map(|k| (2 * k + 1) as f64 / size as f64 - 1.0)
            .collect();
        let grid = up.floats.len();
        let mut rows = Vec::with_capacity(n * size);
        for i in 0..n {
            let rng = draws.of(i);
            let b = draw_crop(rng, h as usize, w as usize, spec.scale, spec.ratio);
            let flip = spec.flip > 0.0 && rng.gen::<f64>() < spec.flip;
            // The affine map from output to input coordinates, per axis (crops are
            // axis-aligned): scale to the box, centre on it, mirror x for a flip. Points are
            // kept within the box's outer pixel centres, so edges repeat the crop's own border
            // pixels, as torchvision's crop-then-resize does.
            let axis =
                |offset: usize, extent: usize, full: usize, mirror: bool, out: &mut Vec<f32>| {
                    let scale = extent as f64 / full as f64;
                    let centre = (2 * offset + extent) as f64 / full as f64 - 1.0;
                    let lo = (2 * offset + 1) as f64 / full as f64 - 1.0;
                    let hi = (2 * (offset + extent) - 1) as f64 / full as f64 - 1.0;
                    let sign = if mirror { -1.0 } else { 1.0 };
                    out.extend(
                        centres
                            .iter()
                            .map(|&u| (centre + sign * scale * u).clamp(lo, hi) as f32),
                    );
                };
            axis(b.left, b.width, w as usize, flip, &mut up.floats);
            axis(b.top, b.height, h as usize, false, &mut rows);
        }
        up.floats.extend_from_slice(&rows);
        let mut steps = Vec::new();
        let push = |steps: &mut Vec<Step>, up: &mut Upload, kernel, samples: &[(usize, f32)]| {
            if let Some(step) = up.subset(kernel, samples, n) {
                steps.push(step);
            }
        };
        for op in &spec.ops {
            match *op {
                Op::ColorJitter { jitter, p } => {
                    // Per sample: whether it applies, the four factors, and their order.
                    let chosen: Vec<(usize, [f32; 4], [usize; 4])> = (0..n)
                        .filter_map(|i| {
                            draw_jitter(draws.of(i), &jitter, p).map(|d| (i, d.factors, d.order))
                        })
                        .collect();
                    let kernels = [
                        (Kernel::Brightness, jitter.brightness),
                        (Kernel::Contrast, jitter.contrast),
                        (Kernel::Saturation, jitter.saturation),
                        (Kernel::Hue, jitter.hue),
                    ];
                    if let Some(step) = plan_jitter(&chosen, &kernels, up) {
                        steps.push(step);
                    }
                }
                Op::Grayscale { p } => {
                    let samples: Vec<(usize, f32)> = (0..n)
                        .filter(|&i| draws.of(i).gen::<f64>() < p)
                        .map(|i| (i, 0.0))
                        .collect();
                    push(&mut steps, up, Kernel::Grayscale, &samples);
                }
                Op::GaussianBlur { sigma, p } => {
                    let mut samples = Vec::new();
                    for i in 0..n {
                        let rng = draws.of(i);
                        if rng.gen::<f64>() < p {
                            samples.push((i, uniform(rng, sigma.0, sigma.1) as f32));
                        }
                    }
                    push(&mut steps, up, Kernel::Blur, &samples);
                }
                Op::Solarize { threshold, p } => {
                    let samples: Vec<(usize, f32)> = (0..n)
                        .filter(|&i| draws.of(i).gen::<f64>() < p)
                        .map(|i| (i, 0.0))
                        .collect();
                    push(&mut steps, up, Kernel::Solarize { threshold }, &samples);
                }
            }
        }
        ViewPlan { grid, steps }
    }

    /// Runs a planned view on the device.
    fn run(
        &self,
        plan: &ViewPlan,
        source: &Tensor,
        n: i64,
        floats: &Tensor,
        ints: &Tensor,
    ) -> Tensor {
        let s = self.out_size;
        let xs = floats.narrow(0, plan.grid as i64, n * s);
        let ys = floats.narrow(0, (plan.grid as i64) + n * s, n * s);
        let grid = Tensor::cat(
            &[
                xs.view([n, 1, s, 1]).expand([n, s, s, 1], false),
                ys.view([n, s, 1, 1]).expand([n, s, s, 1], false),
            ],
            3,
        );
        // Bilinear (0), border padding (1), align_corners = false.
        let mut x = source.grid_sampler(&grid, 0, 1, false);
        let slice = |t: &Tensor, at: usize, len: usize| t.narrow(0, at as i64, len as i64);
        for step in &plan.steps {
            match step {
                &Step::Subset {
                    kernel,
                    n,
                    idx,
                    param,
                    all,
                } => {
                    let params = slice(floats, param, n);
                    if all {
                        x = apply(kernel, x, &params);
                    } else {
                        let idx = slice(ints, idx, n);
                        let sub = apply(kernel, x.index_select(0, &idx), &params);
                        let _ = x.index_copy_(0, &idx, &sub);
                    }
                }
                Step::Jitter {
                    n,
                    gather,
                    slots,
                    scatter,
                } => {
                    let mut y = x.index_select(0, &slice(ints, *gather, *n));
                    for slot in slots {
                        if let Some(r) = slot.reorder {
                            y = y.index_select(0, &slice(ints, r, *n));
                        }
                        for &(kernel, start, len, param) in &slot.ranges {
                            // Jitter kernels change their input in place: these rows of y.
                            let _ = apply(
                                kernel,
                                y.narrow(0, start as i64, len as i64),
                                &slice(floats, param, len),
                            );
                        }
                    }
                    let _ = x.index_copy_(0, &slice(ints, *scatter, *n), &y);
                }
            }
        }
        normalise(x, floats)
    }
}

/// Plans colour jitter for `chosen` samples (index, factors, order of the four operations);
/// operations of zero strength are the identity and are left out.
fn plan_jitter(
    chosen: &[(usize, [f32; 4], [usize; 4])],
    kernels: &[(Kernel, f64); 4],
    up: &mut Upload,
) -> Option<Step> {
    let n = chosen.len();
    if n == 0 || kernels.iter().all(|&(_, amount)| amount == 0.0) {
        return None;
    }
    let mut slots = Vec::with_capacity(4);
    let mut gather = 0;
    // Row → entry of `chosen`, in the previous slot's order.
    let mut previous: Vec<usize> = Vec::new();
    for slot in 0..4 {
        let mut current: Vec<usize> = (0..n).collect();
        current.sort_by_key(|&c| chosen[c].2[slot]);
        let reorder = if slot == 0 {
            gather = up.ints.len();
            up.ints.extend(current.iter().map(|&c| chosen[c].0 as i64));
            None
        } else if current == previous {
            None
        } else {
            let mut row_of = vec![0usize; n];
            for (row, &c) in previous.iter().enumerate() {
                row_of[c] = row;
            }
            let at = up.ints.len();
            up.ints.extend(current.iter().map(|&c| row_of[c] as i64));
            Some(at)
        };
        let mut ranges = Vec::new();
        let mut start = 0;
        while start < n {
            let op = chosen[current[start]].2[slot];
            let len = current[start..]
                .iter()
                .take_while(|&&c| chosen[c].2[slot] == op)
                .count();
            let (kernel, amount) = kernels[op];
            if amount != 0.0 {
                let param = up.floats.len();
                up.floats
                    .extend(current[start..start + len].iter().map(|&c| chosen[c].1[op]));
                ranges.push((kernel, start, len, param));
            }
            start += len;
        }
        slots.push(JitterSlot { reorder, ranges });
        previous = current;
    }
    let scatter = up.ints.len();
    up.ints.extend(previous.iter().map(|&c| chosen[c].0 as i64));
    Some(Step::Jitter {
        n,
        gather,
        slots,
        scatter,
    })
}

/// uint8 → float in [0, 1].
fn to_unit_float(images_u8: &Tensor) -> Tensor {
    let mut x = images_u8.to_kind(Kind::Float);
    x *= 1.0 / 255.0;
    x
}

fn check_batch(images: &Tensor) -> (i64, i64, i64) {
    let size = images.size();
    assert!(
        size.len() == 4 && size[1] == 3 && images.kind() == Kind::Uint8,
        "augmentation expects a uint8 [N, 3, H, W] batch, got {:?} {:?}",
        images.kind(),
        size
    );
    (size[0], size[2], size[3])
}

/// (x − mean) / std in place, with mean at floats[0..3] and 1/std at floats[3..6].
fn normalise(mut x: Tensor, floats: &Tensor) -> Tensor {
    x -= floats.narrow(0, 0, 3).view([1, 3, 1, 1]);
    x *= floats.narrow(0, 3, 3).view([1, 3, 1, 1]);
    x
}
