//! Reading JSON and query values the way a Consul agent reads them.
//!
//! Consul decodes request bodies into a map first and then matches keys loosely: `Name`,
//! `name` and `NAME` are one key, and so are `DeregisterCriticalServiceAfter` and
//! `deregister_critical_service_after`. [`Fields`] does the same: a key matches a field when
//! both are equal after dropping `_` and ASCII case. Values keep their case (`Meta` keys,
//! `Header` names). Unknown keys are ignored, as Consul ignores them.
//!
//! Durations use Go's `time.ParseDuration` format (`10s`, `1m30s`, `1.5s`, `250ms`), and JSON
//! numbers are nanoseconds, as in Go. Booleans in queries follow Go's `strconv.ParseBool`.
//!
//! Every error names the field by its Consul path (`Checks[1].Interval`); nothing here
//! panics on input.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::registry::model::ValidationError;

/// The form a key takes for loose matching: ASCII lowercase, without `_`.
fn folded(key: &str) -> String {
    key.chars()
        .filter(|&c| c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A JSON object read with Consul's key matching; `path` names it in errors (`Check`).
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// Reads `value` as an object; `path` is its name in errors, empty for the body itself.
    pub fn new(value: &'a Value, path: &str) -> Result<Self, ValidationError> {
        match value {
            Value::Object(map) => Ok(Self {
                map,
                path: path.to_owned(),
            }),
            _ => Err(ValidationError::new(
                path,
                format!("{} must be a JSON object", describe(path)),
            )),
        }
    }

    /// This object's own Consul path (`Checks[1]`), empty for the body.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The Consul path of a field of this object (`Check.TTL`).
    pub fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The value of field `name` (a Consul field name such as `DeregisterCriticalServiceAfter`),
    /// matched loosely; JSON `null` counts as absent.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        let wanted = folded(name);
        self.map
            .iter()
            .find(|(key, value)| !value.is_null() && folded(key) == wanted)
            .map(|(_, value)| value)
    }

    /// Whether any field at all is set (not `null`).
    pub fn is_empty(&self) -> bool {
        self.map.values().all(Value::is_null)
    }

    fn invalid(&self, name: &str, expected: &str) -> ValidationError {
        let path = self.path_of(name);
        ValidationError::new(&path, format!("{path} must be {expected}"))
    }

    pub fn string(&self, name: &str) -> Result<Option<&'a str>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(name, "a string")),
        }
    }

    /// A string that counts as absent when empty, as Consul treats `""`.
    pub fn non_empty_string(&self, name: &str) -> Result<Option<&'a str>, ValidationError> {
        Ok(self.string(name)?.filter(|s| !s.is_empty()))
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(self.invalid(name, "a whole number")),
            },
            Some(_) => Err(self.invalid(name, "a whole number")),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(name, "true or false")),
        }
    }

    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, ValidationError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let list = value
            .as_array()
            .ok_or_else(|| self.invalid(name, "a list of strings"))?;
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    let path = format!("{}[{i}]", self.path_of(name));
                    ValidationError::new(&path, format!("{path} must be a string"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A map of strings (`Meta`); keys are kept as sent.
    pub fn string_map(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ValidationError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let map = value
            .as_object()
            .ok_or_else(|| self.invalid(name, "an object of strings"))?;
        map.iter()
            .map(|(key, item)| match item {
                Value::String(s) => Ok((key.clone(), s.clone())),
                _ => {
                    let path = format!("{}.{key}", self.path_of(name));
                    Err(ValidationError::new(
                        &path,
                        format!("{path} must be a string"),
                    ))
                }
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Some)
    }

    /// A map of string lists (`Header`, as `{"X-Foo": ["a", "b"]}`); a single string is
    /// taken as a list of one. Keys are kept as sent.
    pub fn string_lists(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<String>>>, ValidationError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let map = value
            .as_object()
            .ok_or_else(|| self.invalid(name, "an object of string lists"))?;
        let mut out = BTreeMap::new();
        for (key, item) in map {
            let path = format!("{}.{key}", self.path_of(name));
            let values = match item {
                Value::String(s) => vec![s.clone()],
                Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ValidationError::new(&path, format!("{path} must be a list of strings"))
                    })?,
                _ => {
                    return Err(ValidationError::new(
                        &path,
                        format!("{path} must be a list of strings"),
                    ));
                }
            };
            out.insert(key.clone(), values);
        }
        Ok(Some(out))
    }

    pub fn object(&self, name: &str) -> Result<Option<Fields<'a>>, ValidationError> {
        self.get(name)
            .map(|value| Fields::new(value, &self.path_of(name)))
            .transpose()
    }

    /// A list of objects (`Checks`).
    pub fn objects(&self, name: &str) -> Result<Option<Vec<Fields<'a>>>, ValidationError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let list = value
            .as_array()
            .ok_or_else(|| self.invalid(name, "a list of objects"))?;
        list.iter()
            .enumerate()
            .map(|(i, item)| Fields::new(item, &format!("{}[{i}]", self.path_of(name))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A duration: a Go duration string, or a number of nanoseconds. `""` counts as absent.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ValidationError> {
        let invalid = || {
            let path = self.path_of(name);
            ValidationError::new(
                &path,
                format!("{path} must be a duration such as \"10s\", \"1m30s\" or \"500ms\""),
            )
        };
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => parse_go_duration(s).map(Some).ok_or_else(invalid),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|nanos| Some(Duration::from_nanos(nanos)))
                .ok_or_else(invalid),
            Some(_) => Err(invalid()),
        }
    }
}

fn describe(path: &str) -> &str {
    if path.is_empty() {
        "the request body"
    } else {
        path
    }
}

/// Parses a Go duration (`time.ParseDuration`): an optional `+`, then one or more decimal
/// numbers with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`); `0` alone is zero. Negative
/// durations are refused: no Consul field means anything by them.
pub fn parse_go_duration(raw: &str) -> Option<Duration> {
    let text = raw.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos_per_unit;
        rest = next;
    }
    // Go's limit: an int64 of nanoseconds (about 290 years).
    (total.is_finite() && total < 9.2e18).then(|| Duration::from_nanos(total as u64))
}

/// Go's `strconv.ParseBool`, plus the empty string (a query flag given without a value,
/// `?passing`) as true.
pub fn parse_go_bool(raw: &str) -> Option<bool> {
    match raw {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_in_any_case_and_in_snake_case() {
        let body = json!({
            "name": "web", "ID": "web-1", "deregister_critical_service_after": "1m",
            "TLSSkipVerify": true, "Port": null, "port": 80
        });
        let fields = Fields::new(&body, "").unwrap();
        assert_eq!(fields.string("Name").unwrap(), Some("web"));
        assert_eq!(fields.string("id").unwrap(), Some("web-1"));
        assert_eq!(
            fields.duration("DeregisterCriticalServiceAfter").unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(fields.bool("tls_skip_verify").unwrap(), Some(true));
        assert_eq!(
            fields.int("Port").unwrap(),
            Some(80),
            "null counts as absent"
        );
        assert_eq!(fields.string("Missing").unwrap(), None);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let body = json!({"Check": {"Interval": 5.5, "Header": {"X": [1]}}, "Tags": ["a", 2]});
        let fields = Fields::new(&body, "").unwrap();
        assert_eq!(fields.strings("Tags").unwrap_err().field, "Tags[1]");
        let check = fields.object("Check").unwrap().unwrap();
        assert_eq!(
            check.duration("Interval").unwrap_err().field,
            "Check.Interval"
        );
        assert_eq!(
            check.string_lists("Header").unwrap_err().field,
            "Check.Header.X"
        );
        assert_eq!(
            Fields::new(&json!([1]), "").err().map(|e| e.message),
            Some("the request body must be a JSON object".into())
        );
    }

    #[test]
    fn go_durations() {
        for (text, expected) in [
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("250ms", Duration::from_millis(250)),
            ("1h", Duration::from_secs(3600)),
            ("2us", Duration::from_micros(2)),
            ("0", Duration::ZERO),
            ("+5m", Duration::from_secs(300)),
        ] {
            assert_eq!(parse_go_duration(text), Some(expected), "{text}");
        }
        for bad in ["", "10", "s", "-1s", "1x", "1..5s", "ten seconds"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn go_booleans() {
        assert_eq!(parse_go_bool(""), Some(true));
        assert_eq!(parse_go_bool("1"), Some(true));
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("false"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }
}
