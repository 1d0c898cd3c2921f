//! The formats a config value may be in, each parsed before it is stored, and the namespace's
//! JSON Schema checked against the parsed value.
//!
//! A value that does not parse is refused with the parser's message and its line and column; a
//! value that breaks the schema is refused with the JSON pointer of the failing part.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// A config value's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON document.
    Json,
    /// A YAML document.
    Yaml,
    /// A TOML document.
    Toml,
    /// Any UTF-8 text; a schema sees it as a JSON string.
    #[default]
    Text,
}

impl Format {
    /// The format's name, as on the wire and in the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Text => "text",
        }
    }

    /// Parses `text` as this format into the value a schema checks.
    pub fn parse(self, text: &str) -> Result<Value> {
        let invalid = |line: usize, column: usize, message: String| {
            Error::InvalidArgument(format!(
                "config: invalid {} at line {line} column {column}: {message}",
                self.name()
            ))
        };
        match self {
            Format::Json => serde_json::from_str(text).map_err(|err| {
                let message = strip_position(&err.to_string());
                invalid(err.line(), err.column(), message)
            }),
            Format::Yaml => {
                // Through YAML's own value, which refuses duplicate keys (JSON's keeps the last).
                let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|err| {
                    let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
                    invalid(line, column, strip_position(&err.to_string()))
                })?;
                serde_json::to_value(yaml).map_err(|err| {
                    Error::InvalidArgument(format!("config: yaml that JSON cannot hold: {err}"))
                })
            }
            Format::Toml => toml::from_str::<Value>(text).map_err(|err| {
                let (line, column) = err
                    .span()
                    .map_or((0, 0), |span| line_and_column(text, span.start));
                invalid(line, column, err.message().to_string())
            }),
            Format::Text => Ok(Value::String(text.to_string())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "yaml" | "yml" => Ok(Format::Yaml),
            "toml" => Ok(Format::Toml),
            "text" | "txt" => Ok(Format::Text),
            _ => Err(Error::InvalidArgument(format!(
                "config: unknown format {name:?} (json, yaml, toml or text)"
            ))),
        }
    }
}

/// A namespace's JSON Schema, compiled.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl Schema {
    /// Compiles `schema` (a JSON Schema document); refused if it is not one.
    pub fn compile(schema: &Value) -> Result<Self> {
        let validator = jsonschema::validator_for(schema)
            .map_err(|err| Error::InvalidArgument(format!("config: not a valid JSON Schema: {err}")))?;
        Ok(Self { validator })
    }

    /// Checks `value`; the refusal names the failing path (a JSON pointer, `/` for the whole).
    pub fn check(&self, value: &Value) -> Result<()> {
        match self.validator.iter_errors(value).next() {
            None => Ok(()),
            Some(err) => {
                let path = err.instance_path().to_string();
                let path = if path.is_empty() { "/".to_string() } else { path };
                Err(Error::InvalidArgument(format!(
                    "config: the value breaks the namespace's schema at {path}: {err}"
                )))
            }
        }
    }
}

/// The parser's message without the " at line L column C" it carries (reported separately).
fn strip_position(message: &str) -> String {
    let mut out = message.to_string();
    while let Some(at) = out.find(" at line ") {
        let rest = &out[at + " at line ".len()..];
        let line_digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Some(after) = rest[line_digits..].strip_prefix(" column ") else {
            break;
        };
        let column_digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let end = out.len() - after.len() + column_digits;
        out.replace_range(at..end, "");
    }
    out
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(format: Format, text: &str) -> String {
        match format.parse(text) {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("expected a refusal of {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn values_parse_into_what_a_schema_checks() {
        assert_eq!(
            Format::Json.parse(r#"{"port": 80}"#).unwrap(),
            json!({"port": 80})
        );
        assert_eq!(
            Format::Yaml.parse("port: 80\nhosts: [a, b]\n").unwrap(),
            json!({"port": 80, "hosts": ["a", "b"]})
        );
        assert_eq!(
            Format::Toml.parse("port = 80\n[db]\nurl = \"x\"\n").unwrap(),
            json!({"port": 80, "db": {"url": "x"}})
        );
        assert_eq!(Format::Text.parse("anything: {").unwrap(), json!("anything: {"));
    }

    #[test]
    fn bad_values_are_refused_with_line_and_column() {
        let json = refusal(Format::Json, "{\n  \"port\": 80,\n  oops\n}");
        assert!(
            json.starts_with("config: invalid json at line 3 column 3: "),
            "{json}"
        );
        let yaml = refusal(Format::Yaml, "port: 80\nhosts: [a, b\n");
        assert!(yaml.starts_with("config: invalid yaml at line "), "{yaml}");
        assert_eq!(yaml.matches(" at line ").count(), 1, "{yaml}");
        assert!(!yaml.contains("line 0"), "{yaml}");
        let duplicate = refusal(Format::Yaml, "port: 80\nport: 81\n");
        // Refused (the position is the mapping's, the message names the key).
        assert!(
            duplicate.contains(r#"duplicate entry with key "port""#),
            "{duplicate}"
        );
        let toml = refusal(Format::Toml, "port = 80\nname = \n");
        assert!(
            toml.starts_with("config: invalid toml at line 2 column "),
            "{toml}"
        );
    }

    #[test]
    fn formats_are_named_as_the_cli_names_them() {
        for format in [Format::Json, Format::Yaml, Format::Toml, Format::Text] {
            assert_eq!(format.name().parse::<Format>().unwrap(), format);
        }
        assert_eq!("YML".parse::<Format>().unwrap(), Format::Yaml);
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn schema_refusals_name_the_failing_path() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "properties": {"port": {"type": "integer", "maximum": 65535}},
            "required": ["port"]
        }))
        .unwrap();
        schema.check(&json!({"port": 80})).unwrap();
        let Err(Error::InvalidArgument(message)) = schema.check(&json!({"port": "eighty"})) else {
            panic!("a string port passed");
        };
        assert!(message.contains("at /port: "), "{message}");
        let Err(Error::InvalidArgument(missing)) = schema.check(&json!({})) else {
            panic!("a missing port passed");
        };
        assert!(missing.contains("at /: "), "{missing}");
        assert!(Schema::compile(&json!({"type": 12})).is_err());
    }
}
