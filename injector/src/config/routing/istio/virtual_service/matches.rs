//! A rule's `match` entries: URI, method, authority, header and query parameter conditions
//! translated into the sidecar's request match, and the port, gateway and source conditions kept
//! aside for when the client and port are known.

use std::collections::BTreeMap;

use remora_api::proto::config::{self as proto, string_match::Kind};

use super::rule::RuleMatch;
use crate::config::routing::istio::{
    checks::{check_gateway_names, check_labels, is_dns1123_label, is_token, ranged, Problems},
    spec::{MatchSpec, StringMatchSpec},
};

pub(super) fn rule_match(spec: MatchSpec, path: &str, p: &mut Problems) -> RuleMatch {
    let at = |field: &str| format!("{path}.{field}");
    if spec.scheme.is_some() {
        p.unsupported(&at("scheme"));
    }
    let ignore_case = spec.ignore_uri_case.unwrap_or(false);
    // Envoy takes an empty `uri` prefix (every path), unlike every other empty prefix.
    let uri = spec
        .uri
        .and_then(|uri| string_match(&uri, &at("uri"), true, p))
        .map(|kind| proto::StringMatch {
            // Envoy ignores case for exact and prefix path matches only.
            ignore_case: ignore_case && matches!(kind, Kind::Exact(_) | Kind::Prefix(_)),
            kind: Some(kind),
        });
    let method = match spec
        .method
        .and_then(|method| string_match(&method, &at("method"), false, p))
    {
        None => String::new(),
        Some(Kind::Exact(method)) => {
            if !is_token(&method) {
                p.add(
                    &at("method.exact"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            method
        }
        Some(_) => {
            p.add(&at("method"), "only exact method matches are supported yet");
            String::new()
        }
    };
    let authority = spec
        .authority
        .and_then(|authority| string_match(&authority, &at("authority"), false, p))
        .map(exactly);

    let mut headers = Vec::new();
    for (name, value) in spec.headers.unwrap_or_default() {
        let path = at(&format!("headers.{name}"));
        let Some(name) = match_header_name(&name, &path, p) else {
            continue;
        };
        match value {
            None => p.add(&path, "must not be null (`{}` matches any value)"),
            Some(value) => {
                if value.regex.as_deref() == Some("*") {
                    p.add(&path, "\"*\" is not a regex (only withoutHeaders takes it)");
                }
                headers.push(proto::HeaderMatch {
                    name,
                    value: string_match(&value, &path, false, p).map(exactly),
                    invert: false,
                });
            }
        }
    }
    for (name, value) in spec.without_headers.unwrap_or_default() {
        let path = at(&format!("withoutHeaders.{name}"));
        let Some(name) = match_header_name(&name, &path, p) else {
            continue;
        };
        // Istio takes the regex `*` to mean "present", as it takes an empty match.
        let value = value
            .filter(|v| {
                !(v.regex.as_deref() == Some("*") && v.exact.is_none() && v.prefix.is_none())
            })
            .and_then(|v| string_match(&v, &path, false, p));
        headers.push(proto::HeaderMatch {
            name,
            value: value.map(exactly),
            invert: true,
        });
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    let query_params = spec
        .query_params
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let path = at(&format!("queryParams.{name}"));
            if value.as_ref().and_then(|v| v.regex.as_deref()) == Some("*") {
                p.add(&path, "\"*\" is not a regex (only withoutHeaders takes it)");
            }
            proto::HeaderMatch {
                value: value
                    .and_then(|v| string_match(&v, &path, false, p))
                    .map(exactly),
                name,
                invert: false,
            }
        })
        .collect();

    let mut kept = client_conditions(
        spec.port,
        spec.source_labels,
        spec.source_namespace,
        spec.gateways,
        path,
        p,
    );
    kept.http = proto::HttpMatch {
        path: uri,
        headers,
        query_params,
        method,
        authority,
    };
    kept
}

/// The conditions of a match Istio checks when it builds a client's config (the port called,
/// the client's labels and namespace, the gateways), checked and kept aside; the request
/// conditions are left empty.
pub(super) fn client_conditions(
    port: Option<i64>,
    source_labels: Option<BTreeMap<String, String>>,
    source_namespace: Option<String>,
    gateways: Option<Vec<String>>,
    path: &str,
    p: &mut Problems,
) -> RuleMatch {
    let at = |field: &str| format!("{path}.{field}");
    let port = port
        .filter(|port| *port != 0)
        .and_then(|port| ranged(port, 1..=65535, &at("port"), p))
        .and_then(|port| u16::try_from(port).ok());
    let source_labels = source_labels.unwrap_or_default();
    check_labels(&source_labels, &at("sourceLabels"), p);
    let source_namespace = source_namespace.filter(|ns| !ns.is_empty());
    if let Some(namespace) = &source_namespace {
        if !is_dns1123_label(namespace) {
            p.add(
                &at("sourceNamespace"),
                format!("{namespace:?} is not a namespace name"),
            );
        }
    }
    let gateways = gateways.unwrap_or_default();
    check_gateway_names(&gateways, &at("gateways"), p);
    RuleMatch {
        http: proto::HttpMatch::default(),
        port,
        gateways,
        source_labels,
        source_namespace,
    }
}

fn exactly(kind: Kind) -> proto::StringMatch {
    proto::StringMatch {
        kind: Some(kind),
        ignore_case: false,
    }
}

/// A match's header name, lowercased.
fn match_header_name(name: &str, path: &str, p: &mut Problems) -> Option<String> {
    const PSEUDO: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];
    if name.is_empty() {
        p.add(path, "the header name must not be empty");
    } else if name.starts_with("@request.auth.claims") {
        p.add(path, "JWT claim routing is only supported for gateways");
    } else if PSEUDO.contains(&name) {
        p.add(path, "pseudo-header matches are not supported yet");
    } else if !is_token(name) {
        p.add(path, format!("{name:?} is not a header name"));
    } else {
        return Some(name.to_ascii_lowercase());
    }
    None
}

/// A StringMatch's condition; `None` when it is empty (any value, or presence) or wrong.
pub(super) fn string_match(
    spec: &StringMatchSpec,
    path: &str,
    empty_prefix: bool,
    p: &mut Problems,
) -> Option<Kind> {
    let set = [&spec.exact, &spec.prefix, &spec.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        p.add(path, "only one of exact, prefix and regex may be set");
        return None;
    }
    if let Some(exact) = &spec.exact {
        return Some(Kind::Exact(exact.clone()));
    }
    if let Some(prefix) = &spec.prefix {
        if prefix.is_empty() && !empty_prefix {
            p.add(&format!("{path}.prefix"), "must not be empty");
            return None;
        }
        return Some(Kind::Prefix(prefix.clone()));
    }
    let regex = spec.regex.as_ref()?;
    check_regex(regex, &format!("{path}.regex"), p);
    Some(Kind::Regex(regex.clone()))
}

/// What Istio checks of an RE2 regex short of compiling it: the sidecar compiles it with the
/// snapshot.
pub(super) fn check_regex(regex: &str, path: &str, p: &mut Problems) {
    if regex.is_empty() {
        p.add(path, "must not be empty");
    } else if regex.len() > 1024 {
        p.add(path, "longer than 1024 characters");
    }
}
