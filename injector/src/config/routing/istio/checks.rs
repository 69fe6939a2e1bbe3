//! Checks both kinds share, made as Istio's validation webhook makes them: the list of problems
//! every reader fills, number ranges, fields the sidecar does not support, DNS names and labels,
//! gateway names, `exportTo`, label selectors and HTTP tokens. Kept in one place so that a
//! VirtualService and a DestinationRule refuse the same things in the same words.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    ops::RangeInclusive,
};

use serde_json::Value;

use super::MESH;

/// The problems found in one object, each naming its field.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn add(&mut self, path: &str, message: impl Display) {
        self.0.push(format!("{path}: {message}"));
    }

    pub(super) fn unsupported(&mut self, path: &str) {
        self.add(path, "not supported yet");
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, String> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// Whether a field the sidecar does not support holds anything. Protobuf cannot tell a scalar
/// left at its default from an unset one, so `false`, `0`, `""` and `[]` are unset; a message,
/// even empty, is set.
pub(super) fn is_set(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Bool(true) | Value::Object(_)) => true,
    }
}

/// `value` when it lies in `range` (within `u32`), else a problem at `path`.
pub(super) fn ranged(
    value: i64,
    range: RangeInclusive<i64>,
    path: &str,
    p: &mut Problems,
) -> Option<u32> {
    if range.contains(&value) {
        u32::try_from(value).ok()
    } else {
        p.add(
            path,
            format!(
                "{value} is not between {} and {}",
                range.start(),
                range.end()
            ),
        );
        None
    }
}

pub(super) fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// A DNS label that may start with `*` or `*-`, or be `*`.
fn is_wildcard_label(label: &str) -> bool {
    label.len() <= 63
        && (label == "*"
            || is_dns1123_label(label)
            || label.strip_prefix("*-").is_some_and(is_dns1123_label)
            || label.strip_prefix('*').is_some_and(is_dns1123_label))
}

/// Istio's `ValidateWildcardDomain`: DNS labels, a wildcard allowed in the first one only, the
/// top-level one not all digits.
pub(super) fn check_wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the host name must not be empty".to_owned());
    }
    if domain.len() > 255 {
        return Err(format!("{domain:?} is longer than 255 characters"));
    }
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!("{domain:?} is not a host name (label {first:?})"));
    }
    let Some(rest) = rest else {
        return Ok(());
    };
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.last().is_some_and(|top| top.parse::<i64>().is_ok()) {
        return Err(format!("{domain:?} has an all-numeric top-level domain"));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot is allowed.
        if i + 1 == labels.len() && label.is_empty() {
            break;
        }
        if !is_dns1123_label(label) {
            return Err(format!("{domain:?} is not a host name (label {label:?})"));
        }
    }
    Ok(())
}

/// Istio's `validateGatewayNames`: `mesh`, `namespace/name` or a legacy FQDN.
pub(super) fn check_gateway_names(names: &[String], path: &str, p: &mut Problems) {
    for (i, name) in names.iter().enumerate() {
        let valid = match name.split_once('/') {
            _ if name == MESH => true,
            Some((namespace, gateway)) => is_dns1123_label(namespace) && is_dns1123_label(gateway),
            None => check_wildcard_domain(name).is_ok() && !name.starts_with('*'),
        };
        if !valid {
            p.add(
                &format!("{path}[{i}]"),
                format!("{name:?} is not a gateway name (mesh or namespace/name)"),
            );
        }
    }
}

/// Istio's `validateExportTo`: `.`, `*` or namespace names, no duplicates, `*` alone, and
/// nothing beyond the own namespace for a rule with a workload selector. The entries as written.
pub(super) fn export_to(
    entries: &[String],
    namespace: &str,
    selector: bool,
    path: &str,
    p: &mut Problems,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let key = if entry == "." {
            namespace
        } else {
            entry.as_str()
        };
        if entry == "~" {
            p.add(&at, "\"~\" (exported to none) is not allowed here");
        } else if entry != "*" && entry != "." && !is_dns1123_label(entry) {
            p.add(
                &at,
                format!("{entry:?} is neither ., * nor a namespace name"),
            );
        } else if !seen.insert(key.to_owned()) {
            p.add(&at, format!("{entry:?} is listed twice"));
        }
    }
    if seen.contains("*") && entries.len() > 1 {
        p.add(path, "\"*\" cannot be combined with other entries");
    }
    if selector && !seen.is_empty() && (!seen.contains(namespace) || seen.len() > 1) {
        p.add(
            path,
            "a DestinationRule with a workload selector cannot be exported beyond its namespace",
        );
    }
    entries.iter().cloned().collect()
}

/// Kubernetes label syntax, as Istio checks `sourceLabels` and subset labels.
pub(super) fn check_labels(labels: &BTreeMap<String, String>, path: &str, p: &mut Problems) {
    for (key, value) in labels {
        let at = format!("{path}.{key}");
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        let prefix_valid = prefix
            .is_none_or(|prefix| prefix.len() <= 253 && prefix.split('.').all(is_dns1123_label));
        if !prefix_valid || name.len() > 63 || !is_qualified_name(name) {
            p.add(&at, format!("{key:?} is not a label name"));
        }
        if !value.is_empty() && !is_qualified_name(value) {
            p.add(&at, format!("{value:?} is not a label value"));
        }
    }
}

/// Alphanumerics with `-`, `_` and `.` inside.
fn is_qualified_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An HTTP token (RFC 9110): what header names and methods are made of.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
