//! Sweeps: one base config and a grid of values for one or two of its fields (and seeds), each
//! grid point an ordinary run. This module says what a sweep is and expands it into its
//! members' configs, checking every member before anything starts; `recipes` holds the built-in
//! grids that mirror the MoCo paper's ablations, `table` the grid's results as a table.
pub mod recipes;
pub mod table;

use crate::config::{settings, FieldError, Preset, RunConfig};
use crate::db::runs::RunState;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Varied fields besides `seed`.
pub const MAX_VARIED_FIELDS: usize = 2;
/// Values one field may take.
pub const MAX_VALUES: usize = 16;
/// Members of one sweep.
pub const MAX_MEMBERS: usize = 64;

/// Settings a sweep cannot vary: they name, place or pick the starting point of the whole
/// sweep rather than a point of it.
const FIXED_FIELDS: [&str; 5] = ["name", "preset", "device", "devices", "dataset.kind"];

/// Where a sweep stands, read from its members' run states (never stored).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum SweepState {
    /// A member trains.
    Running,
    /// None trains yet, one waits for a device.
    Queued,
    /// A member stopped with the server: resume the sweep to go on.
    Interrupted,
    /// A member was cancelled: resume the sweep to go on.
    Cancelled,
    /// Every member completed or failed (a failure is a result).
    Finished,
}

impl SweepState {
    pub fn of(members: &[RunState]) -> SweepState {
        let any = |s: RunState| members.contains(&s);
        if any(RunState::Running) {
            SweepState::Running
        } else if any(RunState::Queued) {
            SweepState::Queued
        } else if any(RunState::Interrupted) {
            SweepState::Interrupted
        } else if any(RunState::Cancelled) {
            SweepState::Cancelled
        } else {
            SweepState::Finished
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One varied field and the values it takes, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    /// A setting's name (dotted inside `dataset`), e.g. `momentum`, `queue_size`, `seed`.
    pub field: String,
    pub values: Vec<Value>,
}

/// What a user asks for: a base config and either a grid (`vary`) or a built-in recipe's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Shown in lists; empty = the recipe's title or the varied fields.
    #[serde(default)]
    pub name: String,
    /// A built-in recipe (`recipes::RECIPES`): its grid is used, `vary` may add seeds.
    #[serde(default)]
    pub recipe: Option<String>,
    /// A partial run config (as the runs API takes): missing keys come from its `preset`.
    #[serde(default = "empty_object")]
    pub base: Value,
    /// The fields varied, the first slowest; the grid is every combination.
    #[serde(default)]
    pub vary: Vec<Axis>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A grid point: each varied field's value, in the fields' order.
pub type Point = Vec<(String, Value)>;

/// One grid point: its position, the values it sets and its validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub position: usize,
    pub values: Point,
    pub config: RunConfig,
}

impl Member {
    /// "momentum=0.9 seed=1": how tables and names refer to the member.
    pub fn label(&self) -> String {
        label_of(&self.values)
    }
}

/// A member's values as a JSON object (field → value).
pub fn values_object(values: &[(String, Value)]) -> Value {
    Value::Object(values.iter().cloned().collect())
}

/// "field=value field=value" for a member's values.
pub fn label_of(values: &[(String, Value)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={}", settings::value_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sweep expanded and checked: its name and its members in grid order.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub name: String,
    pub recipe: Option<&'static recipes::Recipe>,
    /// The fields that vary, the recipe's first.
    pub fields: Vec<String>,
    pub members: Vec<Member>,
    /// Grid points a recipe left out, each with the reason (e.g. a K the dataset cannot give).
    pub skipped: Vec<String>,
}

impl SweepSpec {
    /// Every member's config, or every problem: the spec's own (`vary`, `recipe`) and each
    /// member's invalid fields, named `members[i].field` with the member's values in the
    /// message. Nothing is valid unless every member is.
    pub fn expand(&self, train_images: Option<usize>) -> Result<Expanded, Vec<FieldError>> {
        if !self.base.is_object() {
            return Err(vec![FieldError::new(
                "base",
                "must be an object (a partial config)",
            )]);
        }
        let recipe = match &self.recipe {
            None => None,
            Some(name) => Some(recipes::find(name).ok_or_else(|| {
                vec![FieldError::new(
                    "recipe",
                    format!(
                        "unknown recipe {name:?}; expected one of {}",
                        recipes::names().join(", ")
                    ),
                )]
            })?),
        };
        let base = RunConfig::from_partial_json(&self.base, Preset::Cifar)
            .map_err(|errors| prefixed("base", errors))?;
        let recipe_fields: Vec<&str> = recipe.map_or(Vec::new(), |r| r.fields.to_vec());
        check_axes(&self.vary, &recipe_fields)?;
        let (recipe_points, skipped) = match recipe {
            Some(r) => {
                let p = r.points(&base, train_images);
                (p.points, p.skipped)
            }
            None => (vec![Point::new()], Vec::new()),
        };
        if recipe_points.is_empty() {
            return Err(vec![FieldError::new(
                "recipe",
                format!(
                    "no member of the recipe fits this config: {}",
                    skipped.join("; ")
                ),
            )]);
        }
        let points: Vec<Point> = recipe_points
            .iter()
            .flat_map(|r| {
                grid(&self.vary).into_iter().map(move |g| {
                    let mut point = r.clone();
                    point.extend(g);
                    point
                })
            })
            .collect();
        if points.len() > MAX_MEMBERS {
            return Err(vec![FieldError::new(
                "vary",
                format!(
                    "the grid has {} members; at most {MAX_MEMBERS}",
                    points.len()
                ),
            )]);
        }
        let mut members = Vec::new();
        let mut errors = Vec::new();
        for (position, values) in points.into_iter().enumerate() {
            let mut doc = self.base.clone();
            for (field, value) in &values {
                set_dotted(&mut doc, field, value.clone());
            }
            match RunConfig::from_partial_json(&doc, Preset::Cifar) {
                Ok(config) => members.push(Member {
                    position,
                    values,
                    config,
                }),
                Err(member_errors) => {
                    let label = label_of(&values);
                    errors.extend(member_errors.into_iter().map(|e| {
                        FieldError::new(
                            &format!("members[{position}].{}", e.field),
                            format!("{label}: {}", e.message),
                        )
                    }))
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let name = if !self.name.trim().is_empty() {
            self.name.trim().to_string()
        } else if let Some(r) = recipe {
            r.title.to_string()
        } else {
            self.vary
                .iter()
                .map(|a| a.field.as_str())
                .collect::<Vec<_>>()
                .join(" × ")
        };
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(vec![FieldError::new(
                "name",
                "must be at most 100 characters, without control characters",
            )]);
        }
        for m in &mut members {
            m.config.name = format!("{name} · {}", m.label());
        }
        let mut fields: Vec<String> = recipe_fields.iter().map(|f| f.to_string()).collect();
        fields.extend(self.vary.iter().map(|a| a.field.clone()));
        Ok(Expanded {
            name,
            recipe,
            fields,
            members,
            skipped,
        })
    }
}

/// The training images of `cfg`'s dataset, for recipes that cap K by it: the synthetic set's
/// size, or the opened split's; None when it cannot be opened (the members' own checks then say
/// why). Relative paths are resolved against `data_dir`, which the caller has checked.
pub fn training_images(cfg: &RunConfig, data_dir: &std::path::Path) -> Option<usize> {
    if cfg.dataset.kind == crate::config::DatasetKind::Synthetic {
        return Some(cfg.dataset.synthetic_train);
    }
    crate::data::open_splits(&cfg.dataset, data_dir)
        .map(|s| s.train.len())
        .ok()
}

/// The grid of `axes`: every combination, the first axis varying slowest.
pub fn grid(axes: &[Axis]) -> Vec<Point> {
    let mut points = vec![Point::new()];
    for axis in axes {
        points = points
            .into_iter()
            .flat_map(|point| {
                axis.values.iter().map(move |v| {
                    let mut next = point.clone();
                    next.push((axis.field.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    points
}

/// The rules of the grid itself: known, variable fields, each once; one or two besides seeds;
/// listed values, none twice; a bounded number of members.
fn check_axes(axes: &[Axis], recipe_fields: &[&str]) -> Result<(), Vec<FieldError>> {
    let err = |message: String| Err(vec![FieldError::new("vary", message)]);
    if axes.is_empty() && recipe_fields.is_empty() {
        return err(
            "name at least one field to vary, e.g. momentum with the values 0.9, 0.99".into(),
        );
    }
    let mut seen = Vec::new();
    for axis in axes {
        let field = axis.field.trim();
        if settings::find(field).is_none() {
            return err(format!(
                "{field:?} is not a setting (see `moco-server settings`)"
            ));
        }
        if FIXED_FIELDS.contains(&field) {
            return err(format!(
                "{field} is the same for the whole sweep: set it in the base config"
            ));
        }
        if seen.contains(&field) {
            return err(format!("{field} is varied twice"));
        }
        if recipe_fields.contains(&field) {
            return err(format!("{field} is the recipe's to vary"));
        }
        seen.push(field);
        if axis.values.is_empty() || axis.values.len() > MAX_VALUES {
            return err(format!(
                "{field} must take between 1 and {MAX_VALUES} values"
            ));
        }
        for (i, v) in axis.values.iter().enumerate() {
            if axis.values[..i].contains(v) {
                return err(format!("{field} lists {} twice", settings::value_text(v)));
            }
        }
    }
    // A recipe counts as one field (the mechanisms' figure varies three together).
    let fields =
        seen.iter().filter(|f| **f != "seed").count() + usize::from(!recipe_fields.is_empty());
    if fields > MAX_VARIED_FIELDS {
        return err(format!(
            "at most {MAX_VARIED_FIELDS} fields besides seed can be varied, got {}",
            seen.join(", ")
        ));
    }
    // The number of members is checked on the whole grid, recipe points included (`expand`).
    Ok(())
}

/// Sets `field` (dotted inside `dataset`) in a partial config document.
pub fn set_dotted(doc: &mut Value, field: &str, value: Value) {
    match field.split_once('.') {
        Some((outer, inner)) => {
            let entry = doc
                .as_object_mut()
                .expect("a config document is an object")
                .entry(outer.to_string())
                .or_insert_with(empty_object);
            if !entry.is_object() {
                *entry = empty_object();
            }
            set_dotted(entry, inner, value);
        }
        None => {
            doc.as_object_mut()
                .expect("a config document is an object")
                .insert(field.to_string(), value);
        }
    }
}

fn prefixed(prefix: &str, errors: Vec<FieldError>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| FieldError::new(&format!("{prefix}.{}", e.field), e.message))
        .collect()
}

/// Parses the CLI's `field=v1,v2,v3` into an axis (values as JSON where they parse).
pub fn parse_axis(text: &str) -> Result<Axis, FieldError> {
    let Some((field, values)) = text.split_once('=') else {
        return Err(FieldError::new(
            "--vary",
            format!("{text:?} must look like field=v1,v2 (e.g. momentum=0.9,0.99)"),
        ));
    };
    let values = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())))
        .collect();
    Ok(Axis {
        field: field.trim().to_string(),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(base: Value, vary: Value) -> SweepSpec {
        serde_json::from_value(json!({"base": base, "vary": vary})).unwrap()
    }

    #[test]
    fn the_grid_is_every_combination_with_the_first_field_slowest() {
        let s = spec(
            json!({"preset": "demo", "epochs": 1}),
            json!([{"field": "momentum", "values": [0.9, 0.99]},
                   {"field": "seed", "values": [0, 1, 2]}]),
        );
        let expanded = s.expand(None).unwrap();
        let got: Vec<(f64, u64)> = expanded
            .members
            .iter()
            .map(|m| (m.config.momentum, m.config.seed))
            .collect();
        assert_eq!(
            got,
            vec![
                (0.9, 0),
                (0.9, 1),
                (0.9, 2),
                (0.99, 0),
                (0.99, 1),
                (0.99, 2)
            ]
        );
        // Everything else is the base config's.
        assert!(expanded.members.iter().all(|m| m.config.epochs == 1
            && m.config.preset == Preset::Demo
            && m.config.queue_size == 1024));
        assert_eq!(expanded.name, "momentum × seed");
        assert_eq!(
            expanded.members[4].config.name,
            "momentum × seed · momentum=0.99 seed=1"
        );
        assert_eq!(expanded.members[4].position, 4);
    }

    #[test]
    fn an_invalid_member_is_refused_naming_the_member_and_the_field() {
        let s = spec(
            json!({"preset": "demo"}),
            json!([{"field": "queue_size", "values": [1024, 1000, 2048]}]),
        );
        let errors = s.expand(None).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["members[1].queue_size", "members[1].batch_size"]
        );
        assert!(
            errors[0]
                .message
                .starts_with("queue_size=1000: queue_size 1000 must be a multiple"),
            "{}",
            errors[0].message
        );
        // Dotted fields reach into the dataset.
        let s = spec(
            json!({"preset": "demo"}),
            json!([{"field": "dataset.synthetic_train", "values": [500, 5]}]),
        );
        let errors = s.expand(None).unwrap_err();
        assert_eq!(errors[0].field, "members[1].dataset.synthetic_train");
    }

    #[test]
    fn the_grid_itself_is_checked() {
        let cases = [
            (json!([]), "name at least one field to vary"),
            (
                json!([{"field": "momentun", "values": [0.9]}]),
                "\"momentun\" is not a setting",
            ),
            (
                json!([{"field": "preset", "values": ["v1"]}]),
                "preset is the same for the whole sweep",
            ),
            (
                json!([{"field": "momentum", "values": []}]),
                "momentum must take between 1 and 16",
            ),
            (
                json!([{"field": "momentum", "values": [0.9, 0.9]}]),
                "momentum lists 0.9 twice",
            ),
            (
                json!([{"field": "momentum", "values": [0.9]}, {"field": "temperature", "values": [0.1]},
                       {"field": "base_lr", "values": [0.1]}]),
                "at most 2 fields besides seed",
            ),
            (
                json!([{"field": "seed", "values": (0..9).collect::<Vec<_>>()},
                       {"field": "momentum", "values": (0..9).map(|i| 0.9 + i as f64 * 0.01).collect::<Vec<_>>()}]),
                "the grid has 81 members; at most 64",
            ),
        ];
        for (vary, message) in cases {
            let errors = spec(json!({"preset": "demo"}), vary.clone())
                .expand(None)
                .unwrap_err();
            assert_eq!(errors.len(), 1, "{vary}");
            assert_eq!(errors[0].field, "vary");
            assert!(
                errors[0].message.contains(message),
                "{vary}: {}",
                errors[0].message
            );
        }
        let errors = spec(
            json!({"preset": "demo", "epochs": 0}),
            json!([{"field": "seed", "values": [1]}]),
        )
        .expand(None)
        .unwrap_err();
        assert_eq!(errors[0].field, "base.epochs");
    }

    #[test]
    fn the_cli_spelling_parses_into_an_axis() {
        let axis = parse_axis("momentum=0,0.9, 0.99").unwrap();
        assert_eq!(axis.field, "momentum");
        assert_eq!(axis.values, vec![json!(0), json!(0.9), json!(0.99)]);
        let axis = parse_axis("mechanism=moco,end_to_end").unwrap();
        assert_eq!(axis.values, vec![json!("moco"), json!("end_to_end")]);
        assert_eq!(parse_axis("momentum").unwrap_err().field, "--vary");
    }
}
