//! Reading an HTTPRoute or GRPCRoute: every field checked as the API server and Istio would check
//! it, the CRD's defaults filled in, and each match of each rule translated into an [`Entry`] of
//! the route table. A [`Reader`] carries the route being read and every problem found so far, so
//! that a rejection names all the wrong fields at once; the parts of a rule are read by the
//! submodules named after them ([`matches`], [`filters`], [`timing`]).

mod filters;
mod matches;
mod timing;

use std::fmt;

use k8s_openapi::jiff::Timestamp;
use remora_api::proto::config::{self as proto, string_match::Kind};
use serde_json::Value;

use crate::config::well_known::service_hostname;

use super::{
    spec::{
        parse, BackendRefSpec, GrpcRouteSpec, GrpcRuleSpec, HttpRouteSpec, HttpRuleSpec,
        ObjectRefSpec, ParentRefSpec,
    },
    Entry, Route, ServiceParent, API_GROUP,
};
use filters::Place;
use matches::every_path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

pub(super) fn http_route(value: Value, namespace: &str, name: &str) -> Result<Route, String> {
    let (created, spec): (_, HttpRouteSpec) = parse(value)?;
    let mut reader = Reader::new(RouteKind::Http, namespace, name);
    let parents = reader.parents(spec.parent_refs.unwrap_or_default());
    // The CRD's default for an absent list: one rule matching every request, with no backend.
    let rules = spec.rules.unwrap_or_else(|| vec![HttpRuleSpec::default()]);
    if rules.is_empty() {
        reader.problem("spec.rules", "must list at least one rule");
    }
    let mut entries = Vec::new();
    for (i, rule) in rules.into_iter().enumerate() {
        entries.extend(reader.http_rule(i, rule));
    }
    reader.finish(created, parents, entries)
}

pub(super) fn grpc_route(value: Value, namespace: &str, name: &str) -> Result<Route, String> {
    let (created, spec): (_, GrpcRouteSpec) = parse(value)?;
    let mut reader = Reader::new(RouteKind::Grpc, namespace, name);
    let parents = reader.parents(spec.parent_refs.unwrap_or_default());
    let mut entries = Vec::new();
    for (i, rule) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        entries.extend(reader.grpc_rule(i, rule));
    }
    reader.finish(created, parents, entries)
}

/// Checks one route, collecting every problem.
struct Reader<'a> {
    kind: RouteKind,
    namespace: &'a str,
    name: &'a str,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(kind: RouteKind, namespace: &'a str, name: &'a str) -> Self {
        Self {
            kind,
            namespace,
            name,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, field: impl fmt::Display, message: impl fmt::Display) {
        self.problems.push(format!("{field}: {message}"));
    }

    fn finish(
        self,
        created: Option<Timestamp>,
        parents: Vec<ServiceParent>,
        entries: Vec<Entry>,
    ) -> Result<Route, String> {
        if !self.problems.is_empty() {
            return Err(self.problems.join("; "));
        }
        Ok(Route {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            created,
            parents,
            entries,
        })
    }

    /// The Service parents: group `""` (the core group, which a parentRef must name, its
    /// default being Gateway API's) and kind `Service`.
    fn parents(&mut self, refs: Vec<ParentRefSpec>) -> Vec<ServiceParent> {
        let mut parents = Vec::new();
        for (i, parent) in refs.into_iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            if parent.name.is_empty() {
                self.problem(format!("{field}.name"), "required");
            }
            if parent.port == Some(0) {
                self.problem(format!("{field}.port"), "must be between 1 and 65535");
            }
            let group = parent.group.as_deref().unwrap_or(API_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if (group, kind) == ("", "Service") {
                parents.push(ServiceParent {
                    namespace: parent
                        .namespace
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| self.namespace.to_owned()),
                    name: parent.name,
                    port: parent.port,
                });
            }
        }
        parents
    }

    fn http_rule(&mut self, i: usize, rule: HttpRuleSpec) -> Vec<Entry> {
        let field = format!("spec.rules[{i}]");
        if rule.session_persistence.is_some() {
            self.problem(format!("{field}.sessionPersistence"), "is not supported");
        }
        let matches = match rule.matches.filter(|m| !m.is_empty()) {
            None => vec![every_path()],
            Some(matches) => matches
                .into_iter()
                .enumerate()
                .map(|(j, m)| self.http_match(&format!("{field}.matches[{j}]"), m))
                .collect(),
        };
        let filters = self.filters(
            &format!("{field}.filters"),
            rule.filters.unwrap_or_default(),
            Place::HttpRule,
        );
        let one_prefix = matches!(
            matches.as_slice(),
            [proto::HttpMatch {
                path: Some(proto::StringMatch {
                    kind: Some(Kind::PathPrefix(_)),
                    ..
                }),
                ..
            }]
        );
        for replaces in &filters.replaces_prefix {
            if !one_prefix {
                self.problem(
                    replaces,
                    "needs the rule to have exactly one match, a PathPrefix",
                );
            }
        }
        let backend_refs = rule.backend_refs.unwrap_or_default();
        if filters.redirect.is_some() && !backend_refs.is_empty() {
            self.problem(
                format!("{field}.backendRefs"),
                "cannot be combined with a RequestRedirect filter",
            );
        }
        let backends = self.backends(&field, backend_refs);
        let (timeout_ms, retry) = self.timing(&field, rule.timeouts, rule.retry);
        let route = proto::HttpRoute {
            backends,
            request_headers: filters.request_headers,
            response_headers: filters.response_headers,
            redirect: filters.redirect,
            rewrite: filters.rewrite,
            mirrors: filters.mirrors,
            timeout_ms,
            retry,
            ..self.rule(i)
        };
        entries(route, matches)
    }

    fn grpc_rule(&mut self, i: usize, rule: GrpcRuleSpec) -> Vec<Entry> {
        let field = format!("spec.rules[{i}]");
        if rule.session_persistence.is_some() {
            self.problem(format!("{field}.sessionPersistence"), "is not supported");
        }
        let matches = match rule.matches.filter(|m| !m.is_empty()) {
            None => vec![proto::HttpMatch::default()],
            Some(matches) => matches
                .into_iter()
                .enumerate()
                .map(|(j, m)| self.grpc_match(&format!("{field}.matches[{j}]"), m))
                .collect(),
        };
        let filters = self.filters(
            &format!("{field}.filters"),
            rule.filters.unwrap_or_default(),
            Place::GrpcRule,
        );
        let backends = self.backends(&field, rule.backend_refs.unwrap_or_default());
        let route = proto::HttpRoute {
            backends,
            request_headers: filters.request_headers,
            response_headers: filters.response_headers,
            mirrors: filters.mirrors,
            ..self.rule(i)
        };
        entries(route, matches)
    }

    /// A route for rule `i`, naming it and doing nothing yet.
    fn rule(&self, i: usize) -> proto::HttpRoute {
        proto::HttpRoute {
            kind: self.kind.name().to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            rule: i as u32,
            ..proto::HttpRoute::default()
        }
    }

    /// The rule's backends; a weight of 0 takes no traffic, so it is left out (Istio).
    fn backends(&mut self, rule: &str, list: Vec<BackendRefSpec>) -> Vec<proto::RouteBackend> {
        let mut backends = Vec::new();
        for (k, spec) in list.into_iter().enumerate() {
            let field = format!("{rule}.backendRefs[{k}]");
            let weight = spec.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                self.problem(
                    format!("{field}.weight"),
                    format!("{weight} is not between 0 and 1000000"),
                );
            }
            let filters = self.filters(
                &format!("{field}.filters"),
                spec.filters.unwrap_or_default(),
                Place::Backend,
            );
            let reference = ObjectRefSpec {
                group: spec.group,
                kind: spec.kind,
                name: spec.name,
                namespace: spec.namespace,
                port: spec.port,
            };
            let (host, port) = self.target(&field, reference);
            if weight <= 0 || weight > 1_000_000 {
                continue;
            }
            backends.push(proto::RouteBackend {
                host,
                port,
                subset: String::new(),
                weight: weight as u32,
                request_headers: filters.request_headers,
                response_headers: filters.response_headers,
            });
        }
        backends
    }

    /// The host and port a backend reference sends to. Only Services (group `""`, kind
    /// `Service`, the defaults) resolve; any other kind gets an empty host, which the sidecar
    /// answers with 500 for that backend's share (Istio: an empty destination).
    fn target(&mut self, field: &str, reference: ObjectRefSpec) -> (String, u32) {
        if reference.name.is_empty() {
            self.problem(format!("{field}.name"), "required");
        }
        if reference.port == Some(0) {
            self.problem(format!("{field}.port"), "must be between 1 and 65535");
        }
        let port = u32::from(reference.port.unwrap_or(0));
        let group = reference.group.as_deref().unwrap_or("");
        let kind = reference.kind.as_deref().unwrap_or("Service");
        if (group, kind) != ("", "Service") {
            return (String::new(), port);
        }
        if reference.port.is_none() {
            self.problem(format!("{field}.port"), "required for a Service");
        }
        if reference.name.contains('.') {
            self.problem(
                format!("{field}.name"),
                format!("{:?} is a hostname; name the Service", reference.name),
            );
        }
        let namespace = reference
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(self.namespace);
        (service_hostname(namespace, &reference.name), port)
    }
}

fn entries(route: proto::HttpRoute, matches: Vec<proto::HttpMatch>) -> Vec<Entry> {
    matches
        .into_iter()
        .enumerate()
        .map(|(j, m)| Entry {
            match_index: j as u32,
            route: proto::HttpRoute {
                matches: vec![m],
                ..route.clone()
            },
        })
        .collect()
}

pub(super) fn string_match(kind: Kind) -> proto::StringMatch {
    proto::StringMatch {
        kind: Some(kind),
        ignore_case: false,
    }
}
