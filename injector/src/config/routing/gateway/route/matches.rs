//! A rule's `matches`: HTTPRoute path, header, query parameter and method matches, and GRPCRoute
//! method matches spelled as the paths gRPC requests carry, each into the sidecar's
//! `HttpMatch`.

use remora_api::proto::config::{self as proto, string_match::Kind};

use super::{string_match, Reader};
use crate::config::routing::gateway::{
    spec::{GrpcMatchSpec, GrpcMethodSpec, HttpMatchSpec, NamedMatchSpec, PathMatchSpec},
    syntax::{is_grpc_method, is_grpc_service, is_token, path_problem},
};

const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Reader<'_> {
    pub(super) fn http_match(&mut self, field: &str, spec: HttpMatchSpec) -> proto::HttpMatch {
        let path = match spec.path {
            None => every_path().path,
            Some(path) => self.path_match(&format!("{field}.path"), path),
        };
        let headers = self.named_matches(
            &format!("{field}.headers"),
            spec.headers.unwrap_or_default(),
            true,
        );
        let query_params = self.named_matches(
            &format!("{field}.queryParams"),
            spec.query_params.unwrap_or_default(),
            false,
        );
        let method = match spec.method {
            None => String::new(),
            Some(method) if HTTP_METHODS.contains(&method.as_str()) => method,
            Some(other) => {
                let known = HTTP_METHODS.join(", ");
                self.problem(
                    format!("{field}.method"),
                    format!("{other:?} is not one of {known}"),
                );
                String::new()
            }
        };
        proto::HttpMatch {
            path,
            headers,
            query_params,
            method,
            authority: None,
        }
    }

    fn path_match(&mut self, field: &str, spec: PathMatchSpec) -> Option<proto::StringMatch> {
        let value = spec.value.unwrap_or_else(|| "/".to_owned());
        let kind = spec.kind.as_deref().unwrap_or("PathPrefix");
        let kind = match kind {
            "Exact" | "PathPrefix" => {
                if let Some(problem) = path_problem(&value) {
                    self.problem(format!("{field}.value"), format!("{value:?} {problem}"));
                }
                if kind == "Exact" {
                    Kind::Exact(value)
                } else {
                    // "When specified, a trailing `/` is ignored"; Istio drops it before
                    // ranking the prefix by its length.
                    let trimmed = value.trim_end_matches('/');
                    Kind::PathPrefix(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
                }
            }
            "RegularExpression" => {
                self.check_regex(&format!("{field}.value"), &value);
                Kind::Regex(value)
            }
            other => {
                self.problem(
                    format!("{field}.type"),
                    format!("{other:?} is not one of Exact, PathPrefix, RegularExpression"),
                );
                return None;
            }
        };
        Some(string_match(kind))
    }

    /// Header (`header`) or query parameter matches. Header names are compared without case,
    /// so they are lowercased, and of names equal but for case only the first counts (Gateway
    /// API); a name listed twice exactly is refused, as the API server refuses it (a map list).
    fn named_matches(
        &mut self,
        field: &str,
        list: Vec<NamedMatchSpec>,
        header: bool,
    ) -> Vec<proto::HeaderMatch> {
        let mut written: Vec<String> = Vec::new();
        let mut kept: Vec<proto::HeaderMatch> = Vec::new();
        for (k, spec) in list.into_iter().enumerate() {
            let item = format!("{field}[{k}]");
            if !is_token(&spec.name) {
                let what = if header {
                    "a header"
                } else {
                    "a query parameter"
                };
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is not {what} name", spec.name),
                );
                continue;
            }
            if written.contains(&spec.name) {
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is listed twice", spec.name),
                );
                continue;
            }
            written.push(spec.name.clone());
            if spec.value.is_empty() {
                self.problem(format!("{item}.value"), "required");
            }
            let value = match spec.kind.as_deref().unwrap_or("Exact") {
                "Exact" => Kind::Exact(spec.value),
                "RegularExpression" => {
                    self.check_regex(&format!("{item}.value"), &spec.value);
                    Kind::Regex(spec.value)
                }
                other => {
                    self.problem(
                        format!("{item}.type"),
                        format!("{other:?} is not one of Exact, RegularExpression"),
                    );
                    continue;
                }
            };
            let name = if header {
                spec.name.to_ascii_lowercase()
            } else {
                spec.name
            };
            if kept.iter().any(|m| m.name == name) {
                continue;
            }
            kept.push(proto::HeaderMatch {
                name,
                value: Some(string_match(value)),
                invert: false,
            });
        }
        kept
    }

    pub(super) fn grpc_match(&mut self, field: &str, spec: GrpcMatchSpec) -> proto::HttpMatch {
        let path = spec
            .method
            .and_then(|method| self.grpc_path(&format!("{field}.method"), method));
        let headers = self.named_matches(
            &format!("{field}.headers"),
            spec.headers.unwrap_or_default(),
            true,
        );
        proto::HttpMatch {
            path,
            headers,
            ..proto::HttpMatch::default()
        }
    }

    /// The path a gRPC method match takes, `/<service>/<method>`, as Istio spells it
    /// (`createGRPCURIMatch`): both exact, the exact path; a service alone, the prefix
    /// `/<service>/`; otherwise a regular expression over the two segments (each of a
    /// user's expressions grouped, so an alternation stays inside its segment).
    fn grpc_path(&mut self, field: &str, spec: GrpcMethodSpec) -> Option<proto::StringMatch> {
        // "If left empty or omitted, will match any service" (and method).
        let service = spec.service.filter(|s| !s.is_empty());
        let method = spec.method.filter(|m| !m.is_empty());
        if service.is_none() && method.is_none() {
            self.problem(field, "one or both of service and method must be set");
            return None;
        }
        let kind = match spec.kind.as_deref().unwrap_or("Exact") {
            "Exact" => {
                if let Some(service) = service.as_deref().filter(|s| !is_grpc_service(s)) {
                    self.problem(
                        format!("{field}.service"),
                        format!("{service:?} is not a gRPC service name"),
                    );
                }
                if let Some(method) = method.as_deref().filter(|m| !is_grpc_method(m)) {
                    self.problem(
                        format!("{field}.method"),
                        format!("{method:?} is not a gRPC method name"),
                    );
                }
                match (service, method) {
                    (Some(service), Some(method)) => Kind::Exact(format!("/{service}/{method}")),
                    (Some(service), None) => Kind::Prefix(format!("/{service}/")),
                    (None, method) => Kind::Regex(format!(
                        "/[^/]+/{}",
                        regex::escape(method.as_deref().unwrap_or_default())
                    )),
                }
            }
            "RegularExpression" => {
                if let Some(service) = &service {
                    self.check_regex(&format!("{field}.service"), service);
                }
                if let Some(method) = &method {
                    self.check_regex(&format!("{field}.method"), method);
                }
                let service = service.map_or_else(|| "[^/]+".to_owned(), |s| format!("(?:{s})"));
                let method = method.map_or_else(|| ".+".to_owned(), |m| format!("(?:{m})"));
                Kind::Regex(format!("/{service}/{method}"))
            }
            other => {
                self.problem(
                    format!("{field}.type"),
                    format!("{other:?} is not one of Exact, RegularExpression"),
                );
                return None;
            }
        };
        Some(string_match(kind))
    }

    /// A regular expression must compile as the sidecar compiles it: RE2 syntax, matching the
    /// whole value.
    fn check_regex(&mut self, field: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
            // The parser's message draws the pattern over several lines; its last says why.
            let text = e.to_string();
            let reason = text.lines().last().unwrap_or_default();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            self.problem(
                field,
                format!("{pattern:?} is not a regular expression: {reason}"),
            );
        }
    }
}

/// The match of a rule that lists none, and the path of a match that names none: the CRD's
/// default, `PathPrefix /`.
pub(super) fn every_path() -> proto::HttpMatch {
    proto::HttpMatch {
        path: Some(string_match(Kind::PathPrefix("/".to_owned()))),
        ..proto::HttpMatch::default()
    }
}
