//! The settings as data: one [`Setting`] per leaf of `RunConfig` (dotted for `dataset.*`), read
//! once from the JSON schema schemars derives from the declaration in `config/mod.rs`. Each
//! setting knows its label, help text, form section, type and range, and checks a value against
//! them; validation, the dashboard form, the OpenAPI schema and the README's settings table all
//! read this list, so none of them restates a field.
use super::choices::{Choice, Preset};
use super::RunConfig;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{Map, Value};
use std::sync::LazyLock;
use strum::{IntoStaticStr, VariantArray};

/// The section of the form a setting sits in, in the form's order (`x-group` in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum Group {
    /// The preset and dataset pickers.
    Run,
    /// Always visible, after the pickers.
    Basics,
    Encoder,
    Moco,
    Optimisation,
    Data,
    Speed,
    Monitoring,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Run => "Run",
            Group::Basics => "Basics",
            Group::Encoder => "Encoder and head",
            Group::Moco => "MoCo",
            Group::Optimisation => "Optimisation",
            Group::Data => "Data",
            Group::Speed => "Speed",
            Group::Monitoring => "Monitoring and checkpoints",
        }
    }
}

/// One end of a numeric range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    pub value: f64,
    pub exclusive: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Text {
        max_chars: Option<u64>,
    },
    /// A whole number.
    Int {
        min: Option<f64>,
        max: Option<f64>,
        multiple_of: Option<f64>,
    },
    Float {
        min: Option<Bound>,
        max: Option<Bound>,
    },
    Bool,
    /// One of these names.
    Choice(Vec<String>),
    /// A list of numbers.
    FloatList,
}

/// What a resume may do with a setting (`x-resume` in the schema; see `train::resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum Resume {
    /// Device, precision, monitoring, checkpoints: may always change.
    Free,
    /// Changes where the run goes from the saved state: only when the user asks for it.
    Trajectory,
    /// Gives the saved state its shape and meaning: never.
    Shape,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The field's name, dotted inside `dataset`.
    pub key: String,
    pub label: String,
    /// The doc comment, on one line.
    pub help: String,
    pub group: Group,
    pub kind: Kind,
    pub resume: Resume,
}

impl Setting {
    /// Whether `value` (the setting's JSON value in a typed config) is in range; the sentence
    /// that says why not otherwise.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        match &self.kind {
            Kind::Text { max_chars } => {
                let text = value.as_str().unwrap_or_default();
                match max_chars {
                    Some(n) if text.chars().count() as u64 > *n => {
                        Err(format!("must be at most {n} characters"))
                    }
                    _ => Ok(()),
                }
            }
            Kind::Int {
                min,
                max,
                multiple_of,
            } => {
                let Some(v) = value.as_f64() else {
                    return Err(format!("must be a whole number, got {value}"));
                };
                let ok = min.is_none_or(|m| v >= m)
                    && max.is_none_or(|m| v <= m)
                    && multiple_of.is_none_or(|m| v % m == 0.0);
                if ok {
                    Ok(())
                } else {
                    Err(format!("must be {}, got {value}", self.range_words()))
                }
            }
            Kind::Float { min, max } => {
                let Some(v) = value.as_f64().filter(|v| v.is_finite()) else {
                    return Err("must be a finite number".into());
                };
                let above = |b: &Bound| {
                    if b.exclusive {
                        v > b.value
                    } else {
                        v >= b.value
                    }
                };
                let below = |b: &Bound| {
                    if b.exclusive {
                        v < b.value
                    } else {
                        v <= b.value
                    }
                };
                if min.as_ref().is_none_or(above) && max.as_ref().is_none_or(below) {
                    Ok(())
                } else {
                    Err(format!("must be {}, got {value}", self.range_words()))
                }
            }
            Kind::Choice(names) => match value.as_str() {
                Some(s) if names.iter().any(|n| n == s) => Ok(()),
                _ => Err(format!("must be one of {}, got {value}", names.join(", "))),
            },
            Kind::Bool | Kind::FloatList => Ok(()),
        }
    }

    /// The range in words, as errors say it: "between 1 and 10000", "in (0, 10]",
    /// "a multiple of 4 between 4 and 256"; empty when any value of the type will do.
    pub fn range_words(&self) -> String {
        match &self.kind {
            Kind::Int {
                min,
                max,
                multiple_of,
            } => {
                let span = match (min, max) {
                    (Some(a), Some(b)) => format!("between {a} and {b}"),
                    (Some(a), None) => format!("at least {a}"),
                    (None, Some(b)) => format!("at most {b}"),
                    (None, None) => String::new(),
                };
                match multiple_of {
                    Some(m) => format!("a multiple of {m} {span}").trim_end().to_string(),
                    None => span,
                }
            }
            Kind::Float { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!(
                    "in {}{}, {}{}",
                    if a.exclusive { "(" } else { "[" },
                    a.value,
                    b.value,
                    if b.exclusive { ")" } else { "]" }
                ),
                (Some(a), None) if a.exclusive => format!("greater than {}", a.value),
                (Some(a), None) => format!("at least {}", a.value),
                (None, Some(b)) if b.exclusive => format!("less than {}", b.value),
                (None, Some(b)) => format!("at most {}", b.value),
                (None, None) => String::new(),
            },
            Kind::Text { max_chars: Some(n) } => format!("at most {n} characters"),
            Kind::Choice(names) => format!("one of {}", names.join(", ")),
            _ => String::new(),
        }
    }

    /// The type as the README's table names it.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Text { .. } => "text",
            Kind::Int { .. } => "integer",
            Kind::Float { .. } => "number",
            Kind::Bool => "boolean",
            Kind::Choice(_) => "choice",
            Kind::FloatList => "list of numbers",
        }
    }
}

/// Every setting, by section in the form's order, then in the declaration's order.
pub fn all() -> &'static [Setting] {
    static SETTINGS: LazyLock<Vec<Setting>> = LazyLock::new(|| {
        let mut out = of::<RunConfig>();
        out.sort_by_key(|s| s.group);
        out
    });
    &SETTINGS
}

/// The settings of any struct declared as `RunConfig` is (each field with a title, an `x-group`
/// and its range), in the declaration's order: the evaluations' settings (`config::probe`) are
/// read and checked the same way.
pub fn of<T: JsonSchema>() -> Vec<Setting> {
    let schema = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>();
    let mut out = Vec::new();
    read_properties("", schema.as_value(), &mut out);
    out
}

/// The setting called `key` (dotted inside `dataset`).
pub fn find(key: &str) -> Option<&'static Setting> {
    all().iter().find(|s| s.key == key)
}

/// The settings of one form section, in order.
pub fn in_group(group: Group) -> impl Iterator<Item = &'static Setting> {
    all().iter().filter(move |s| s.group == group)
}

/// A dotted key's value in a config's JSON.
pub fn lookup<'a>(json: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(json, |v, part| v.get(part))
}

/// A setting's value as text, as the form, the run page and the README show it: strings bare,
/// lists comma-separated, nothing for null.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn read_properties(prefix: &str, schema: &Value, out: &mut Vec<Setting>) {
    let properties = schema["properties"]
        .as_object()
        .expect("a settings struct's schema lists its properties");
    for (name, field) in properties {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if field.get("properties").is_some() {
            read_properties(&key, field, out);
        } else {
            out.push(read_setting(key, field));
        }
    }
}

/// One leaf of the schema. A field declared without a label or section is a mistake in the
/// declaration, caught here by the first test that lists the settings.
fn read_setting(key: String, field: &Value) -> Setting {
    let text = |name: &str| field.get(name).and_then(Value::as_str).map(one_line);
    let label = text("title").unwrap_or_else(|| panic!("setting {key} has no title"));
    let group_name = text("x-group").unwrap_or_else(|| panic!("setting {key} has no x-group"));
    let group = Group::parse(&group_name)
        .unwrap_or_else(|| panic!("setting {key}: unknown x-group {group_name:?}"));
    let number = |name: &str| field.get(name).and_then(Value::as_f64);
    let bound = |inclusive: &str, exclusive: &str| {
        number(exclusive)
            .map(|value| Bound {
                value,
                exclusive: true,
            })
            .or(number(inclusive).map(|value| Bound {
                value,
                exclusive: false,
            }))
    };
    let choices = choice_names(field);
    let kind = if !choices.is_empty() {
        Kind::Choice(choices)
    } else {
        match primary_type(field) {
            "string" => Kind::Text {
                max_chars: field.get("maxLength").and_then(Value::as_u64),
            },
            "integer" => Kind::Int {
                min: number("minimum"),
                max: number("maximum"),
                multiple_of: number("multipleOf"),
            },
            "number" => Kind::Float {
                min: bound("minimum", "exclusiveMinimum"),
                max: bound("maximum", "exclusiveMaximum"),
            },
            "boolean" => Kind::Bool,
            "array" => Kind::FloatList,
            other => panic!("setting {key} has a type the form cannot show: {other}"),
        }
    };
    let resume = match text("x-resume") {
        None => Resume::Free,
        Some(name) => Resume::parse(&name)
            .unwrap_or_else(|| panic!("setting {key}: unknown x-resume {name:?}")),
    };
    Setting {
        key,
        label,
        help: text("description").unwrap_or_default(),
        group,
        kind,
        resume,
    }
}

/// The non-null type of a field ("string" for `Option<String>`'s ["string", "null"]).
fn primary_type(field: &Value) -> &str {
    match &field["type"] {
        Value::String(t) => t,
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "",
    }
}

/// The names of an enum field: its `enum` list, or the `const` of each `oneOf` branch (enums
/// whose variants carry doc comments).
fn choice_names(field: &Value) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(list) = field.get("enum").and_then(Value::as_array) {
        names.extend(list.iter().filter_map(Value::as_str).map(String::from));
    }
    for branch in ["oneOf", "anyOf"] {
        for option in field
            .get(branch)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            names.extend(choice_names(option));
            if let Some(c) = option.get("const").and_then(Value::as_str) {
                names.push(c.to_string());
            }
        }
    }
    names
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A schema generator whose references point into an OpenAPI 3.1 document's
/// `components/schemas` (JSON Schema 2020-12, as OpenAPI 3.1 uses).
pub fn openapi_generator() -> schemars::SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

/// The JSON schemas of `RunConfig` and the types it uses, keyed by name, with references into
/// an OpenAPI 3.1 document's `components/schemas`.
pub fn openapi_schemas() -> Map<String, Value> {
    let mut generator = openapi_generator();
    let root = generator.subschema_for::<RunConfig>();
    let mut schemas = generator.take_definitions(true);
    // A type small enough to inline leaves no definition; keep the name the paths refer to.
    if !schemas.contains_key("RunConfig") {
        schemas.insert("RunConfig".into(), root.to_value());
    }
    // As a request body any subset will do, inside `dataset` too: the rest is the preset's.
    let mut patch = schemas["RunConfig"].clone();
    let mut dataset = schemas["DatasetConfig"].clone();
    for schema in [&mut patch, &mut dataset] {
        let object = schema
            .as_object_mut()
            .expect("a struct's schema is an object");
        object.remove("required");
        object.remove("title");
    }
    patch["properties"]["dataset"] = dataset;
    patch["description"] = Value::from(
        "Any subset of RunConfig's settings, `dataset` included; the rest comes from the preset \
         (`preset`, or the server's default).",
    );
    schemas.insert("RunConfigPatch".into(), patch);
    schemas
}

/// The README's settings table: every setting with its section, type and range, each preset's
/// default and the help text. `moco-server settings` prints it; a test keeps the README equal.
pub fn markdown_table() -> String {
    let presets: Vec<(Preset, Value)> = Preset::all()
        .iter()
        .map(|p| {
            let cfg = serde_json::to_value(RunConfig::preset(*p)).expect("RunConfig serialises");
            (*p, cfg)
        })
        .collect();
    let mut out = String::from("| setting | section | type | range | on resume |");
    for (p, _) in &presets {
        out.push_str(&format!(" {} |", p.name()));
    }
    out.push_str(" meaning |\n|");
    out.push_str(&" --- |".repeat(6 + presets.len()));
    out.push('\n');
    let cell = |s: &str| s.replace('|', "\\|");
    for setting in all() {
        let on_resume = match setting.resume {
            Resume::Free => "may change",
            Resume::Trajectory => "kept unless allowed",
            Resume::Shape => "kept",
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {on_resume} |",
            setting.key,
            setting.group.title(),
            setting.type_name(),
            cell(&setting.range_words())
        ));
        for (_, cfg) in &presets {
            let default = lookup(cfg, &setting.key)
                .map(value_text)
                .unwrap_or_default();
            out.push_str(&format!(" {} |", cell(&default)));
        }
        out.push_str(&format!(" {} |\n", cell(&setting.help)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn leaf_keys(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        for (k, v) in v.as_object().unwrap() {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_object() {
                leaf_keys(v, &key, out);
            } else {
                out.insert(key);
            }
        }
    }

    #[test]
    fn every_field_of_the_config_is_a_setting_with_label_and_section() {
        let json = serde_json::to_value(RunConfig::preset(Preset::V2)).unwrap();
        let mut fields = BTreeSet::new();
        leaf_keys(&json, "", &mut fields);
        let settings: BTreeSet<String> = all().iter().map(|s| s.key.clone()).collect();
        assert_eq!(settings, fields);
        assert!(all().iter().all(|s| !s.label.is_empty()));
        assert_eq!(all().len(), 70);
    }

    #[test]
    fn the_schema_gives_types_ranges_and_choices() {
        let width = find("width").unwrap();
        assert_eq!(width.label, "Width");
        assert_eq!(width.group, Group::Encoder);
        assert_eq!(
            width.kind,
            Kind::Int {
                min: Some(4.0),
                max: Some(256.0),
                multiple_of: Some(4.0)
            }
        );
        assert_eq!(find("temperature").unwrap().range_words(), "in (0, 10]");
        assert_eq!(
            find("memory_format").unwrap().kind,
            Kind::Choice(vec![
                "auto".into(),
                "channels_last".into(),
                "contiguous".into()
            ])
        );
        assert_eq!(
            find("precision").unwrap().kind,
            Kind::Choice(vec![
                "auto".into(),
                "fp32".into(),
                "bf16".into(),
                "fp16".into()
            ])
        );
        assert_eq!(
            find("stem").unwrap().kind,
            Kind::Choice(vec!["imagenet".into(), "cifar".into()])
        );
        assert_eq!(find("seed").unwrap().range_words(), "at least 0");
        assert_eq!(
            find("dataset.path").unwrap().kind,
            Kind::Text { max_chars: None }
        );
        assert_eq!(find("dataset.path").unwrap().group, Group::Run);
        assert_eq!(find("lr_milestones").unwrap().kind, Kind::FloatList);
        assert_eq!(find("queue_size").unwrap().resume, Resume::Shape);
        assert_eq!(find("dataset.kind").unwrap().resume, Resume::Shape);
        assert_eq!(find("seed").unwrap().resume, Resume::Trajectory);
        assert_eq!(find("device").unwrap().resume, Resume::Free);
        assert!(find("symmetric")
            .unwrap()
            .help
            .starts_with("L(x1, x2) + L(x2, x1); both"));
        let basics: Vec<&str> = in_group(Group::Basics).map(|s| s.key.as_str()).collect();
        assert_eq!(
            basics,
            ["name", "epochs", "batch_size", "device", "devices"]
        );
        assert_eq!(find("devices").unwrap().resume, Resume::Free);
        assert_eq!(find("devices").unwrap().range_words(), "between 1 and 256");
    }

    #[test]
    fn the_openapi_schema_is_a_real_schema() {
        let schemas = openapi_schemas();
        let config = &schemas["RunConfig"];
        assert_eq!(config["additionalProperties"], Value::Bool(false));
        assert_eq!(config["properties"]["epochs"]["maximum"], 10_000);
        assert_eq!(
            config["properties"]["arch"]["$ref"],
            "#/components/schemas/Arch"
        );
        // Variants with doc comments come as `oneOf` branches of one `const` each.
        assert_eq!(
            choice_names(&schemas["Arch"]),
            [
                "resnet18",
                "resnet34",
                "resnet50",
                "vit_tiny",
                "vit_small",
                "vit_base"
            ]
        );
        assert_eq!(
            config["properties"]["dataset"]["$ref"],
            "#/components/schemas/DatasetConfig"
        );
        // Settings added after the first release take a default when a stored config lacks them.
        assert_eq!(config["required"].as_array().unwrap().len(), 40);
        let patch = &schemas["RunConfigPatch"];
        assert!(patch.get("required").is_none());
        assert!(patch["properties"]["dataset"].get("required").is_none());
        assert_eq!(
            patch["properties"]["dataset"]["properties"]["synthetic_train"]["minimum"],
            10
        );
    }

    #[test]
    fn values_read_plainly() {
        assert_eq!(value_text(&serde_json::json!([0.6, 0.8])), "0.6, 0.8");
        assert_eq!(value_text(&serde_json::json!(0.0001)), "0.0001");
        assert_eq!(value_text(&serde_json::json!("cpu")), "cpu");
        assert_eq!(value_text(&Value::Null), "");
    }

    #[test]
    fn the_readme_lists_every_setting_as_the_declaration_says() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let start = "<!-- settings table: `moco-server settings` prints it -->\n";
        let begin = readme
            .find(start)
            .expect("README has the settings table marker")
            + start.len();
        let end = begin + readme[begin..].find("\n\n").unwrap_or(readme.len() - begin) + 1;
        assert_eq!(
            &readme[begin..end],
            markdown_table(),
            "README.md's settings table is out of date: run `moco-server settings` and paste it"
        );
    }
}
