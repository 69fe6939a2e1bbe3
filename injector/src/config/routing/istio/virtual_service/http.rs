//! Reading one `spec.http` rule: what may be combined with what, destinations and their weights,
//! rewrites and mirrors, and the blocks the sibling modules read (`match`, `headers`, `redirect`,
//! `retries`, `fault`), put together into a [`Rule`].

use remora_api::proto::config::{self as proto, string_match::Kind};

use super::{
    fault::fault,
    headers::{check_header_value, header_changes},
    matches::{check_regex, rule_match, string_match},
    redirect::redirect,
    retry::retry,
    rule::{RedirectPort, Rule, RuleMatch},
};
use crate::config::routing::istio::{
    checks::{check_wildcard_domain, is_dns1123_label, is_set, ranged, Problems},
    duration::millis,
    hosts::resolve_host,
    spec::{CorsPolicySpec, DestinationSpec, HttpRouteSpec, PercentSpec},
    Meta,
};

pub(super) fn http_rule(index: usize, spec: HttpRouteSpec, meta: &Meta, p: &mut Problems) -> Rule {
    let path = format!("spec.http[{index}]");
    let at = |field: &str| format!("{path}.{field}");
    for (field, value) in [
        ("delegate", &spec.delegate),
        ("directResponse", &spec.direct_response),
    ] {
        if is_set(value) {
            p.unsupported(&at(field));
        }
    }
    let destinations = spec.route.unwrap_or_default();
    if spec.redirect.is_some() {
        for (field, set) in [
            ("route", !destinations.is_empty()),
            ("fault", spec.fault.is_some()),
            ("rewrite", spec.rewrite.is_some()),
        ] {
            if set {
                p.add(&path, format!("redirect and {field} cannot both be set"));
            }
        }
    } else if destinations.is_empty() && !is_set(&spec.direct_response) && !is_set(&spec.delegate) {
        p.add(
            &path,
            "one of route, redirect, directResponse or delegate is required",
        );
    }
    let mirror_policies = spec.mirrors.unwrap_or_default();
    if spec.mirror.is_some() && !mirror_policies.is_empty() {
        p.add(&path, "mirror and mirrors cannot both be set");
    }

    let matches: Vec<RuleMatch> = spec
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, m)| rule_match(m, &at(&format!("match[{j}]")), p))
        .collect();

    let headers = header_changes(spec.headers, &at("headers"), p);
    let mut rewrite = proto::Rewrite::default();
    let mut rewrite_uri = None;
    if let Some(spec) = spec.rewrite {
        let path = at("rewrite");
        let uri = spec.uri.filter(|u| !u.is_empty());
        let authority = spec.authority.filter(|a| !a.is_empty());
        if uri.is_some() && spec.uri_regex_rewrite.is_some() {
            p.add(&path, "uri and uriRegexRewrite cannot both be set");
        }
        if uri.is_none() && spec.uri_regex_rewrite.is_none() && authority.is_none() {
            p.add(
                &path,
                "one of uri, uriRegexRewrite or authority is required",
            );
        }
        if let Some(regex) = spec.uri_regex_rewrite {
            let pattern = regex.pattern.unwrap_or_default();
            let substitution = regex.rewrite.unwrap_or_default();
            if pattern.is_empty() || substitution.is_empty() {
                p.add(
                    &format!("{path}.uriRegexRewrite"),
                    "match and rewrite are both required",
                );
            } else {
                check_regex(&pattern, &format!("{path}.uriRegexRewrite.match"), p);
            }
            rewrite.regex = pattern;
            rewrite.substitution = substitution;
        }
        if let Some(authority) = authority {
            check_header_value(&authority, &format!("{path}.authority"), p);
            rewrite.authority = authority;
        }
        rewrite_uri = uri;
    }
    if usize::from(!rewrite.authority.is_empty()) + headers.authorities.len() > 1 {
        p.add(
            &at("headers.request"),
            "the authority is rewritten more than once (rewrite.authority, set or add of host)",
        );
    }
    if rewrite.authority.is_empty() {
        rewrite.authority = headers.authority().unwrap_or_default();
    }

    let several = destinations.len() > 1;
    let mut backends = Vec::new();
    let mut total_weight = 0;
    for (j, spec) in destinations.into_iter().enumerate() {
        let path = at(&format!("route[{j}]"));
        let destination = destination(spec.destination, &format!("{path}.destination"), meta, p);
        let weight = ranged(
            spec.weight.unwrap_or(0),
            0..=i64::from(i32::MAX),
            &format!("{path}.weight"),
            p,
        )
        .unwrap_or(0);
        total_weight += u64::from(weight);
        let ops = header_changes(spec.headers, &format!("{path}.headers"), p);
        if !ops.authorities.is_empty() {
            if several {
                p.add(
                    &format!("{path}.headers.request"),
                    "rewriting the authority per destination is not supported yet",
                );
            } else if rewrite.authority.is_empty() {
                rewrite.authority = ops.authority().unwrap_or_default();
            }
        }
        let Some(destination) = destination else {
            continue;
        };
        // Istio leaves out destinations of weight 0 when there are several, and sends
        // everything to a single one whatever its weight.
        if several && weight == 0 {
            continue;
        }
        backends.push(proto::RouteBackend {
            host: destination.host,
            port: destination.port,
            subset: destination.subset,
            weight: if several { weight } else { 100 },
            request_headers: ops.request,
            response_headers: ops.response,
        });
    }
    if several && total_weight == 0 {
        p.add(&at("route"), "the weights add up to 0");
    }

    let mut redirect_port = RedirectPort::Keep;
    let mut redirect_prefix = false;
    let redirect = spec.redirect.map(|spec| {
        let (redirect, port) = redirect(spec, &matches, &at("redirect"), p);
        redirect_port = port;
        redirect_prefix = !redirect.prefix.is_empty();
        redirect
    });

    let timeout_ms = spec
        .timeout
        .map_or(0, |timeout| millis(timeout, &at("timeout"), p));
    let retry = spec.retries.map(|spec| retry(spec, &at("retries"), p));
    let fault = spec.fault.and_then(|spec| fault(spec, &at("fault"), p));
    let cors = spec
        .cors_policy
        .map(|spec| cors(spec, &at("corsPolicy"), p));

    let mut mirrors = Vec::new();
    if let Some(percentage) = &spec.mirror_percentage {
        let value = percentage.value();
        if !(0.0..=100.0).contains(&value) {
            p.add(
                &at("mirrorPercentage.value"),
                format!("{value} is not between 0 and 100"),
            );
        }
    }
    let mirror_percent = spec
        .mirror_percent
        .and_then(|percent| ranged(percent, 0..=100, &at("mirrorPercent"), p).map(f64::from));
    if let Some(spec_mirror) = spec.mirror {
        let destination = destination(Some(spec_mirror), &at("mirror"), meta, p);
        // `mirrorPercentage` wins over the deprecated `mirrorPercent`; neither: every request;
        // an explicit 0: none.
        let percent = match (&spec.mirror_percentage, mirror_percent) {
            (Some(percentage), _) => percentage.value(),
            (None, Some(percent)) => percent,
            (None, None) => 100.0,
        };
        if let Some(destination) = destination.filter(|_| percent > 0.0) {
            mirrors.push(destination.mirror(percent));
        }
    }
    for (j, spec) in mirror_policies.into_iter().enumerate() {
        let path = at(&format!("mirrors[{j}]"));
        let destination = destination(spec.destination, &format!("{path}.destination"), meta, p);
        let percent = spec.percentage.as_ref().map_or(100.0, PercentSpec::value);
        if !(0.0..=100.0).contains(&percent) {
            p.add(
                &format!("{path}.percentage.value"),
                format!("{percent} is not between 0 and 100"),
            );
        }
        if let Some(destination) = destination.filter(|_| percent > 0.0) {
            mirrors.push(destination.mirror(percent));
        }
    }

    let has_rewrite = rewrite != proto::Rewrite::default();
    Rule {
        matches,
        route: proto::HttpRoute {
            kind: "VirtualService".to_owned(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            rule: u32::try_from(index).unwrap_or(u32::MAX),
            matches: Vec::new(),
            backends,
            request_headers: headers.request,
            response_headers: headers.response,
            redirect,
            rewrite: has_rewrite.then_some(rewrite),
            mirrors,
            timeout_ms,
            retry,
            fault,
            cors,
        },
        redirect_port,
        per_match: rewrite_uri.is_some() || redirect_prefix,
        rewrite_uri,
    }
}

/// `corsPolicy`: origins as matches (the deprecated exact `allowOrigin` too), the lists as
/// written, `unmatchedPreflights` FORWARD (the default) or IGNORE.
fn cors(spec: CorsPolicySpec, path: &str, p: &mut Problems) -> proto::Cors {
    let mut origins: Vec<proto::StringMatch> = spec
        .allow_origin
        .unwrap_or_default()
        .into_iter()
        .map(|origin| proto::StringMatch {
            kind: Some(Kind::Exact(origin)),
            ignore_case: false,
        })
        .collect();
    for (i, origin) in spec.allow_origins.unwrap_or_default().iter().enumerate() {
        let at = format!("{path}.allowOrigins[{i}]");
        match string_match(origin, &at, false, p) {
            Some(kind) => origins.push(proto::StringMatch {
                kind: Some(kind),
                ignore_case: false,
            }),
            None => p.add(&at, "one of exact, prefix or regex is required"),
        }
    }
    let ignore_unmatched_preflights = match spec.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => false,
        Some("IGNORE") => true,
        Some(other) => {
            p.add(
                &format!("{path}.unmatchedPreflights"),
                format!("{other:?} is not one of FORWARD, IGNORE"),
            );
            false
        }
    };
    proto::Cors {
        allow_origins: origins,
        allow_methods: spec.allow_methods.unwrap_or_default(),
        allow_headers: spec.allow_headers.unwrap_or_default(),
        expose_headers: spec.expose_headers.unwrap_or_default(),
        max_age_seconds: spec
            .max_age
            .map_or(0, |age| millis(age, &format!("{path}.maxAge"), p) / 1000),
        allow_credentials: spec.allow_credentials.unwrap_or(false),
        ignore_unmatched_preflights,
    }
}

/// A destination as checked: host resolved, port 0 when it names none.
pub(super) struct Destination {
    pub(super) host: String,
    pub(super) subset: String,
    pub(super) port: u32,
}

impl Destination {
    fn mirror(self, percent: f64) -> proto::Mirror {
        proto::Mirror {
            host: self.host,
            port: self.port,
            subset: self.subset,
            percent,
        }
    }
}

pub(super) fn destination(
    spec: Option<DestinationSpec>,
    path: &str,
    meta: &Meta,
    p: &mut Problems,
) -> Option<Destination> {
    let Some(spec) = spec else {
        p.add(path, "required");
        return None;
    };
    let host = spec.host.unwrap_or_default();
    if host == "*" {
        p.add(&format!("{path}.host"), "\"*\" is not a destination");
    } else if let Err(e) = check_wildcard_domain(&host) {
        p.add(&format!("{path}.host"), e);
    }
    let subset = spec.subset.unwrap_or_default();
    if !subset.is_empty() && !is_dns1123_label(&subset) {
        p.add(
            &format!("{path}.subset"),
            format!("{subset:?} is not a subset name"),
        );
    }
    let port = spec.port.map_or(0, |port| {
        ranged(
            port.number.unwrap_or(0),
            1..=65535,
            &format!("{path}.port.number"),
            p,
        )
        .unwrap_or(0)
    });
    Some(Destination {
        host: resolve_host(&host, &meta.namespace),
        subset,
        port,
    })
}
