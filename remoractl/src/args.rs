//! Flags the `check` commands share: the manifest directories, a workload as NAMESPACE/NAME,
//! `--header NAME=VALUE`.

use std::path::PathBuf;

use anyhow::Context;
use http::{HeaderName, HeaderValue};

/// Fails unless every `--config-dir` can be read.
pub fn readable(config_dirs: &[PathBuf]) -> anyhow::Result<()> {
    for dir in config_dirs {
        std::fs::read_dir(dir)
            .with_context(|| format!("--config-dir {}: cannot be read", dir.display()))?;
    }
    Ok(())
}

/// `(namespace, name)` of flag `flag`'s `NAMESPACE/NAME` value `text`.
pub fn workload<'t>(flag: &str, text: &'t str) -> anyhow::Result<(&'t str, &'t str)> {
    text.split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .with_context(|| format!("{flag} {text:?}: expected NAMESPACE/NAME"))
}

/// Parses `--header` text `NAME=VALUE`.
pub fn header(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("--header {text:?}: expected NAME=VALUE"))?;
    let name = HeaderName::try_from(name.trim())
        .with_context(|| format!("--header {text:?}: not a header name"))?;
    let value = HeaderValue::try_from(value.trim())
        .with_context(|| format!("--header {text:?}: not a header value"))?;
    Ok((name, value))
}
