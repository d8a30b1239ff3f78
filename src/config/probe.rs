//! The settings of the offline evaluations of a trained encoder (`crate::eval`): the linear probe
//! and the weighted kNN. They describe an evaluation, not a run, so they are not part of
//! `RunConfig`, but they are declared the same way — each field's type, help, range and section
//! once, on the struct — and read, overridden (`field=value`, dotted for `dataset.*`) and checked
//! by the same code, so every error names its field.
//!
//! The linear probe starts from its protocol's settings, each the official script's arguments:
//!
//! | protocol | source | epochs | batch | lr | schedule (per epoch) |
//! | --- | --- | --- | --- | --- | --- |
//! | moco | facebookresearch/moco `main_lincls.py` | 100 | 256 | 30 | ×0.1 at epochs 60 and 80 |
//! | v3 | facebookresearch/moco-v3 `main_lincls.py` | 90 | 1024 | 0.1 × B/256 | cosine |
//! | fast | moco's classifier on cached features | 100 | 256 | 30 | ×0.1 at epochs 60 and 80 |
//!
//! All three: SGD momentum 0.9, weight decay 0, the new fc's weight N(0, 0.01²) and bias 0;
//! moco and v3 train on RandomResizedCrop(scale 0.08–1) + flip of the training images, fast on
//! the un-augmented images (its features are computed once, so its 100 epochs cost about as much
//! as one pass of the backbone over the data).
use super::overrides::override_fields;
use super::settings::{self, Setting};
use super::validation::{dataset_errors, field_errors, milestones_error};
use super::{DatasetConfig, FieldError, LrSchedule, Precision, Protocol};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::LazyLock;

/// A linear probe: a new fully connected layer trained on the frozen backbone's pooled
/// features, then scored on the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The protocol these settings started from (`--protocol`); the result names it.
    #[schemars(title = "Protocol", extend("x-group" = "run"))]
    pub protocol: Protocol,
    /// The labelled set: the classifier trains on its training split and is scored on its
    /// held-out split.
    pub dataset: DatasetConfig,
    /// Passes over the training split.
    #[schemars(title = "Epochs", range(min = 1, max = 10_000), extend("x-group" = "basics"))]
    pub epochs: i64,
    /// Images per step.
    #[schemars(title = "Batch size", range(min = 1, max = 65536), extend("x-group" = "basics"))]
    pub batch_size: i64,
    /// The learning rate (at lr_base_batch images per step when that is set).
    #[schemars(
        title = "Base learning rate",
        range(max = 1000),
        extend("exclusiveMinimum" = 0, "x-group" = "optimisation")
    )]
    pub base_lr: f64,
    /// 0: base_lr as given (MoCo's main_lincls.py); N: base_lr × batch_size / N (MoCo v3's,
    /// N = 256).
    #[schemars(title = "lr base batch", range(min = 0, max = 65536), extend("x-group" = "optimisation"))]
    pub lr_base_batch: i64,
    /// step: ×lr_gamma at the milestones; cosine: half a cosine to 0. Set once per epoch, as both
    /// official scripts do.
    #[schemars(title = "lr schedule", extend("x-group" = "optimisation"))]
    pub lr_schedule: LrSchedule,
    /// Step schedule: fractions of the run where lr is multiplied by lr_gamma; 0.6, 0.8 are
    /// main_lincls.py's epochs 60 and 80 of 100.
    #[schemars(title = "lr milestones", extend("x-group" = "optimisation"))]
    pub lr_milestones: Vec<f64>,
    /// Factor at each milestone.
    #[schemars(
        title = "lr gamma",
        range(max = 1),
        extend("exclusiveMinimum" = 0, "x-group" = "optimisation")
    )]
    pub lr_gamma: f64,
    /// Momentum of SGD.
    #[schemars(
        title = "SGD momentum",
        range(min = 0),
        extend("exclusiveMaximum" = 1, "x-group" = "optimisation")
    )]
    pub sgd_momentum: f64,
    /// L2 penalty of SGD on the classifier.
    #[schemars(title = "Weight decay", range(min = 0, max = 1), extend("x-group" = "optimisation"))]
    pub weight_decay: f64,
    /// Standard deviation of the classifier's initial weights, drawn from N(0, init_std²); the
    /// bias starts at 0.
    #[schemars(
        title = "Initial weight std",
        range(max = 1),
        extend("exclusiveMinimum" = 0, "x-group" = "optimisation")
    )]
    pub init_std: f64,
    /// Side of the images the encoder sees; 0 = the crop size it was trained with.
    #[schemars(title = "Image size", range(min = 0, max = 1024), extend("x-group" = "data"))]
    pub image_size: i64,
    /// Smallest area fraction of RandomResizedCrop on the training images (moco and v3; fast
    /// trains on the un-augmented images).
    #[schemars(
        title = "Crop scale minimum",
        range(max = 1),
        extend("exclusiveMinimum" = 0, "x-group" = "data")
    )]
    pub crop_min_scale: f64,
    /// Decode threads of the loader; 0 = one per core.
    #[schemars(title = "Loader threads", range(max = 256), extend("x-group" = "data"))]
    pub loader_threads: usize,
    /// auto = bf16 autocast on a GPU that has it (fp16 on older ones), fp32 on the CPU; only
    /// the frozen backbone computes in it, the classifier is fp32.
    #[schemars(title = "Precision", extend("x-group" = "speed"))]
    pub precision: Precision,
    /// Held-out top-1 / top-5 every E epochs (the official scripts: every epoch), and always after
    /// the last; 0 = only after the last.
    #[schemars(title = "Score every E epochs", range(min = 0, max = 10_000), extend("x-group" = "monitoring"))]
    pub eval_every: i64,
    /// Seeds the classifier's initial weights, the epoch order and the crops.
    #[schemars(title = "Seed", extend("x-group" = "monitoring"))]
    pub seed: u64,
}

/// The weighted kNN of the run's monitor (Wu et al., 2018), on any encoder and labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KnnConfig {
    /// The labelled set: its training split is the bank, its held-out split the queries.
    pub dataset: DatasetConfig,
    /// Neighbours that vote.
    #[schemars(title = "kNN k", range(min = 1, max = 10_000), extend("x-group" = "monitoring"))]
    pub k: i64,
    /// Temperature of the neighbours' weights.
    #[schemars(
        title = "kNN temperature",
        extend("exclusiveMinimum" = 0, "x-group" = "monitoring")
    )]
    pub t: f64,
    /// At most this many training images in the bank; 0 = all.
    #[schemars(title = "kNN bank limit", extend("x-group" = "monitoring"))]
    pub bank_limit: usize,
    /// Side of the images the encoder sees; 0 = the crop size it was trained with.
    #[schemars(title = "Image size", range(min = 0, max = 1024), extend("x-group" = "data"))]
    pub image_size: i64,
    /// Decode threads of the loader; 0 = one per core.
    #[schemars(title = "Loader threads", range(max = 256), extend("x-group" = "data"))]
    pub loader_threads: usize,
    /// auto = bf16 autocast on a GPU that has it (fp16 on older ones), fp32 on the CPU.
    #[schemars(title = "Precision", extend("x-group" = "speed"))]
    pub precision: Precision,
}

fn probe_settings() -> &'static [Setting] {
    static SETTINGS: LazyLock<Vec<Setting>> = LazyLock::new(settings::of::<ProbeConfig>);
    &SETTINGS
}

fn knn_settings() -> &'static [Setting] {
    static SETTINGS: LazyLock<Vec<Setting>> = LazyLock::new(settings::of::<KnnConfig>);
    &SETTINGS
}

/// The rules both evaluations share: an image size of 0 or at least 8, a dataset whose images
/// carry labels.
fn common_errors(image_size: i64, dataset: &DatasetConfig) -> Vec<FieldError> {
    let mut errors = dataset_errors(dataset);
    if (1..8).contains(&image_size) {
        errors.push(FieldError::new(
            "image_size",
            format!("must be 0 (the encoder's crop size) or between 8 and 1024, got {image_size}"),
        ));
    }
    if dataset.use_unlabeled {
        errors.push(FieldError::new(
            "dataset.use_unlabeled",
            "must be false: an evaluation needs labelled images, and STL-10's unlabeled split has \
             none",
        ));
    }
    errors
}

fn result(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl Protocol {
    /// One line for pickers and help texts.
    pub fn description(self) -> &'static str {
        match self {
            Protocol::Moco => {
                "MoCo's main_lincls.py: crops of every image each step, lr 30, 100 epochs"
            }
            Protocol::V3 => {
                "MoCo v3's main_lincls.py: crops each step, lr 0.1×B/256 cosine, 90 epochs"
            }
            Protocol::Fast => "moco's classifier on features computed once: minutes on a CPU",
        }
    }

    /// The evaluation form's default: the official protocol where a GPU runs it in reasonable
    /// time, the fast one otherwise.
    pub fn default_here() -> Protocol {
        if tch::Cuda::is_available() {
            Protocol::Moco
        } else {
            Protocol::Fast
        }
    }
}

impl ProbeConfig {
    /// The protocol's settings, as its source sets them, on `dataset`.
    pub fn for_protocol(protocol: Protocol, dataset: DatasetConfig) -> ProbeConfig {
        let moco = ProbeConfig {
            protocol,
            dataset,
            epochs: 100,
            batch_size: 256,
            base_lr: 30.0,
            lr_base_batch: 0,
            lr_schedule: LrSchedule::Step,
            lr_milestones: vec![0.6, 0.8],
            lr_gamma: 0.1,
            sgd_momentum: 0.9,
            weight_decay: 0.0,
            init_std: 0.01,
            image_size: 0,
            crop_min_scale: 0.08,
            loader_threads: 0,
            precision: Precision::Auto,
            eval_every: 1,
            seed: 0,
        };
        match protocol {
            Protocol::Moco | Protocol::Fast => moco,
            Protocol::V3 => ProbeConfig {
                epochs: 90,
                batch_size: 1024,
                base_lr: 0.1,
                lr_base_batch: 256,
                lr_schedule: LrSchedule::Cosine,
                lr_milestones: Vec::new(),
                ..moco
            },
        }
    }

    /// The learning rate at the top of the schedule: base_lr, scaled by batch_size /
    /// lr_base_batch when that is set.
    pub fn effective_lr(&self) -> f64 {
        if self.lr_base_batch > 0 {
            self.base_lr * self.batch_size as f64 / self.lr_base_batch as f64
        } else {
            self.base_lr
        }
    }

    /// `field=value` overrides, then validation. The protocol is not one of them: its defaults
    /// come with it, so it is chosen first (`for_protocol`).
    pub fn with_overrides<'a, I>(&self, overrides: I) -> Result<ProbeConfig, Vec<FieldError>>
    where
        I: IntoIterator<Item = (&'a str, Value)>,
    {
        let overrides: Vec<(&str, Value)> = overrides.into_iter().collect();
        if overrides.iter().any(|(k, _)| *k == "protocol") {
            return Err(vec![FieldError::new(
                "protocol",
                "is chosen with --protocol, which brings its defaults",
            )]);
        }
        let cfg: ProbeConfig = override_fields(self, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every rule a probe must satisfy before anything starts, each error naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let json = serde_json::to_value(self).expect("ProbeConfig serialises");
        let mut errors = field_errors(probe_settings(), &json);
        if self.lr_schedule == LrSchedule::Step {
            if let Some(message) = milestones_error(&self.lr_milestones) {
                errors.push(FieldError::new("lr_milestones", message));
            }
        }
        errors.extend(common_errors(self.image_size, &self.dataset));
        result(errors)
    }
}

impl KnnConfig {
    /// The run monitor's defaults (k 200, t 0.1, the whole training split as the bank).
    pub fn new(dataset: DatasetConfig) -> KnnConfig {
        KnnConfig {
            dataset,
            k: 200,
            t: 0.1,
            bank_limit: 0,
            image_size: 0,
            loader_threads: 0,
            precision: Precision::Auto,
        }
    }

    /// `field=value` overrides, then validation.
    pub fn with_overrides<'a, I>(&self, overrides: I) -> Result<KnnConfig, Vec<FieldError>>
    where
        I: IntoIterator<Item = (&'a str, Value)>,
    {
        let cfg: KnnConfig = override_fields(self, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let json = serde_json::to_value(self).expect("KnnConfig serialises");
        let mut errors = field_errors(knn_settings(), &json);
        errors.extend(common_errors(self.image_size, &self.dataset));
        result(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_has_its_sources_values() {
        let moco = ProbeConfig::for_protocol(Protocol::Moco, DatasetConfig::synthetic());
        moco.validate().unwrap();
        assert_eq!((moco.epochs, moco.batch_size), (100, 256));
        assert_eq!(moco.effective_lr(), 30.0);
        let v3 = ProbeConfig::for_protocol(Protocol::V3, DatasetConfig::synthetic());
        v3.validate().unwrap();
        assert_eq!((v3.epochs, v3.batch_size), (90, 1024));
        assert!((v3.effective_lr() - 0.4).abs() < 1e-12);
        ProbeConfig::for_protocol(Protocol::Fast, DatasetConfig::synthetic())
            .validate()
            .unwrap();
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let base = ProbeConfig::for_protocol(Protocol::Fast, DatasetConfig::synthetic());
        let cases: [(&str, Value, &str); 8] = [
            (
                "epochs",
                0.into(),
                "epochs: must be between 1 and 10000, got 0",
            ),
            (
                "base_lr",
                0.0.into(),
                "base_lr: must be in (0, 1000], got 0.0",
            ),
            (
                "sgd_momentum",
                1.0.into(),
                "sgd_momentum: must be in [0, 1), got 1.0",
            ),
            ("lr_schedule", "linear".into(), "lr_schedule"),
            (
                "lr_milestones",
                serde_json::json!([0.8, 0.6]),
                "lr_milestones: must be increasing",
            ),
            ("image_size", 4.into(), "image_size: must be 0"),
            (
                "dataset.use_unlabeled",
                true.into(),
                "dataset.use_unlabeled: must be false",
            ),
            ("epochz", 3.into(), "epochz: unknown setting"),
        ];
        for (field, value, message) in cases {
            let errors = base.with_overrides([(field, value)]).unwrap_err();
            let text = super::super::describe_errors(&errors);
            assert!(text.starts_with(message), "{field}: {text}");
        }
        let errors = base
            .with_overrides([("protocol", Value::from("v3"))])
            .unwrap_err();
        assert_eq!(errors[0].field, "protocol");
        let knn = KnnConfig::new(DatasetConfig::synthetic());
        let errors = knn.with_overrides([("t", Value::from(0.0))]).unwrap_err();
        assert_eq!(errors[0].field, "t");
        assert_eq!(knn.with_overrides([("k", Value::from("5"))]).unwrap().k, 5);
    }
}
