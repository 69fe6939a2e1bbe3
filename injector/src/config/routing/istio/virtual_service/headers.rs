//! `headers` blocks, of a rule or of a destination: headers set, added and removed on requests
//! and responses, the authority taken out as Istio turns it into a rewrite, and values checked as
//! Envoy takes them.

use remora_api::proto::config as proto;

use crate::config::routing::istio::{
    checks::{is_token, Problems},
    spec::HeadersSpec,
};

/// The header changes of a `headers` block; the authority (`host`, `:authority`) is taken out
/// of `set` and `add`, as Istio turns it into an authority rewrite.
#[derive(Default)]
pub(super) struct HeaderChanges {
    pub(super) request: Option<proto::HeaderOps>,
    pub(super) response: Option<proto::HeaderOps>,
    /// `(from set, value)` for each authority given.
    pub(super) authorities: Vec<(bool, String)>,
}

impl HeaderChanges {
    /// The authority to rewrite to: `set` wins over `add`.
    pub(super) fn authority(&self) -> Option<String> {
        self.authorities
            .iter()
            .find(|(set, _)| *set)
            .or(self.authorities.first())
            .map(|(_, value)| value.clone())
    }
}

pub(super) fn header_changes(
    spec: Option<HeadersSpec>,
    path: &str,
    p: &mut Problems,
) -> HeaderChanges {
    let Some(spec) = spec else {
        return HeaderChanges::default();
    };
    let mut changes = HeaderChanges::default();
    if let Some(request) = spec.request {
        let path = format!("{path}.request");
        let mut ops = proto::HeaderOps::default();
        for (set, list) in [(true, request.set), (false, request.add)] {
            let path = format!("{path}.{}", if set { "set" } else { "add" });
            for (name, value) in list.unwrap_or_default() {
                let path = format!("{path}.{name}");
                if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority") {
                    check_header_value(&value, &path, p);
                    changes.authorities.push((set, value));
                    continue;
                }
                if let Some(header) = header(&name, &value, &path, p) {
                    (if set { &mut ops.set } else { &mut ops.add }).push(header);
                }
            }
        }
        ops.remove = removed(request.remove, &format!("{path}.remove"), p);
        changes.request = non_empty(ops);
    }
    if let Some(response) = spec.response {
        let path = format!("{path}.response");
        let mut ops = proto::HeaderOps::default();
        for (set, list) in [(true, response.set), (false, response.add)] {
            let path = format!("{path}.{}", if set { "set" } else { "add" });
            for (name, value) in list.unwrap_or_default() {
                let path = format!("{path}.{name}");
                if let Some(header) = header(&name, &value, &path, p) {
                    (if set { &mut ops.set } else { &mut ops.add }).push(header);
                }
            }
        }
        ops.remove = removed(response.remove, &format!("{path}.remove"), p);
        changes.response = non_empty(ops);
    }
    changes
}

fn non_empty(ops: proto::HeaderOps) -> Option<proto::HeaderOps> {
    (ops != proto::HeaderOps::default()).then_some(ops)
}

/// A header to set or add (the authority aside), its value unescaped.
fn header(name: &str, value: &str, path: &str, p: &mut Problems) -> Option<proto::Header> {
    let valid_name = check_operation_name(name, path, p);
    let value = check_header_value(value, path, p);
    Some(proto::Header {
        name: valid_name?,
        value: value?,
    })
}

fn removed(names: Option<Vec<String>>, path: &str, p: &mut Problems) -> Vec<String> {
    names
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, name)| check_operation_name(name, &format!("{path}[{i}]"), p))
        .collect()
}

/// A header name a route may change, lowercased: not `host` nor a pseudo-header.
fn check_operation_name(name: &str, path: &str, p: &mut Problems) -> Option<String> {
    if name.is_empty() {
        p.add(path, "the header name must not be empty");
    } else if name.eq_ignore_ascii_case("host") || name.starts_with(':') {
        p.add(path, format!("{name:?} cannot be changed"));
    } else if !is_token(name) {
        p.add(path, format!("{name:?} is not a header name"));
    } else {
        return Some(name.to_ascii_lowercase());
    }
    None
}

/// A header value as Envoy takes it, with `%%` standing for `%`; Envoy's `%VARIABLE%`
/// substitutions are not supported yet.
pub(super) fn check_header_value(value: &str, path: &str, p: &mut Problems) -> Option<String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        p.add(path, format!("{value:?} holds control characters"));
        return None;
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
        } else if chars.next() == Some('%') {
            out.push('%');
        } else {
            p.add(
                path,
                format!(
                    "{value:?}: %VARIABLE% substitutions are not supported yet (write %% for %)"
                ),
            );
            return None;
        }
    }
    Some(out)
}
