//! The built-in sweeps: the MoCo paper's ablations (He et al. 2019, section 4.1), each with the
//! paper's figures beside the values it varies. The paper's figures are ImageNet linear-probe
//! top-1 of a ResNet-50 after 200 epochs; a sweep here measures kNN (and, once evaluated, the
//! linear probe) on the user's data, so the two columns say the same thing only in direction.
use super::Point;
use crate::config::{Choice, Mechanism, RunConfig};
use serde::Serialize;
use serde_json::{json, Value};

/// The paper's figure for one value of a recipe's first field.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PaperFigure {
    /// The member's values it belongs to, as `field=value` pairs.
    pub point: &'static [(&'static str, &'static str)],
    pub figure: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Recipe {
    pub name: &'static str,
    pub title: &'static str,
    /// What it shows and where the paper shows it.
    pub description: &'static str,
    /// The fields its grid varies.
    pub fields: &'static [&'static str],
    /// The figures the paper reports, labelled in the table as the paper's.
    pub paper: &'static [PaperFigure],
    #[serde(skip)]
    points: fn(&RunConfig, Option<usize>) -> Points,
}

/// A recipe's grid for one base config: its points, and the points it left out with why.
pub struct Points {
    pub points: Vec<Point>,
    pub skipped: Vec<String>,
}

/// Where the paper's figures come from, for the table's caption.
pub const PAPER_SOURCE: &str =
    "MoCo paper (He et al. 2019), ImageNet linear-probe top-1 %, ResNet-50";

pub const RECIPES: [Recipe; 6] = [
    Recipe {
        name: "momentum",
        title: "Momentum m",
        description: "The key encoder's momentum (Table of section 4.1, K = 4096): m = 0 fails to \
                      train, a slowly moving key encoder works best.",
        fields: &["momentum"],
        paper: &[
            PaperFigure {
                point: &[("momentum", "0")],
                figure: "fails",
            },
            PaperFigure {
                point: &[("momentum", "0.9")],
                figure: "55.2",
            },
            PaperFigure {
                point: &[("momentum", "0.99")],
                figure: "57.8",
            },
            PaperFigure {
                point: &[("momentum", "0.999")],
                figure: "59.0",
            },
            PaperFigure {
                point: &[("momentum", "0.9999")],
                figure: "58.9",
            },
        ],
        points: momentum_points,
    },
    Recipe {
        name: "queue_size",
        title: "Queue size K",
        description: "The dictionary size (Figure 3's MoCo curve): accuracy grows with K. Values \
                      the data cannot give are left out with the reason.",
        fields: &["queue_size"],
        paper: &[
            PaperFigure {
                point: &[("queue_size", "4096")],
                figure: "59.0",
            },
            PaperFigure {
                point: &[("queue_size", "65536")],
                figure: "60.6",
            },
        ],
        points: queue_points,
    },
    Recipe {
        name: "shuffle_bn",
        title: "Shuffle BN",
        description: "Shuffling BatchNorm (8 sub-batches) against plain BN (1): without it the \
                      model finds the positive through the batch statistics (section 3.3, the \
                      paper reports the pretext task cheating, not a linear-probe figure).",
        fields: &["shuffle_bn_splits"],
        paper: &[],
        points: shuffle_points,
    },
    Recipe {
        name: "symmetric",
        title: "Symmetric loss",
        description: "L(x1, x2) alone, as the paper, against L(x1, x2) + L(x2, x1), the CIFAR \
                      demo's option (twice the key work per step).",
        fields: &["symmetric"],
        paper: &[],
        points: symmetric_points,
    },
    Recipe {
        name: "temperature",
        title: "Temperature T",
        description: "The softmax temperature: v1 uses 0.07, v2 with its MLP head 0.2.",
        fields: &["temperature"],
        paper: &[],
        points: temperature_points,
    },
    Recipe {
        name: "mechanisms",
        title: "Mechanisms against K",
        description: "Figure 3: end-to-end (K = batch − 1, so its K grows with the batch), the \
                      memory bank and MoCo at the same dictionary sizes, on one chart.",
        fields: &["mechanism", "queue_size", "batch_size"],
        paper: &[
            PaperFigure {
                point: &[("mechanism", "moco"), ("queue_size", "65536")],
                figure: "60.6",
            },
            PaperFigure {
                point: &[("mechanism", "memory_bank"), ("queue_size", "65536")],
                figure: "58.0",
            },
        ],
        points: mechanism_points,
    },
];

pub fn find(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

pub fn names() -> Vec<&'static str> {
    RECIPES.iter().map(|r| r.name).collect()
}

impl Recipe {
    /// The grid for `base` on a training split of `train_images` (when known).
    pub fn points(&self, base: &RunConfig, train_images: Option<usize>) -> Points {
        (self.points)(base, train_images)
    }

    /// The paper's figure for a member with `values`, if the paper reports one.
    pub fn figure(&self, values: &[(String, Value)]) -> Option<&'static str> {
        self.paper
            .iter()
            .find(|f| {
                f.point.iter().all(|(field, value)| {
                    values
                        .iter()
                        .any(|(k, v)| k == field && same_value(v, value))
                })
            })
            .map(|f| f.figure)
    }
}

/// Whether a member's value is the recipe's `text`: numbers compared as numbers (0 is 0.0).
fn same_value(value: &Value, text: &str) -> bool {
    match (value.as_f64(), text.parse::<f64>()) {
        (Some(a), Ok(b)) => a == b,
        _ => crate::config::settings::value_text(value) == text,
    }
}

fn single(field: &str, values: impl IntoIterator<Item = Value>) -> Points {
    Points {
        points: values
            .into_iter()
            .map(|v| vec![(field.to_string(), v)])
            .collect(),
        skipped: Vec::new(),
    }
}

fn momentum_points(_: &RunConfig, _: Option<usize>) -> Points {
    single(
        "momentum",
        [0.0, 0.9, 0.99, 0.999, 0.9999].map(|m| json!(m)),
    )
}

/// The paper's K from 256 to 65536.
const PAPER_K: [i64; 6] = [256, 512, 1024, 4096, 16384, 65536];

/// The largest K worth training with: the trainer warns above a quarter of the training images
/// (the queue then holds earlier keys of the very images it contrasts).
fn k_limit(train_images: Option<usize>) -> Option<i64> {
    train_images.map(|n| (n / 4) as i64)
}

/// Which of `ks` a queue of `per_step` keys per step over `train_images` can hold, and why the
/// others are left out.
fn usable_ks(ks: &[i64], per_step: i64, train_images: Option<usize>) -> (Vec<i64>, Vec<String>) {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for &k in ks {
        if k % per_step != 0 {
            skipped.push(format!(
                "K = {k}: not a multiple of the {per_step} keys enqueued per step"
            ));
        } else if let Some(limit) = k_limit(train_images).filter(|limit| k > *limit) {
            skipped.push(format!(
                "K = {k}: more than a quarter of the {} training images ({limit})",
                train_images.unwrap_or_default()
            ));
        } else {
            kept.push(k);
        }
    }
    (kept, skipped)
}

fn queue_points(base: &RunConfig, train_images: Option<usize>) -> Points {
    let (ks, skipped) = usable_ks(&PAPER_K, base.keys_per_step(), train_images);
    Points {
        skipped,
        ..single("queue_size", ks.into_iter().map(|k| json!(k)))
    }
}

fn shuffle_points(_: &RunConfig, _: Option<usize>) -> Points {
    single("shuffle_bn_splits", [json!(8), json!(1)])
}

fn symmetric_points(_: &RunConfig, _: Option<usize>) -> Points {
    single("symmetric", [json!(false), json!(true)])
}

fn temperature_points(_: &RunConfig, _: Option<usize>) -> Points {
    single("temperature", [0.05, 0.07, 0.1, 0.2, 0.5].map(|t| json!(t)))
}

/// MoCo and the memory bank at each usable K with the base batch; end-to-end at batches of
/// K + 1 for the Ks the base batch and the two below it give (each halving), since its
/// dictionary is the batch.
fn mechanism_points(base: &RunConfig, train_images: Option<usize>) -> Points {
    let (ks, mut skipped) = usable_ks(&PAPER_K, base.batch_size, train_images);
    let mut points = Vec::new();
    for mechanism in [Mechanism::Moco, Mechanism::MemoryBank] {
        for &k in &ks {
            points.push(vec![
                ("mechanism".to_string(), json!(mechanism.name())),
                ("queue_size".to_string(), json!(k)),
                ("batch_size".to_string(), json!(base.batch_size)),
            ]);
        }
    }
    for shift in [2, 1, 0] {
        let batch = base.batch_size >> shift;
        if batch < 2 || base.batch_size % (1 << shift) != 0 {
            skipped.push(format!(
                "end_to_end with a batch of {batch}: too small a batch"
            ));
            continue;
        }
        points.push(vec![
            ("mechanism".to_string(), json!(Mechanism::EndToEnd.name())),
            ("queue_size".to_string(), json!(base.queue_size)),
            ("batch_size".to_string(), json!(batch)),
        ]);
    }
    Points { points, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn the_queue_recipe_keeps_the_ks_the_data_can_give_and_says_why_it_drops_the_others() {
        let demo = RunConfig::preset(Preset::Demo);
        let points = queue_points(&demo, Some(5000));
        let ks: Vec<&Value> = points.points.iter().map(|p| &p[0].1).collect();
        assert_eq!(ks, vec![&json!(256), &json!(512), &json!(1024)]);
        assert_eq!(
            points.skipped,
            vec![
                "K = 4096: more than a quarter of the 5000 training images (1250)",
                "K = 16384: more than a quarter of the 5000 training images (1250)",
                "K = 65536: more than a quarter of the 5000 training images (1250)",
            ]
        );
    }

    #[test]
    fn the_paper_figures_are_found_by_the_members_values() {
        let momentum = find("momentum").unwrap();
        let values = |v: Value| -> Point { v.as_object().unwrap().clone().into_iter().collect() };
        assert_eq!(
            momentum.figure(&values(json!({"momentum": 0.999, "seed": 1}))),
            Some("59.0")
        );
        assert_eq!(
            momentum.figure(&values(json!({"momentum": 0}))),
            Some("fails")
        );
        assert_eq!(momentum.figure(&values(json!({"momentum": 0.5}))), None);
        let mechanisms = find("mechanisms").unwrap();
        assert_eq!(
            mechanisms.figure(&values(
                json!({"mechanism": "memory_bank", "queue_size": 65536})
            )),
            Some("58.0")
        );
    }

    #[test]
    fn the_mechanisms_recipe_gives_end_to_end_its_k_through_the_batch() {
        let demo = RunConfig::preset(Preset::Demo);
        let points = mechanism_points(&demo, Some(5000)).points;
        let e2e: Vec<i64> = points
            .iter()
            .filter(|p| p[0].1 == "end_to_end")
            .map(|p| p[2].1.as_i64().unwrap())
            .collect();
        assert_eq!(e2e, vec![32, 64, 128]);
        assert_eq!(points.len(), 3 + 3 + 3);
    }
}
