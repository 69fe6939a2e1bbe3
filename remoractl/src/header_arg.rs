//! `--header NAME=VALUE`, as the `check` commands take it.

use anyhow::Context;
use http::{HeaderName, HeaderValue};

/// Parses `--header` text `NAME=VALUE`.
pub fn parse(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("--header {text:?}: expected NAME=VALUE"))?;
    let name = HeaderName::try_from(name.trim())
        .with_context(|| format!("--header {text:?}: not a header name"))?;
    let value = HeaderValue::try_from(value.trim())
        .with_context(|| format!("--header {text:?}: not a header value"))?;
    Ok((name, value))
}
