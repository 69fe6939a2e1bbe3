//! YAML text to typed config, with errors that name the offending field
//! (`spec.ports[0].port: invalid type ...`) so an operator can fix a manifest without guessing.
//!
//! Text is first parsed into a generic value and then deserialized while tracking the path,
//! the same two-step approach `remora-api` uses for bootstrap files.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use remora_api::ConfigError;
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::Value;

/// An object of a kind read field by field: its `metadata` and `spec` (absent: the default),
/// and nothing else at the top level but `apiVersion`, `kind` and `status`, so that a field
/// written one level too high is reported by name rather than ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Object<S> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    pub(crate) metadata: ObjectMeta,
    #[serde(default)]
    pub(crate) spec: S,
    #[serde(default, rename = "status")]
    _status: Value,
}

/// Why a YAML document cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum YamlError {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

/// Parses one YAML document; an empty document reads as an empty mapping, so a blank
/// `mesh.yaml` or annotation means "all defaults".
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let value: Value =
        serde_saphyr::from_str(text).map_err(|e| YamlError::Syntax(e.to_string()))?;
    let value = match value {
        Value::Null => Value::Object(serde_json::Map::new()),
        other => other,
    };
    from_value(value)
}

/// Splits a `---`-separated stream into its documents, skipping empty ones.
pub(crate) fn documents(text: &str) -> Result<Vec<Value>, YamlError> {
    serde_saphyr::from_multiple(text).map_err(|e| YamlError::Syntax(e.to_string()))
}

/// Deserializes a parsed document, recording the path of the field that failed.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, YamlError> {
    remora_api::from_value(value).map_err(|e| match e {
        ConfigError::Field { path, message } => YamlError::Field { path, message },
        other => YamlError::Syntax(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Outer {
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Inner {
        port: u16,
    }

    #[test]
    fn errors_name_the_field_or_the_syntax_problem() {
        let err = from_str::<Outer>("inner:\n- port: 80\n- port: http\n").expect_err("bad type");
        assert!(err.to_string().starts_with("inner[1].port: "), "{err}");
        let err = from_str::<Outer>("inner: [").expect_err("bad syntax");
        assert!(matches!(err, YamlError::Syntax(_)), "{err}");
    }

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = documents("a: 1\n---\n---\nb: 2\n").expect("valid stream");
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
        );
    }
}
