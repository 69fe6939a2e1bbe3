//! Turning YAML text into config types with errors a person can act on: syntax errors carry
//! the line, type errors carry the path of the field (`staticSnapshot.endpoints[0].address`).

use serde::de::DeserializeOwned;

/// A config document that cannot be used, with every reason found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl ConfigError {
    pub(crate) fn from_problems(problems: Vec<String>) -> Result<(), Self> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Self::Invalid(problems))
        }
    }
}

/// Parses YAML in two steps so type errors can name the field: first into a generic value, then
/// into `T` while tracking the path.
pub(crate) fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    from_value(value)
}

/// Deserializes a parsed document into `T`, naming the path of the field that failed
/// (`document` when it is the whole document). Shared with the control plane's manifest reader.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Field {
            path: if path == "." {
                "document".to_owned()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }
    })
}
