//! The recipes: which random resized crop, flip and colour operations each view of a recipe
//! applies, with the official code's parameters (the table in `augment`).
use crate::config::AugRecipe;

/// torchvision's `ColorJitter(brightness, contrast, saturation, hue)`: factors are drawn from
/// [max(0, 1 − x), 1 + x] for the first three and the hue shift from [−hue, hue].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

/// A colour operation applied after the crop, each to a random subset of the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    ColorJitter {
        jitter: Jitter,
        p: f64,
    },
    Grayscale {
        p: f64,
    },
    /// Gaussian blur with sigma drawn uniformly from `sigma` per sample.
    GaussianBlur {
        sigma: (f64, f64),
        p: f64,
    },
    /// Inverts values at or above `threshold` (in [0, 1] units).
    Solarize {
        threshold: f64,
        p: f64,
    },
}

/// Everything that defines one view: the random resized crop, the flip, then the colour ops.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewSpec {
    /// Fraction of the image area the crop covers, drawn uniformly from this range.
    pub scale: (f64, f64),
    /// Aspect ratio (w/h) of the crop, drawn log-uniformly from this range.
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip: f64,
    pub ops: Vec<Op>,
}

/// Pixels ≥ 128 are inverted (PIL's `ImageOps.solarize` default), in [0, 1] units.
pub const SOLARIZE_THRESHOLD: f64 = 128.0 / 255.0;
const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
const BLUR_SIGMA: (f64, f64) = (0.1, 2.0);

impl ViewSpec {
    /// torchvision's `RandomResizedCrop(S, scale=(min_scale, 1))` + `RandomHorizontalFlip()`
    /// and nothing else: the training transform of main_lincls.py's linear classifier.
    pub fn crop_and_flip(min_scale: f64) -> ViewSpec {
        ViewSpec {
            scale: (min_scale, 1.0),
            ratio: RATIO,
            flip: 0.5,
            ops: Vec::new(),
        }
    }

    /// The two views of a recipe (identical specs except for v3's asymmetric blur/solarize).
    pub fn for_recipe(recipe: AugRecipe) -> [ViewSpec; 2] {
        let jitter = |b, c, s, h| Jitter {
            brightness: b,
            contrast: c,
            saturation: s,
            hue: h,
        };
        let view = |scale, ops| ViewSpec {
            scale,
            ratio: RATIO,
            flip: 0.5,
            ops,
        };
        match recipe {
            AugRecipe::V1 => {
                let v = view(
                    (0.2, 1.0),
                    vec![
                        Op::Grayscale { p: 0.2 },
                        Op::ColorJitter {
                            jitter: jitter(0.4, 0.4, 0.4, 0.4),
                            p: 1.0,
                        },
                    ],
                );
                [v.clone(), v]
            }
            AugRecipe::V2 => {
                let v = view(
                    (0.2, 1.0),
                    vec![
                        Op::ColorJitter {
                            jitter: jitter(0.4, 0.4, 0.4, 0.1),
                            p: 0.8,
                        },
                        Op::Grayscale { p: 0.2 },
                        Op::GaussianBlur {
                            sigma: BLUR_SIGMA,
                            p: 0.5,
                        },
                    ],
                );
                [v.clone(), v]
            }
            AugRecipe::Cifar => {
                let v = view(
                    (0.08, 1.0),
                    vec![
                        Op::ColorJitter {
                            jitter: jitter(0.4, 0.4, 0.4, 0.1),
                            p: 0.8,
                        },
                        Op::Grayscale { p: 0.2 },
                    ],
                );
                [v.clone(), v]
            }
            AugRecipe::V3 => {
                let common = |blur_p: f64, solarize_p: Option<f64>| {
                    let mut ops = vec![
                        Op::ColorJitter {
                            jitter: jitter(0.4, 0.4, 0.2, 0.1),
                            p: 0.8,
                        },
                        Op::Grayscale { p: 0.2 },
                        Op::GaussianBlur {
                            sigma: BLUR_SIGMA,
                            p: blur_p,
                        },
                    ];
                    if let Some(p) = solarize_p {
                        ops.push(Op::Solarize {
                            threshold: SOLARIZE_THRESHOLD,
                            p,
                        });
                    }
                    view((0.08, 1.0), ops)
                };
                [common(1.0, None), common(0.1, Some(0.2))]
            }
        }
    }
}
