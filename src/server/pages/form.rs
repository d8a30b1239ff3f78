//! The new-run form: one input per `RunConfig` setting (the list, with labels, help, sections
//! and ranges, comes from `config::settings`), how a submission becomes the partial config the
//! server validates, and how errors and typed values are shown again.
//!
//! Field names are the config's own names (dotted for `dataset.*`), so an error from
//! `RunConfig::validate` lands beside the input it is about.
use super::format;
use crate::config::settings::{self, Group, Kind, Setting};
use crate::config::{
    queue_rule as queue_rule_sentence, Choice, FieldError, Framework, Mechanism, Preset, RunConfig,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The form's inputs outside the settings' sections: the preset and dataset pickers, which stand
/// for the `Run` group (`preset`, `dataset.kind`, `dataset.path`).
pub const PRESET_KEY: &str = "preset";
pub const DATASET_KEY: &str = "dataset";

/// The settings with an input of their own (every group but the pickers'), in the form's order.
pub fn form_settings() -> impl Iterator<Item = &'static Setting> {
    settings::all().iter().filter(|s| s.group != Group::Run)
}

/// The sections under "Advanced settings", in order.
pub fn advanced_groups() -> impl Iterator<Item = Group> {
    Group::all()
        .iter()
        .copied()
        .filter(|g| !matches!(g, Group::Run | Group::Basics))
}

fn find_setting(key: &str) -> Option<&'static Setting> {
    settings::find(key).filter(|s| s.group != Group::Run)
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
        f => find_setting(f).map(|s| input_id(&s.key)),
    }
}

/// The form's state as text, key → value ("true"/"false" for checkboxes).
pub type Values = BTreeMap<String, String>;

/// What a config puts into the form.
pub fn values_from_config(cfg: &RunConfig) -> Values {
    let json = serde_json::to_value(cfg).expect("RunConfig serialises");
    let mut values = Values::new();
    for setting in form_settings() {
        if let Some(v) = settings::lookup(&json, &setting.key) {
            values.insert(setting.key.clone(), settings::value_text(v));
        }
    }
    values.insert(PRESET_KEY.into(), cfg.preset.name().into());
    values.insert(DATASET_KEY.into(), cfg.dataset.label());
    values
}

/// A config as (dotted key, value) rows in the form's order (run identity, then the sections),
/// with any setting the form does not know appended, so nothing is hidden.
pub fn config_rows(config: &Value) -> Vec<(String, String)> {
    let mut keys: Vec<String> = ["name", "preset", "dataset.kind", "dataset.path"]
        .into_iter()
        .map(String::from)
        .collect();
    keys.extend(
        form_settings()
            .map(|s| s.key.clone())
            .filter(|k| k != "name"),
    );
    let mut flat = Vec::new();
    flatten("", config, &mut flat);
    let mut rows: Vec<(String, String)> = keys
        .iter()
        .filter_map(|k| settings::lookup(config, k).map(|v| (k.clone(), settings::value_text(v))))
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
        other => out.push((prefix.to_string(), settings::value_text(other))),
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
    for setting in form_settings() {
        let Some(raw) = values.get(&setting.key) else {
            continue;
        };
        match parse_value(setting, raw) {
            Ok(value) => match setting.key.strip_prefix("dataset.") {
                Some(sub) => {
                    dataset.insert(sub.into(), value);
                }
                None => {
                    doc.insert(setting.key.clone(), value);
                }
            },
            Err(message) => errors.push(FieldError::new(&setting.key, message)),
        }
    }
    if !dataset.is_empty() {
        doc.insert(DATASET_KEY.into(), Value::Object(dataset));
    }
    (Value::Object(doc), errors)
}

fn parse_value(setting: &Setting, raw: &str) -> Result<Value, String> {
    let text = raw.trim();
    let required = || "is required".to_string();
    match setting.kind {
        Kind::Text { .. } | Kind::Choice(_) => Ok(Value::String(text.to_string())),
        Kind::Bool => Ok(Value::Bool(matches!(text, "true" | "on" | "1" | "yes"))),
        Kind::Int { .. } => {
            if text.is_empty() {
                return Err(required());
            }
            let n = match (text.parse::<i64>(), text.parse::<u64>()) {
                (Ok(n), _) => Value::from(n),
                (_, Ok(n)) => Value::from(n),
                _ => return Err(format!("must be a whole number, got {text:?}")),
            };
            // Out of range here would otherwise fail as a type error (a negative count).
            setting.check(&n)?;
            Ok(n)
        }
        Kind::Float { .. } => {
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

/// The queue / batch rule with the form's numbers (the sentence `config::queue_rule` writes),
/// and whether it holds.
pub fn queue_rule(values: &Values) -> (String, bool) {
    let get = |k: &str| values.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    let symmetric = values.get("symmetric").is_some_and(|v| v == "true");
    let framework = values
        .get("framework")
        .and_then(|f| Framework::parse(f.trim()))
        .unwrap_or(Framework::Moco);
    let mechanism = values
        .get("mechanism")
        .and_then(|m| Mechanism::parse(m.trim()))
        .unwrap_or(Mechanism::Moco);
    match (get("queue_size"), get("batch_size")) {
        (Some(k), Some(b)) if k >= 1 && b >= 1 => {
            match queue_rule_sentence(framework, mechanism, k, b, symmetric) {
                Ok(sentence) => (sentence, true),
                Err(problem) => (format!("✗ {problem}."), false),
            }
        }
        _ => (
            "queue_size must be a multiple of batch_size (2 × batch_size with the symmetric loss)."
                .into(),
            true,
        ),
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
    pub min: String,
    pub max: String,
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
            min: String::new(),
            max: String::new(),
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

    pub fn from_setting(setting: &Setting, values: &Values, errors: Vec<String>) -> FieldView {
        let value = values.get(&setting.key).cloned().unwrap_or_default();
        let mut f = FieldView::new(&setting.key, &setting.label, &setting.help, errors);
        match &setting.kind {
            Kind::Text { .. } => {
                f.value = value;
                if setting.key == "device" {
                    f.placeholder = "auto";
                }
            }
            Kind::Int { min, max, .. } => {
                f.input_type = "number";
                f.step = "1";
                f.inputmode = "numeric";
                f.min = min.map(|m| m.to_string()).unwrap_or_default();
                f.max = max.map(|m| m.to_string()).unwrap_or_default();
                f.value = value;
            }
            Kind::Float { .. } => {
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
                        value: o.clone(),
                        label: o.clone(),
                        selected: *o == value,
                    })
                    .collect();
                // A value from an old config or a hand-made post is kept, so the error can name it.
                if !value.is_empty() && !options.contains(&value) {
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
    for &preset in Preset::all() {
        let cfg = RunConfig::preset(preset);
        let values = values_from_config(&cfg);
        let mut fields = Map::new();
        for setting in form_settings() {
            if let Some(v) = values.get(&setting.key) {
                let v = if setting.kind == Kind::Bool {
                    Value::Bool(v == "true")
                } else {
                    Value::String(v.clone())
                };
                fields.insert(setting.key.clone(), v);
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

    #[test]
    fn the_form_has_an_input_for_every_setting_but_the_pickers() {
        let form: BTreeSet<&str> = form_settings().map(|s| s.key.as_str()).collect();
        let pickers: BTreeSet<&str> = settings::in_group(Group::Run)
            .map(|s| s.key.as_str())
            .collect();
        assert_eq!(
            pickers,
            BTreeSet::from(["preset", "dataset.kind", "dataset.path"])
        );
        assert_eq!(form.len() + pickers.len(), settings::all().len());
    }

    #[test]
    fn preset_values_round_trip_through_the_form() {
        for &preset in Preset::all() {
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
            (
                "✓ queue_size 4096 = 16 × batch_size = 256.".to_string(),
                true
            )
        );
        values.insert("symmetric".into(), "true".into());
        values.insert("queue_size".into(), "4000".into());
        assert_eq!(
            queue_rule(&values),
            (
                "✗ queue_size 4000 must be a multiple of the keys enqueued per step, 2 × \
                 batch_size = 512 (symmetric loss); e.g. 3584 or 4096."
                    .to_string(),
                false
            )
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
        assert_eq!(rows.len(), form_settings().count() + 4);
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
