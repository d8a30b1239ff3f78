//! The new-run form: one input per `RunConfig` setting, how a submission becomes the partial
//! config the server validates, and how errors and typed values are shown again.
//!
//! Field names are the config's own names (dotted for `dataset.*`), so an error from
//! `RunConfig::validate` lands beside the input it is about.
use super::format;
use crate::config::{FieldError, Preset, RunConfig};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text,
    /// A whole number (i64 settings).
    Int,
    /// A whole number ≥ 0 (usize / u64 settings).
    UInt,
    Float,
    Bool,
    Choice(&'static [&'static str]),
    /// Comma-separated numbers.
    FloatList,
}

pub struct Spec {
    pub key: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

const fn spec(key: &'static str, label: &'static str, kind: Kind, help: &'static str) -> Spec {
    Spec {
        key,
        label,
        help,
        kind,
    }
}

/// Always visible, after the preset and dataset pickers.
pub const BASICS: &[Spec] = &[
    spec(
        "name",
        "Name",
        Kind::Text,
        "Optional; shown in lists and charts.",
    ),
    spec(
        "epochs",
        "Epochs",
        Kind::Int,
        "Passes over the training split.",
    ),
    spec(
        "batch_size",
        "Batch size",
        Kind::Int,
        "Images per step. queue_size must be a multiple of it (of 2 × batch_size with the \
         symmetric loss).",
    ),
    spec(
        "device",
        "Device",
        Kind::Text,
        "auto (a GPU when there is one), cpu or cuda:N.",
    ),
];

pub struct Section {
    pub title: &'static str,
    pub fields: &'static [Spec],
}

/// Under "Advanced settings": every other engine setting.
pub const SECTIONS: &[Section] = &[
    Section {
        title: "Encoder and head",
        fields: &[
            spec(
                "image_size",
                "Crop size",
                Kind::Int,
                "Side in pixels of the augmented crops.",
            ),
            spec(
                "arch",
                "Backbone",
                Kind::Choice(&["resnet18", "resnet34", "resnet50"]),
                "",
            ),
            spec(
                "stem",
                "Stem",
                Kind::Choice(&["imagenet", "cifar"]),
                "imagenet: 7×7 stride 2 + max-pool; cifar: 3×3 stride 1 for small images.",
            ),
            spec(
                "width",
                "Width",
                Kind::Int,
                "Base channels of the ResNet (64 in torchvision; 8–32 for cheap runs).",
            ),
            spec(
                "head",
                "Projection head",
                Kind::Choice(&["linear", "mlp"]),
                "v1: linear; v2: MLP.",
            ),
            spec(
                "head_hidden",
                "MLP hidden width",
                Kind::Int,
                "0 = the backbone's feature width.",
            ),
            spec(
                "dim",
                "Embedding dimension",
                Kind::Int,
                "Output of the head.",
            ),
        ],
    },
    Section {
        title: "MoCo",
        fields: &[
            spec(
                "temperature",
                "Temperature T",
                Kind::Float,
                "Logits are divided by T.",
            ),
            spec(
                "momentum",
                "Key encoder momentum m",
                Kind::Float,
                "θk ← m·θk + (1 − m)·θq after every step.",
            ),
            spec(
                "momentum_schedule",
                "Momentum schedule",
                Kind::Choice(&["constant", "cosine"]),
                "cosine raises m to 1 over the run.",
            ),
            spec(
                "queue_size",
                "Queue size K",
                Kind::Int,
                "Negative keys kept in the queue.",
            ),
            spec(
                "symmetric",
                "Symmetric loss",
                Kind::Bool,
                "L(x1, x2) + L(x2, x1); both key sets are enqueued, so K must be a multiple of \
                 2 × batch_size.",
            ),
            spec(
                "shuffle_bn_splits",
                "Shuffle-BN splits",
                Kind::Int,
                "Sub-batches with their own BN statistics (1 = plain BN); must divide batch_size.",
            ),
        ],
    },
    Section {
        title: "Optimisation",
        fields: &[
            spec(
                "base_lr",
                "Base learning rate",
                Kind::Float,
                "The learning rate at lr_base_batch images per step.",
            ),
            spec(
                "lr_base_batch",
                "lr base batch",
                Kind::Int,
                "Effective lr = base_lr × batch_size / lr_base_batch.",
            ),
            spec(
                "lr_schedule",
                "lr schedule",
                Kind::Choice(&["step", "cosine"]),
                "",
            ),
            spec(
                "lr_update",
                "lr set every",
                Kind::Choice(&["epoch", "step"]),
                "epoch: as the official v1/v2 code and the CIFAR demo; step: as MoCo v3. A \
                 warm-up always ramps per step.",
            ),
            spec(
                "lr_first_epoch",
                "First epoch's number",
                Kind::Int,
                "Per-epoch lr: 0 as main_moco.py, 1 as the CIFAR demo notebook (its last epoch \
                 then trains at lr 0).",
            ),
            spec(
                "lr_milestones",
                "lr milestones",
                Kind::FloatList,
                "Step schedule: fractions of the run where lr is multiplied by lr_gamma, e.g. \
                 0.6, 0.8.",
            ),
            spec(
                "lr_gamma",
                "lr gamma",
                Kind::Float,
                "Factor at each milestone.",
            ),
            spec(
                "warmup_epochs",
                "Warm-up epochs",
                Kind::Float,
                "Linear from 0, then the schedule over the remaining epochs.",
            ),
            spec("sgd_momentum", "SGD momentum", Kind::Float, ""),
            spec("weight_decay", "Weight decay", Kind::Float, ""),
            spec(
                "wd_exclude_bn_bias",
                "No weight decay on BN and biases",
                Kind::Bool,
                "",
            ),
        ],
    },
    Section {
        title: "Data",
        fields: &[
            spec(
                "augmentation",
                "Augmentation recipe",
                Kind::Choice(&["v1", "v2", "cifar", "v3"]),
                "The run page shows a preview of the views.",
            ),
            spec(
                "normalization",
                "Normalisation",
                Kind::Choice(&["cifar", "imagenet", "measured"]),
                "The official mean/std constants of CIFAR or ImageNet, or measured on the training \
                 images (for your own data).",
            ),
            spec(
                "dataset.synthetic_train",
                "Synthetic: training images",
                Kind::UInt,
                "Built-in synthetic set only.",
            ),
            spec(
                "dataset.synthetic_test",
                "Synthetic: held-out images",
                Kind::UInt,
                "Built-in synthetic set only; the kNN monitor queries these.",
            ),
            spec(
                "dataset.synthetic_image_size",
                "Synthetic: image side",
                Kind::UInt,
                "",
            ),
            spec(
                "dataset.load_size",
                "Load size",
                Kind::UInt,
                "Image folders: side images are resized to once (0 = crop size × 8/7).",
            ),
            spec(
                "dataset.cache",
                "Keep decoded images in memory",
                Kind::Bool,
                "Image folders; small sets.",
            ),
            spec(
                "dataset.use_unlabeled",
                "Use STL-10's unlabeled split",
                Kind::Bool,
                "",
            ),
            spec(
                "dataset.skip_corrupt",
                "Skip unreadable files",
                Kind::Bool,
                "Counted and reported instead of failing the run.",
            ),
            spec("prefetch", "Prefetched batches", Kind::UInt, ""),
            spec(
                "loader_threads",
                "Loader threads",
                Kind::UInt,
                "0 = one per core.",
            ),
        ],
    },
    Section {
        title: "Speed",
        fields: &[
            spec(
                "precision",
                "Precision",
                Kind::Choice(&["auto", "fp32", "bf16", "fp16"]),
                "auto = bf16 autocast on a GPU that has it (fp16 with loss scaling on older ones), \
                 fp32 on the CPU.",
            ),
            spec(
                "memory_format",
                "Memory format",
                Kind::Choice(&["auto", "channels_last", "contiguous"]),
                "auto = channels_last on a GPU, contiguous on the CPU.",
            ),
        ],
    },
    Section {
        title: "Monitoring and checkpoints",
        fields: &[
            spec("seed", "Seed", Kind::UInt, ""),
            spec(
                "metrics_every",
                "Metrics every N steps",
                Kind::Int,
                "How often values are read from the device and charted.",
            ),
            spec(
                "knn_every",
                "kNN every E epochs",
                Kind::Int,
                "0 = never; always after the last epoch otherwise.",
            ),
            spec(
                "knn_baseline",
                "kNN of the untrained encoder",
                Kind::Bool,
                "Evaluated before training and shown as epoch 0, the baseline; switch off for very \
                 large sets.",
            ),
            spec("knn_k", "kNN k", Kind::Int, ""),
            spec("knn_t", "kNN temperature", Kind::Float, ""),
            spec(
                "knn_features",
                "kNN features",
                Kind::Choice(&["backbone", "head"]),
                "",
            ),
            spec(
                "knn_bank_limit",
                "kNN bank limit",
                Kind::UInt,
                "At most this many training images in the bank (0 = all).",
            ),
            spec(
                "checkpoint_every",
                "Checkpoint every E epochs",
                Kind::Int,
                "0 = only at the end and on cancel.",
            ),
            spec(
                "collapse_threshold",
                "Collapse threshold",
                Kind::Float,
                "The run fails when the queue's mean similarity exceeds it.",
            ),
        ],
    },
];

/// The form's inputs outside the spec tables: the preset and dataset pickers.
pub const PRESET_KEY: &str = "preset";
pub const DATASET_KEY: &str = "dataset";

pub fn all_specs() -> impl Iterator<Item = &'static Spec> {
    BASICS
        .iter()
        .chain(SECTIONS.iter().flat_map(|s| s.fields.iter()))
}

fn find_spec(key: &str) -> Option<&'static Spec> {
    all_specs().find(|s| s.key == key)
}

/// The HTML id of a setting's input.
pub fn input_id(key: &str) -> String {
    format!("f-{}", key.replace('.', "-"))
}

/// Where an error about `field` is shown: its input, or the dataset picker for dataset.kind/path.
pub fn anchor_for(field: &str) -> Option<String> {
    match field {
        PRESET_KEY => Some(input_id(PRESET_KEY)),
        "dataset.kind" | "dataset.path" | DATASET_KEY => Some(input_id(DATASET_KEY)),
        f => find_spec(f).map(|s| input_id(s.key)),
    }
}

/// The form's state as text, key → value ("true"/"false" for checkboxes).
pub type Values = BTreeMap<String, String>;

/// What a config puts into the form.
pub fn values_from_config(cfg: &RunConfig) -> Values {
    let json = serde_json::to_value(cfg).expect("RunConfig serialises");
    let mut values = Values::new();
    for spec in all_specs() {
        if let Some(v) = lookup(&json, spec.key) {
            values.insert(spec.key.to_string(), format::config_value(v));
        }
    }
    values.insert(PRESET_KEY.into(), cfg.preset.name().into());
    values.insert(DATASET_KEY.into(), cfg.dataset.label());
    values
}

fn lookup<'a>(json: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(json, |v, part| v.get(part))
}

/// A config as (dotted key, value) rows in the form's order (run identity, then the sections),
/// with any setting the form does not know appended, so nothing is hidden.
pub fn config_rows(config: &Value) -> Vec<(String, String)> {
    let mut keys: Vec<String> = ["name", "preset", "dataset.kind", "dataset.path"]
        .into_iter()
        .map(String::from)
        .collect();
    keys.extend(
        all_specs()
            .map(|s| s.key.to_string())
            .filter(|k| k != "name"),
    );
    let mut flat = Vec::new();
    flatten("", config, &mut flat);
    let mut rows: Vec<(String, String)> = keys
        .iter()
        .filter_map(|k| lookup(config, k).map(|v| (k.clone(), format::config_value(v))))
        .collect();
    for (k, v) in flat {
        if !keys.contains(&k) {
            rows.push((k, v));
        }
    }
    rows
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), format::config_value(other))),
    }
}

/// A form post as sent: for a repeated name the last value wins (a checkbox follows its hidden
/// "false" input, so a ticked box reads "true").
pub fn submitted_values(pairs: Vec<(String, String)>) -> Values {
    let mut values = Values::new();
    for (k, v) in pairs {
        values.insert(k, v);
    }
    values
}

/// Splits the dataset picker's value, "synthetic" or "kind:path", into (kind, path).
pub fn split_dataset_choice(choice: &str) -> (String, Option<String>) {
    match choice.split_once(':') {
        Some((kind, path)) => (kind.trim().to_string(), Some(path.to_string())),
        None => (choice.trim().to_string(), None),
    }
}

/// The partial config a submission describes, and the values that are not even numbers.
/// Settings missing from the post take the preset's defaults.
pub fn partial_config(values: &Values) -> (Value, Vec<FieldError>) {
    let mut doc = Map::new();
    let mut dataset = Map::new();
    let mut errors = Vec::new();
    if let Some(p) = values.get(PRESET_KEY).filter(|p| !p.trim().is_empty()) {
        doc.insert(PRESET_KEY.into(), Value::String(p.trim().to_string()));
    }
    if let Some(choice) = values.get(DATASET_KEY).filter(|c| !c.trim().is_empty()) {
        let (kind, path) = split_dataset_choice(choice);
        dataset.insert("kind".into(), Value::String(kind));
        if let Some(path) = path {
            dataset.insert("path".into(), Value::String(path));
        }
    }
    for spec in all_specs() {
        let Some(raw) = values.get(spec.key) else {
            continue;
        };
        match parse_value(spec, raw) {
            Ok(value) => match spec.key.strip_prefix("dataset.") {
                Some(sub) => {
                    dataset.insert(sub.into(), value);
                }
                None => {
                    doc.insert(spec.key.into(), value);
                }
            },
            Err(message) => errors.push(FieldError::new(spec.key, message)),
        }
    }
    if !dataset.is_empty() {
        doc.insert(DATASET_KEY.into(), Value::Object(dataset));
    }
    (Value::Object(doc), errors)
}

fn parse_value(spec: &Spec, raw: &str) -> Result<Value, String> {
    let text = raw.trim();
    let required = || "is required".to_string();
    match spec.kind {
        Kind::Text => Ok(Value::String(text.to_string())),
        Kind::Choice(_) => Ok(Value::String(text.to_string())),
        Kind::Bool => Ok(Value::Bool(matches!(text, "true" | "on" | "1" | "yes"))),
        Kind::Int | Kind::UInt => {
            if text.is_empty() {
                return Err(required());
            }
            let n: i64 = text
                .parse()
                .map_err(|_| format!("must be a whole number, got {text:?}"))?;
            if spec.kind == Kind::UInt && n < 0 {
                return Err(format!("must be 0 or more, got {n}"));
            }
            Ok(Value::from(n))
        }
        Kind::Float => {
            if text.is_empty() {
                return Err(required());
            }
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Value::from(v)),
                _ => Err(format!("must be a number, got {text:?}")),
            }
        }
        Kind::FloatList => {
            let mut out = Vec::new();
            for part in text
                .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
                .filter(|p| !p.is_empty())
            {
                match part.parse::<f64>() {
                    Ok(v) if v.is_finite() => out.push(Value::from(v)),
                    _ => {
                        return Err(format!(
                            "must be numbers separated by commas, e.g. 0.6, 0.8; {part:?} is not \
                             a number"
                        ))
                    }
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// Every problem with a submission that can be found without storing anything: the values that
/// are not numbers, then what `RunConfig` validation says about the rest (one list, so the user
/// fixes everything in one go).
pub fn local_errors(doc: &Value, parse_errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut errors = parse_errors;
    if let Err(more) = RunConfig::from_partial_json(doc, Preset::Cifar) {
        let seen: BTreeSet<String> = errors.iter().map(|e| e.field.clone()).collect();
        // A field that did not parse took its preset default; what validation says about that
        // default would only confuse.
        errors.extend(more.into_iter().filter(|e| !seen.contains(&e.field)));
    }
    errors
}

/// base_lr × batch_size / lr_base_batch from the form's text, if all three are numbers.
pub fn effective_lr(values: &Values) -> String {
    let get = |k: &str| values.get(k).and_then(|v| v.trim().parse::<f64>().ok());
    match (get("base_lr"), get("batch_size"), get("lr_base_batch")) {
        (Some(lr), Some(b), Some(base)) if base > 0.0 => format::num(lr * b / base, 6),
        _ => "—".into(),
    }
}

/// The queue / batch rule with the form's numbers (static/new_run.js writes the same sentence).
pub fn queue_rule(values: &Values) -> String {
    let get = |k: &str| values.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    let symmetric = values.get("symmetric").is_some_and(|v| v == "true");
    match (get("queue_size"), get("batch_size")) {
        (Some(k), Some(b)) if k >= 1 && b >= 1 => {
            let per_step = if symmetric { 2 * b } else { b };
            let what = if symmetric {
                format!("2 × batch_size = {per_step} (symmetric loss)")
            } else {
                format!("batch_size = {per_step}")
            };
            if k % per_step == 0 {
                format!("✓ queue_size {k} = {} × {what}.", k / per_step)
            } else {
                let lower = (k / per_step).max(1) * per_step;
                format!(
                    "✗ queue_size {k} is not a multiple of {what}; e.g. {lower} or {}.",
                    lower + per_step
                )
            }
        }
        _ => {
            "queue_size must be a multiple of batch_size (2 × batch_size with the symmetric loss)."
                .into()
        }
    }
}

/// One `<option>`.
pub struct OptionView {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

/// One input as the template draws it.
pub struct FieldView {
    pub key: String,
    pub id: String,
    pub label: String,
    pub help: String,
    pub is_checkbox: bool,
    pub is_select: bool,
    pub checked: bool,
    pub options: Vec<OptionView>,
    pub input_type: &'static str,
    pub value: String,
    pub step: &'static str,
    pub min: &'static str,
    pub inputmode: &'static str,
    pub placeholder: &'static str,
    pub errors: Vec<String>,
    pub described_by: String,
    /// Takes two columns of the grid (long option labels).
    pub wide: bool,
}

impl FieldView {
    fn new(key: &str, label: &str, help: &str, errors: Vec<String>) -> FieldView {
        FieldView {
            key: key.to_string(),
            id: input_id(key),
            label: label.to_string(),
            help: help.to_string(),
            is_checkbox: false,
            is_select: false,
            checked: false,
            options: Vec::new(),
            input_type: "text",
            value: String::new(),
            step: "",
            min: "",
            inputmode: "",
            placeholder: "",
            errors,
            described_by: String::new(),
            wide: false,
        }
    }

    fn finish(mut self) -> FieldView {
        let mut ids: Vec<String> = (1..=self.errors.len())
            .map(|i| format!("{}-error-{i}", self.id))
            .collect();
        if !self.help.is_empty() {
            ids.push(format!("{}-help", self.id));
        }
        if self.key == "queue_size" {
            ids.push("queue-rule".into());
        }
        self.described_by = ids.join(" ");
        self
    }

    pub fn from_spec(spec: &Spec, values: &Values, errors: Vec<String>) -> FieldView {
        let value = values.get(spec.key).cloned().unwrap_or_default();
        let mut f = FieldView::new(spec.key, spec.label, spec.help, errors);
        match spec.kind {
            Kind::Text => {
                f.value = value;
                if spec.key == "device" {
                    f.placeholder = "auto";
                }
            }
            Kind::Int | Kind::UInt => {
                f.input_type = "number";
                f.step = "1";
                f.inputmode = "numeric";
                if spec.kind == Kind::UInt {
                    f.min = "0";
                }
                f.value = value;
            }
            Kind::Float => {
                f.input_type = "number";
                f.step = "any";
                f.inputmode = "decimal";
                f.value = value;
            }
            Kind::FloatList => {
                f.value = value;
                f.placeholder = "0.6, 0.8";
            }
            Kind::Bool => {
                f.is_checkbox = true;
                f.checked = value == "true";
            }
            Kind::Choice(options) => {
                f.is_select = true;
                f.options = options
                    .iter()
                    .map(|o| OptionView {
                        value: o.to_string(),
                        label: o.to_string(),
                        selected: *o == value,
                    })
                    .collect();
                // A value from an old config or a hand-made post is kept, so the error can name it.
                if !value.is_empty() && !options.contains(&value.as_str()) {
                    f.options.push(OptionView {
                        label: format!("{value} (unknown)"),
                        value,
                        selected: true,
                    });
                }
            }
        }
        f.finish()
    }

    pub fn select(
        key: &str,
        label: &str,
        help: &str,
        options: Vec<OptionView>,
        errors: Vec<String>,
    ) -> FieldView {
        let mut f = FieldView::new(key, label, help, errors);
        f.is_select = true;
        f.options = options;
        f.finish()
    }
}

/// Each preset's description and form values, for the script that fills the form on a change.
pub fn presets_json() -> Value {
    let mut out = Map::new();
    for preset in Preset::ALL {
        let cfg = RunConfig::preset(preset);
        let values = values_from_config(&cfg);
        let mut fields = Map::new();
        for spec in all_specs() {
            if let Some(v) = values.get(spec.key) {
                let v = if spec.kind == Kind::Bool {
                    Value::Bool(v == "true")
                } else {
                    Value::String(v.clone())
                };
                fields.insert(spec.key.into(), v);
            }
        }
        out.insert(
            preset.name().into(),
            serde_json::json!({"description": preset.description(), "values": fields}),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat_keys(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Value::Object(map) = v {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() {
                    flat_keys(v, &key, out);
                } else {
                    out.insert(key);
                }
            }
        }
    }

    #[test]
    fn the_form_has_an_input_for_every_setting() {
        let json = serde_json::to_value(RunConfig::preset(Preset::V2)).unwrap();
        let mut keys = BTreeSet::new();
        flat_keys(&json, "", &mut keys);
        let mut covered: BTreeSet<String> = all_specs().map(|s| s.key.to_string()).collect();
        // The preset picker and the dataset picker (kind and path together).
        covered.extend(["preset", "dataset.kind", "dataset.path"].map(String::from));
        let missing: Vec<_> = keys.difference(&covered).collect();
        assert!(missing.is_empty(), "settings without an input: {missing:?}");
        let unknown: Vec<_> = covered.difference(&keys).collect();
        assert!(unknown.is_empty(), "inputs for no setting: {unknown:?}");
    }

    #[test]
    fn preset_values_round_trip_through_the_form() {
        for preset in Preset::ALL {
            let cfg = RunConfig::preset(preset);
            let (doc, errors) = partial_config(&values_from_config(&cfg));
            assert!(errors.is_empty(), "{errors:?}");
            let back = RunConfig::from_partial_json(&doc, Preset::V1).unwrap();
            assert_eq!(back, cfg, "{}", preset.name());
        }
    }

    #[test]
    fn a_submission_becomes_a_partial_config() {
        let values = submitted_values(vec![
            ("preset".into(), "cifar".into()),
            ("name".into(), " tiny ".into()),
            ("dataset".into(), "image_folder:pets/train".into()),
            ("epochs".into(), "2".into()),
            ("symmetric".into(), "false".into()),
            ("symmetric".into(), "true".into()),
            ("wd_exclude_bn_bias".into(), "false".into()),
            ("lr_milestones".into(), "0.5, 0.75".into()),
            ("dataset.synthetic_train".into(), "128".into()),
        ]);
        let (doc, errors) = partial_config(&values);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            doc,
            serde_json::json!({
                "preset": "cifar", "name": "tiny", "epochs": 2, "symmetric": true,
                "wd_exclude_bn_bias": false, "lr_milestones": [0.5, 0.75],
                "dataset": {"kind": "image_folder", "path": "pets/train", "synthetic_train": 128}
            })
        );
    }

    #[test]
    fn text_in_number_fields_is_named_and_other_errors_still_found() {
        let values = submitted_values(vec![
            ("preset".into(), "cifar".into()),
            ("dataset".into(), "synthetic".into()),
            ("epochs".into(), "two".into()),
            ("momentum".into(), "".into()),
            ("prefetch".into(), "-1".into()),
            ("queue_size".into(), "1000".into()),
            ("batch_size".into(), "256".into()),
            ("lr_milestones".into(), "0.5, x".into()),
        ]);
        let (doc, parse_errors) = partial_config(&values);
        let fields: Vec<_> = parse_errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["epochs", "momentum", "lr_milestones", "prefetch"]
        );
        assert_eq!(
            parse_errors[0].message,
            "must be a whole number, got \"two\""
        );
        assert_eq!(parse_errors[1].message, "is required");
        let all = local_errors(&doc, parse_errors);
        assert!(
            all.iter()
                .any(|e| e.field == "queue_size" && e.message.contains("multiple")),
            "{all:?}"
        );
    }

    #[test]
    fn derived_values_follow_the_form() {
        let mut values = values_from_config(&RunConfig::preset(Preset::Cifar));
        assert_eq!(effective_lr(&values), "0.06");
        values.insert("batch_size".into(), "256".into());
        assert_eq!(effective_lr(&values), "0.03");
        assert_eq!(
            queue_rule(&values),
            "✓ queue_size 4096 = 16 × batch_size = 256."
        );
        values.insert("symmetric".into(), "true".into());
        values.insert("queue_size".into(), "4000".into());
        assert_eq!(
            queue_rule(&values),
            "✗ queue_size 4000 is not a multiple of 2 × batch_size = 512 (symmetric loss); e.g. \
             3584 or 4096."
        );
        values.insert("base_lr".into(), "fast".into());
        assert_eq!(effective_lr(&values), "—");
    }

    #[test]
    fn config_rows_follow_the_form_and_keep_unknown_keys() {
        let mut json = serde_json::to_value(RunConfig::preset(Preset::V1)).unwrap();
        json["extra"] = serde_json::json!(1);
        let rows = config_rows(&json);
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &keys[..5],
            &["name", "preset", "dataset.kind", "dataset.path", "epochs"]
        );
        assert_eq!(keys.last(), Some(&"extra"));
        assert!(rows.contains(&("lr_milestones".to_string(), "0.6, 0.8".to_string())));
        assert_eq!(rows.len(), all_specs().count() + 4);
    }

    #[test]
    fn errors_point_at_their_inputs() {
        assert_eq!(anchor_for("queue_size").as_deref(), Some("f-queue_size"));
        assert_eq!(
            anchor_for("dataset.synthetic_train").as_deref(),
            Some("f-dataset-synthetic_train")
        );
        assert_eq!(anchor_for("dataset.path").as_deref(), Some("f-dataset"));
        assert_eq!(anchor_for("nonsense"), None);
    }
}
