//! An `http` rule as kept, and what becomes of it for one client and port: matches left out by
//! port, gateways and source, destinations without a port sent to the port called, the redirect's
//! port resolved, and a route per match where the path change depends on the match.

use std::collections::BTreeMap;

use remora_api::proto::config::{self as proto, string_match::Kind};

use crate::config::routing::istio::{Client, MESH};

/// One `http` rule.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) matches: Vec<RuleMatch>,
    /// The route with everything that depends on neither the client nor the port; backend and
    /// mirror ports are 0 where the destination names none.
    pub(super) route: proto::HttpRoute,
    pub(super) redirect_port: RedirectPort,
    /// `rewrite.uri`: replaces what the match matched, a prefix or the whole path.
    pub(super) rewrite_uri: Option<String>,
    /// The route's path change depends on the match (`rewrite.uri`, `redirect.prefixRewrite`),
    /// so each match gets a route of its own, as each becomes an Envoy route in Istio.
    pub(super) per_match: bool,
}

impl Rule {
    /// The routes for the matches `kept` (none: every request) on `port`.
    pub(super) fn routes(&self, kept: Vec<proto::HttpMatch>, port: u16) -> Vec<proto::HttpRoute> {
        let mut base = self.route.clone();
        for backend in &mut base.backends {
            backend.port = default_port(backend.port, port);
        }
        for mirror in &mut base.mirrors {
            mirror.port = default_port(mirror.port, port);
        }
        if let Some(redirect) = &mut base.redirect {
            redirect.port = self.redirect_port.resolve(port, &redirect.scheme);
        }
        if !self.per_match {
            base.matches = kept;
            return vec![base];
        }
        let matches = if kept.is_empty() {
            vec![proto::HttpMatch::default()]
        } else {
            kept
        };
        matches
            .into_iter()
            .map(|mut matched| {
                let mut route = base.clone();
                // Envoy matches a rule without `uri` as the prefix `/`, and a prefix rewrite
                // then replaces that `/`.
                let prefix = match matched.path.as_ref().and_then(|p| p.kind.as_ref()) {
                    Some(Kind::Exact(_) | Kind::Regex(_)) => false,
                    Some(Kind::Prefix(_) | Kind::PathPrefix(_)) => true,
                    None => {
                        matched.path = Some(proto::StringMatch {
                            kind: Some(Kind::Prefix("/".to_owned())),
                            ignore_case: false,
                        });
                        true
                    }
                };
                if let Some(uri) = &self.rewrite_uri {
                    let rewrite = route.rewrite.get_or_insert_with(Default::default);
                    if prefix {
                        rewrite.prefix.clone_from(uri);
                    } else {
                        rewrite.path.clone_from(uri);
                    }
                }
                route.matches = vec![matched];
                route
            })
            .collect()
    }
}

/// A destination without a port goes to the port the client called: istiod looks the
/// destination up among the Services of that port only, so a Service's single other port is
/// never chosen for a sidecar.
fn default_port(port: u32, called: u16) -> u32 {
    if port == 0 {
        u32::from(called)
    } else {
        port
    }
}

/// The port a redirect names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RedirectPort {
    /// None, or `derivePort: FROM_PROTOCOL_DEFAULT` (Envoy is given no port either way).
    Keep,
    Fixed(u32),
    /// `derivePort: FROM_REQUEST_PORT`: routes are built per port, so it is that port.
    Request,
}

impl RedirectPort {
    /// Istio writes no `:80` for http nor `:443` for https.
    fn resolve(self, called: u16, scheme: &str) -> u32 {
        let port = match self {
            RedirectPort::Keep => return 0,
            RedirectPort::Fixed(port) => port,
            RedirectPort::Request => u32::from(called),
        };
        let scheme = if scheme.is_empty() { "http" } else { scheme };
        match (port, scheme) {
            (80, "http") | (443, "https") => 0,
            _ => port,
        }
    }
}

/// One `match` of a rule: the request conditions, and the filters Istio applies when it
/// builds a client's config rather than per request.
#[derive(Debug, Clone)]
pub(super) struct RuleMatch {
    pub(super) http: proto::HttpMatch,
    pub(super) port: Option<u16>,
    pub(super) gateways: Vec<String>,
    pub(super) source_labels: BTreeMap<String, String>,
    pub(super) source_namespace: Option<String>,
}

impl RuleMatch {
    /// Istio's `sourceMatchHTTP` and port check: match-level `gateways`, when set, decide
    /// alone (`sourceLabels` and `sourceNamespace` are then not looked at); otherwise the client
    /// must carry the labels and live in the namespace.
    pub(super) fn applies(&self, port: u16, client: &Client) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if !self.gateways.is_empty() {
            return self.gateways.iter().any(|g| g == MESH);
        }
        self.source_labels
            .iter()
            .all(|(key, value)| client.labels.get(key) == Some(value))
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|namespace| namespace == client.namespace)
    }
}

/// Istio's `IsCatchAllRoute`: the match takes every request, so nothing after it is reached.
pub(super) fn is_catch_all(http: &proto::HttpMatch) -> bool {
    let any_path = match http.path.as_ref().and_then(|p| p.kind.as_ref()) {
        None => true,
        Some(Kind::Prefix(prefix)) => prefix == "/",
        Some(Kind::Regex(regex)) => regex == ".*",
        Some(_) => false,
    };
    any_path
        && http.headers.is_empty()
        && http.query_params.is_empty()
        && http.method.is_empty()
        && http.authority.is_none()
}
