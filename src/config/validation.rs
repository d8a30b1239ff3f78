//! Validation: every rule a run must satisfy before anything starts. The per-field rules (ranges,
//! lengths, finite numbers) are read from the settings' schema (`settings`); the rules below are
//! the ones that relate fields to each other or that a schema keyword cannot say.
use super::choices::Choice;
use super::settings;
use super::{
    keys_per_step, DatasetConfig, DatasetKind, Framework, LrSchedule, Mechanism, RunConfig,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One validation failure: the field (dotted path) and a sentence about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Joins field errors into one message for the terminal.
pub fn describe_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The queue / batch rule as a sentence: `Ok` when queue_size is a multiple of the keys
/// enqueued per step, `Err` with a suggestion otherwise. The form shows it as the user types and
/// validation reports the `Err` text.
pub fn queue_rule(
    framework: Framework,
    mechanism: Mechanism,
    queue_size: i64,
    batch_size: i64,
    symmetric: bool,
) -> Result<String, String> {
    if framework == Framework::V3 {
        return Ok(
            "MoCo v3 contrasts each view with the other view's keys of the batch: queue_size is \
             not used."
                .into(),
        );
    }
    match mechanism {
        Mechanism::Moco => {}
        Mechanism::EndToEnd => {
            return Ok(format!(
                "end_to_end contrasts each query with the other keys of the batch (K = \
                 batch_size − 1 = {}): queue_size is not used.",
                batch_size - 1
            ))
        }
        Mechanism::MemoryBank => {
            return Ok(format!(
                "memory_bank draws queue_size = {queue_size} negatives from the bank each step."
            ))
        }
    }
    let per_step = keys_per_step(batch_size, symmetric);
    let what = if symmetric {
        format!("2 × batch_size = {per_step} (symmetric loss)")
    } else {
        format!("batch_size = {per_step}")
    };
    if queue_size % per_step == 0 {
        Ok(format!(
            "✓ queue_size {queue_size} = {} × {what}.",
            queue_size / per_step
        ))
    } else {
        let lower = (queue_size / per_step).max(1) * per_step;
        Err(format!(
            "queue_size {queue_size} must be a multiple of the keys enqueued per step, {what}; \
             e.g. {lower} or {}",
            lower + per_step
        ))
    }
}

/// The per-field rules (range, length, choice) of `settings` that the config `json` breaks, each
/// naming its field.
pub(crate) fn field_errors(
    list: &[settings::Setting],
    json: &serde_json::Value,
) -> Vec<FieldError> {
    list.iter()
        .filter_map(|s| {
            let value = settings::lookup(json, &s.key)?;
            s.check(value).err().map(|m| FieldError::new(&s.key, m))
        })
        .collect()
}

/// A step schedule's milestones must be increasing fractions of the run; the sentence saying
/// so when they are not.
pub(crate) fn milestones_error(milestones: &[f64]) -> Option<String> {
    let sorted = milestones.windows(2).all(|w| w[0] < w[1]);
    let in_range = milestones
        .iter()
        .all(|&f| f.is_finite() && f > 0.0 && f < 1.0);
    (!(sorted && in_range))
        .then(|| format!("must be increasing fractions of the run in (0, 1), got {milestones:?}"))
}

/// The rules of a dataset's settings that its schema cannot say, for every config that holds
/// one (a run's, an evaluation's); fields are named `dataset.*`.
pub(crate) fn dataset_errors(ds: &DatasetConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if ds.kind != DatasetKind::Synthetic && ds.path.as_deref().is_none_or(|p| p.trim().is_empty()) {
        errors.push(FieldError::new(
            "dataset.path",
            format!("is required for a {} dataset", ds.kind.name()),
        ));
    }
    if !(ds.load_size == 0 || ds.load_size >= 8) {
        errors.push(FieldError::new(
            "dataset.load_size",
            format!(
                "must be 0 (automatic) or between 8 and 2048, got {}",
                ds.load_size
            ),
        ));
    }
    errors
}

impl RunConfig {
    /// The memory bank's rule, once the training split's size is known: it cannot give more
    /// negatives than it holds features. The sentence for `queue_size`, when broken.
    pub fn memory_bank_error(&self, train_images: usize) -> Option<String> {
        (self.effective_mechanism() == Some(Mechanism::MemoryBank)
            && self.queue_size as usize > train_images)
            .then(|| {
                format!(
                    "the memory bank holds the {train_images} training images' features: it \
                     cannot give {} negatives",
                    self.queue_size
                )
            })
    }

    /// Every rule a run must satisfy before anything starts. All violations are returned, each
    /// naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let json = serde_json::to_value(self).expect("RunConfig serialises");
        let mut errors = field_errors(settings::all(), &json);
        let mut check = |ok: bool, field: &str, message: String| {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        };
        check(
            self.name.chars().all(|c| !c.is_control()),
            "name",
            "must not contain control characters".into(),
        );
        if let Err(e) = super::devices::parse_rank_devices(&self.device, self.devices) {
            check(false, &e.field, e.message);
        }
        check(
            !self.sync_bn || matches!(self.effective_mechanism(), None | Some(Mechanism::Moco)),
            "sync_bn",
            format!(
                "the {} mechanism normalises in shuffle_bn_splits groups; sync_bn is for the moco \
                 mechanism (the v3 framework always normalises over the whole batch)",
                self.mechanism
            ),
        );
        if let Err(rank_errors) = crate::dist::check_config(self, self.devices.max(1) as usize) {
            for e in rank_errors {
                check(false, &e.field, e.message);
            }
        }
        if self.queue_size >= 1 && self.batch_size >= 1 {
            if let Err(message) = queue_rule(
                self.framework,
                self.mechanism,
                self.queue_size,
                self.batch_size,
                self.symmetric,
            ) {
                check(false, "queue_size", message.clone());
                check(false, "batch_size", message);
            }
        }
        if self.shuffle_bn_splits >= 1 && self.batch_size >= 1 {
            check(
                self.batch_size % self.shuffle_bn_splits == 0
                    && self.batch_size / self.shuffle_bn_splits >= 2,
                "shuffle_bn_splits",
                format!(
                    "batch_size {} must split into {} sub-batches of at least 2 images each",
                    self.batch_size, self.shuffle_bn_splits
                ),
            );
        }
        check(
            !self.arch.is_vit() || self.image_size % self.patch_size == 0,
            "patch_size",
            format!(
                "the crop size {} must be a multiple of the ViT's patch size {}",
                self.image_size, self.patch_size
            ),
        );
        check(
            self.framework != Framework::V3 || self.batch_size >= 2,
            "batch_size",
            "must be at least 2 with the v3 framework: the other images of the batch are the \
             negatives"
                .into(),
        );
        check(
            self.framework != Framework::V3 || self.shuffle_bn_splits == 1,
            "shuffle_bn_splits",
            format!(
                "must be 1 with the v3 framework, which normalises over the whole batch, got {}",
                self.shuffle_bn_splits
            ),
        );
        if self.mechanism != Mechanism::Moco {
            let mechanism = self.mechanism.name();
            check(
                self.framework == Framework::Moco,
                "mechanism",
                format!(
                    "{mechanism} is one of the moco framework's mechanisms; the v3 framework \
                     has its own in-batch keys"
                ),
            );
            check(
                !self.symmetric,
                "symmetric",
                format!(
                    "must be false with the {mechanism} mechanism, which contrasts the first \
                     view's query only"
                ),
            );
            check(
                self.batch_size >= 2,
                "batch_size",
                format!("must be at least 2 with the {mechanism} mechanism"),
            );
        }
        if self.lr_schedule == LrSchedule::Step {
            if let Some(message) = milestones_error(&self.lr_milestones) {
                check(false, "lr_milestones", message);
            }
        }
        // A NaN or a bad epoch count is reported by the schema check already.
        check(
            self.epochs < 1
                || !self.warmup_epochs.is_finite()
                || self.warmup_epochs < self.epochs as f64,
            "warmup_epochs",
            format!(
                "must be shorter than the run ({} epochs), got {}",
                self.epochs, self.warmup_epochs
            ),
        );
        let ds = &self.dataset;
        for e in dataset_errors(ds) {
            check(false, &e.field, e.message);
        }
        if ds.kind == DatasetKind::Synthetic
            && self.effective_mechanism() == Some(Mechanism::MemoryBank)
        {
            if let Some(message) = self.memory_bank_error(ds.synthetic_train) {
                check(false, "queue_size", message);
            }
        }
        if ds.kind == DatasetKind::Synthetic && self.batch_size as usize > ds.synthetic_train {
            check(
                false,
                "batch_size",
                format!(
                    "batch_size {} is larger than the dataset ({} images): no full batch",
                    self.batch_size, ds.synthetic_train
                ),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Preset;
    use super::*;
    use serde_json::Value;

    #[test]
    fn queue_not_multiple_of_batch_names_both_fields() {
        let cfg = RunConfig::preset(Preset::Cifar).with_overrides([
            ("queue_size", Value::from(1000)),
            ("batch_size", 256.into()),
        ]);
        let errors = cfg.unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["queue_size", "batch_size"]);
        assert_eq!(
            errors[0].message,
            "queue_size 1000 must be a multiple of the keys enqueued per step, batch_size = 256; \
             e.g. 768 or 1024"
        );
    }

    #[test]
    fn the_baseline_mechanisms_state_their_own_rules() {
        let with = |overrides: Value| {
            let pairs: Vec<(String, Value)> =
                overrides.as_object().unwrap().clone().into_iter().collect();
            RunConfig::preset(Preset::Demo)
                .with_overrides(pairs.iter().map(|(k, v)| (k.as_str(), v.clone())))
        };
        // end_to_end has no queue: a K that is no multiple of the batch is no error.
        let cfg = with(serde_json::json!({"mechanism": "end_to_end", "queue_size": 1000})).unwrap();
        assert_eq!(cfg.negatives(), cfg.batch_size - 1);
        let errors = with(
            serde_json::json!({"mechanism": "memory_bank", "symmetric": true, "queue_size": 6000}),
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["symmetric", "queue_size"]);
        assert_eq!(
            errors[1].message,
            "the memory bank holds the 5000 training images' features: it cannot give 6000 negatives"
        );
        let errors = RunConfig::preset(Preset::V3Cifar)
            .with_overrides([("mechanism", Value::from("end_to_end"))])
            .unwrap_err();
        assert_eq!(errors[0].field, "mechanism");
        assert!(
            errors[0]
                .message
                .contains("the v3 framework has its own in-batch keys"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn sync_bn_and_several_processes_state_their_rules() {
        let errors = RunConfig::preset(Preset::Demo)
            .with_overrides([
                ("mechanism", Value::from("memory_bank")),
                ("sync_bn", true.into()),
            ])
            .unwrap_err();
        assert_eq!(errors[0].field, "sync_bn");
        assert!(
            errors[0]
                .message
                .starts_with("the memory_bank mechanism normalises in shuffle_bn_splits groups"),
            "{}",
            errors[0]
        );
        // The demo's global batch (shuffle_bn_splits BN groups) split over 3 processes.
        let demo = RunConfig::preset(Preset::Demo);
        let errors = demo
            .clone()
            .with_overrides([("devices", Value::from(3))])
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"batch_size"), "{errors:?}");
        assert!(
            errors[0].message.contains("split evenly over 3 ranks"),
            "{errors:?}"
        );
        let errors = demo
            .with_overrides([("device", Value::from("cuda:0,cuda:1"))])
            .unwrap_err();
        assert_eq!(
            errors,
            vec![FieldError::new(
                "devices",
                "device lists 2 devices, one per process, so devices must be 2 (got 1)"
            )]
        );
        let v3 = RunConfig::preset(Preset::V3Cifar)
            .with_overrides([("devices", Value::from(2)), ("shuffle_bn_splits", 1.into())]);
        assert!(v3.is_ok(), "v3 normalises over the whole batch: {v3:?}");
    }

    #[test]
    fn ranges_come_from_the_schema() {
        let cases: [(&str, Value, &str); 7] = [
            ("epochs", 0.into(), "must be between 1 and 10000, got 0"),
            (
                "width",
                30.into(),
                "must be a multiple of 4 between 4 and 256, got 30",
            ),
            ("temperature", 0.0.into(), "must be in (0, 10], got 0.0"),
            ("sgd_momentum", 1.0.into(), "must be in [0, 1), got 1.0"),
            ("knn_t", (-1.0).into(), "must be greater than 0, got -1.0"),
            ("knn_every", (-1).into(), "must be at least 0, got -1"),
            (
                "name",
                "x".repeat(101).into(),
                "must be at most 100 characters",
            ),
        ];
        for (field, value, message) in cases {
            let errors = RunConfig::preset(Preset::Cifar)
                .with_overrides([(field, value)])
                .unwrap_err();
            assert_eq!(errors, vec![FieldError::new(field, message)], "{field}");
        }
    }

    #[test]
    fn the_rules_between_fields_name_their_field() {
        let errors = RunConfig::preset(Preset::V1)
            .with_overrides([
                ("warmup_epochs", Value::from(300.0)),
                ("dataset.kind", "image_folder".into()),
                ("dataset.load_size", 4.into()),
                ("shuffle_bn_splits", 7.into()),
                ("lr_milestones", serde_json::json!([0.8, 0.6])),
            ])
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "shuffle_bn_splits",
                "lr_milestones",
                "warmup_epochs",
                "dataset.path",
                "dataset.load_size"
            ]
        );
    }
}
