//! Overrides: how a preset plus `field=value` pairs, a TOML file, a form post or a JSON body
//! becomes a validated `RunConfig`. Everything goes through the config's JSON form, so each
//! error names the (dotted) field it is about.
use super::choices::{Choice, Preset};
use super::{FieldError, RunConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

impl RunConfig {
    /// Applies `field=value` overrides (dotted names reach into `dataset`). Values are parsed as
    /// JSON where they can be (numbers, booleans, arrays), as plain strings otherwise.
    pub fn with_overrides<'a, I>(&self, overrides: I) -> Result<RunConfig, Vec<FieldError>>
    where
        I: IntoIterator<Item = (&'a str, Value)>,
    {
        let cfg = override_fields(self, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a full config or a partial one (keys missing are taken from `preset`, itself read
    /// from the document's `preset` key when present).
    pub fn from_partial_json(doc: &Value, fallback: Preset) -> Result<RunConfig, Vec<FieldError>> {
        let Some(obj) = doc.as_object() else {
            return Err(vec![FieldError::new("", "the config must be an object")]);
        };
        let preset = match obj.get("preset") {
            None => fallback,
            Some(Value::String(s)) => match Preset::parse(s) {
                Some(p) => p,
                None => {
                    return Err(vec![FieldError::new(
                        "preset",
                        format!(
                            "unknown preset {s:?}; expected one of {}",
                            Preset::names_joined()
                        ),
                    )])
                }
            },
            Some(_) => return Err(vec![FieldError::new("preset", "must be a string")]),
        };
        let base = RunConfig::preset(preset);
        let mut flat = Vec::new();
        for (k, v) in obj {
            if k == "dataset" {
                if let Value::Object(ds) = v {
                    for (dk, dv) in ds {
                        flat.push((format!("dataset.{dk}"), dv.clone()));
                    }
                    continue;
                }
            }
            flat.push((k.clone(), v.clone()));
        }
        base.with_overrides(flat.iter().map(|(k, v)| (k.as_str(), v.clone())))
    }

    /// Parses `key=value` strings from the command line.
    pub fn parse_override(s: &str) -> Result<(String, Value), FieldError> {
        let Some((k, v)) = s.split_once('=') else {
            return Err(FieldError::new(
                s,
                "an override must look like field=value, e.g. epochs=10",
            ));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        Ok((k.trim().to_string(), value))
    }
}

/// Applies `field=value` overrides to any settings struct through its JSON form (dotted names
/// reach into nested structs) and reads it back; unknown fields and values of the wrong type are
/// errors naming the field. The caller validates the result.
pub(crate) fn override_fields<'a, T, I>(value: &T, overrides: I) -> Result<T, Vec<FieldError>>
where
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = (&'a str, Value)>,
{
    let mut json = serde_json::to_value(value).expect("settings serialise");
    let mut errors = Vec::new();
    for (key, value) in overrides {
        if let Err(e) = set_json_field(&mut json, key, value) {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    from_json_value(json)
}

/// Deserialises with the path of the failing field in the error.
pub(crate) fn from_json_value<T: DeserializeOwned>(json: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        // serde_json appends " at line 0 column 0" on values that did not come from text.
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        vec![FieldError::new(&field, message)]
    })
}

fn set_json_field(json: &mut Value, key: &str, value: Value) -> Result<(), FieldError> {
    let mut target = json;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let obj = target
            .as_object_mut()
            .ok_or_else(|| FieldError::new(key, "is not a setting"))?;
        if !obj.contains_key(*part) {
            return Err(FieldError::new(key, "unknown setting"));
        }
        if i + 1 == parts.len() {
            let slot = obj.get_mut(*part).expect("checked above");
            // A string value for a numeric field came from a form or CLI: try reading it as JSON.
            let value = match (&*slot, value) {
                (Value::String(_), v) => match v {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::Bool(b) => Value::String(b.to_string()),
                    other => other,
                },
                (_, Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
                (_, v) => v,
            };
            *slot = value;
            return Ok(());
        }
        target = obj.get_mut(*part).expect("checked above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_and_bad_type_are_named() {
        let errors = RunConfig::preset(Preset::V2)
            .with_overrides([("epochz", Value::from(3))])
            .unwrap_err();
        assert_eq!(errors[0].field, "epochz");
        let errors = RunConfig::preset(Preset::V2)
            .with_overrides([("epochs", Value::from("three"))])
            .unwrap_err();
        assert_eq!(errors[0].field, "epochs");
        let errors = RunConfig::preset(Preset::V2)
            .with_overrides([("dataset.kind", Value::from("mnist"))])
            .unwrap_err();
        assert_eq!(errors[0].field, "dataset.kind");
    }

    #[test]
    fn string_values_from_forms_are_read_as_numbers() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("epochs", Value::from("3")), ("momentum", "0.9".into())])
            .unwrap();
        assert_eq!(cfg.epochs, 3);
        assert_eq!(cfg.momentum, 0.9);
    }

    #[test]
    fn partial_json_takes_preset_defaults() {
        let doc =
            serde_json::json!({"preset": "v1", "epochs": 5, "dataset": {"synthetic_train": 1000}});
        let cfg = RunConfig::from_partial_json(&doc, Preset::Cifar).unwrap();
        assert_eq!(cfg.preset, Preset::V1);
        assert_eq!(cfg.temperature, 0.07);
        assert_eq!(cfg.epochs, 5);
        assert_eq!(cfg.dataset.synthetic_train, 1000);
    }
}
