//! The order in which the routes of a Service port are tried: the precedence the Gateway API
//! spec gives, as Istio applies it when it merges the routes of several objects into one table.

use std::cmp::Reverse;

use k8s_openapi::jiff::Timestamp;
use remora_api::proto::config::string_match::Kind;

use super::{Entry, Route};

/// Where an entry goes in a table, smallest first. Istio merges a Service's routes and sorts
/// them with `sortHTTPRoutes`, a stable sort over routes already ordered by
/// `sortRoutesByCreationTime`, each route's rules and matches in order; the fields below are
/// those steps in turn.
///
/// For HTTPRoute these are the spec's steps (exact path, longest prefix, method, most headers,
/// most query parameters, oldest route, `namespace/name`, rule order); regular expressions,
/// whose place the spec leaves to implementations, come after prefixes as in Istio. For
/// GRPCRoute the spec orders by the characters of the matched service, then of the method,
/// then the number of headers; over the paths a gRPC match becomes (below) the steps here give
/// that order for any two exact matches that can take the same request.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Precedence<'r> {
    /// 3 exact, 2 prefix (either kind), 1 regex, 0 none (a GRPCRoute match without a method).
    path_kind: Reverse<u8>,
    /// Within a kind, the longer value first, in characters.
    path_length: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    /// The oldest route first; one without a timestamp (a manifest from a file) after every
    /// dated one, as the security policies order them.
    undated: bool,
    created: Option<Timestamp>,
    namespace: &'r str,
    name: &'r str,
    rule: u32,
    match_index: u32,
}

pub(super) fn precedence<'r>(route: &'r Route, entry: &'r Entry) -> Precedence<'r> {
    let matched = entry.route.matches.first();
    let (path_kind, path_length) = match matched
        .and_then(|m| m.path.as_ref())
        .and_then(|p| p.kind.as_ref())
    {
        Some(Kind::Exact(value)) => (3, value.chars().count()),
        Some(Kind::Prefix(value) | Kind::PathPrefix(value)) => (2, value.chars().count()),
        Some(Kind::Regex(value)) => (1, value.chars().count()),
        None => (0, 0),
    };
    Precedence {
        path_kind: Reverse(path_kind),
        path_length: Reverse(path_length),
        method: Reverse(matched.is_some_and(|m| !m.method.is_empty())),
        headers: Reverse(matched.map_or(0, |m| m.headers.len())),
        query_params: Reverse(matched.map_or(0, |m| m.query_params.len())),
        undated: route.created.is_none(),
        created: route.created,
        namespace: &route.namespace,
        name: &route.name,
        rule: entry.route.rule,
        match_index: entry.match_index,
    }
}
