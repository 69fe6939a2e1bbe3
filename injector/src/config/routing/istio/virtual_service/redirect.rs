//! A rule's `redirect`: what may be combined, the status, and the port, which depends on the port
//! called and so is only resolved per port ([`RedirectPort`]).

use remora_api::proto::config::{self as proto, string_match::Kind};

use super::{
    headers::check_header_value,
    rule::{RedirectPort, RuleMatch},
};
use crate::config::routing::istio::{
    checks::{ranged, Problems},
    spec::RedirectSpec,
};

pub(super) fn redirect(
    spec: RedirectSpec,
    matches: &[RuleMatch],
    path: &str,
    p: &mut Problems,
) -> (proto::Redirect, RedirectPort) {
    let at = |field: &str| format!("{path}.{field}");
    let uri = spec.uri.unwrap_or_default();
    let prefix = spec.prefix_rewrite.unwrap_or_default();
    let authority = spec.authority.unwrap_or_default();
    let scheme = spec.scheme.unwrap_or_default();
    if !uri.is_empty() && !prefix.is_empty() {
        p.add(path, "uri and prefixRewrite cannot both be set");
    }
    let prefix_matches = matches.iter().all(|m| {
        matches!(
            m.http.path.as_ref().and_then(|p| p.kind.as_ref()),
            None | Some(Kind::Prefix(_))
        )
    });
    if !prefix.is_empty() && !prefix_matches {
        p.add(
            &at("prefixRewrite"),
            "every uri match of the rule must be a prefix match",
        );
    }
    if spec.port.is_some() && spec.derive_port.is_some() {
        p.add(path, "port and derivePort cannot both be set");
    }
    if [&uri, &prefix, &authority, &scheme]
        .iter()
        .all(|v| v.is_empty())
        && spec.port.is_none()
        && spec.derive_port.is_none()
    {
        p.add(
            path,
            "one of uri, prefixRewrite, authority, scheme, port or derivePort is required",
        );
    }
    // Istio passes any 3xx, but translates only these; Envoy knows no other redirect.
    let status = match spec.redirect_code.unwrap_or(0) {
        0 => 301,
        code @ (301 | 302 | 303 | 307 | 308) => u32::try_from(code).unwrap_or(301),
        code => {
            p.add(
                &at("redirectCode"),
                format!("{code} is not one of 301, 302, 303, 307, 308"),
            );
            301
        }
    };
    if !matches!(scheme.as_str(), "" | "http" | "https") {
        p.add(
            &at("scheme"),
            format!("{scheme:?} is neither http nor https"),
        );
    }
    if !authority.is_empty() {
        check_header_value(&authority, &at("authority"), p);
    }
    let mut port = RedirectPort::Keep;
    if let Some(number) = spec.port.filter(|n| *n != 0) {
        if let Some(number) = ranged(number, 1..=65535, &at("port"), p) {
            port = RedirectPort::Fixed(number);
        }
    }
    match spec.derive_port.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT") => {}
        Some("FROM_REQUEST_PORT") => port = RedirectPort::Request,
        Some(other) => p.add(
            &at("derivePort"),
            format!("{other:?} is neither FROM_PROTOCOL_DEFAULT nor FROM_REQUEST_PORT"),
        ),
    }
    let redirect = proto::Redirect {
        scheme,
        host: authority,
        port: 0,
        path: uri,
        prefix,
        status,
    };
    (redirect, port)
}
