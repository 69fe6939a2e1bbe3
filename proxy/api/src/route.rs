//! HTTP routing for the client sidecar: a Service port's route table (from Gateway API
//! `HTTPRoute`/`GRPCRoute` or Istio `VirtualService`), its backends (a Service port, or a
//! `DestinationRule` subset of it) and their policies, compiled once per snapshot.
//!
//! The decisions here are pure, so `remoractl route check` asks exactly what the sidecar asks:
//! [`RouteTable::select`] picks the route for a request, [`Route::split`] the backend for a
//! random draw, [`RetryPolicy::retries`] whether a try is retried. Anything that needs state
//! across requests (balancing, ejections, budgets) belongs to the proxy.

mod cors;
mod filters;
mod matching;
mod policy;
#[cfg(test)]
mod tests;

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderMap, Method, StatusCode, Uri};

use crate::{
    endpoint::{DnsEndpoints, Endpoint, ServiceKey},
    proto::config as proto,
};

pub use cors::{Cors, CorsAction};
pub use filters::{HeaderOps, MatchedPrefix, Redirect, Rewrite};
pub use matching::{RequestMatch, StringCondition};
pub use policy::{
    grpc_code, Abort, Attempt, DestinationPolicy, Fault, LoadBalancer, Origination, Outlier,
    Percent, PoolLimits, RetryPolicy, TlsMode,
};

/// Which kind of object a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    HttpRoute,
    GrpcRoute,
    VirtualService,
    /// No route attached: the port's own endpoints.
    Default,
}

impl RouteKind {
    fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "HTTPRoute" => RouteKind::HttpRoute,
            "GRPCRoute" => RouteKind::GrpcRoute,
            "VirtualService" => RouteKind::VirtualService,
            _ => return None,
        })
    }

    /// The answer for a backend that cannot be resolved: Gateway API says 500; Envoy, behind
    /// a VirtualService, answers a missing cluster or subset with 503 (`NC`).
    fn unresolved_status(self) -> StatusCode {
        match self {
            RouteKind::VirtualService | RouteKind::Default => StatusCode::SERVICE_UNAVAILABLE,
            RouteKind::HttpRoute | RouteKind::GrpcRoute => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Names a route: the object and its rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteId {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    pub rule: u32,
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RouteKind::HttpRoute => "HTTPRoute",
            RouteKind::GrpcRoute => "GRPCRoute",
            RouteKind::VirtualService => "VirtualService",
            RouteKind::Default => return f.write_str("default route"),
        };
        let field = if self.kind == RouteKind::VirtualService {
            "http"
        } else {
            "rules"
        };
        write!(
            f,
            "{kind} {}/{} {field}[{}]",
            self.namespace, self.name, self.rule
        )
    }
}

/// Names a backend across snapshots: a Service port and, optionally, a subset of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BackendKey {
    pub service: ServiceKey,
    pub subset: Option<Arc<str>>,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subset {
            Some(subset) => write!(f, "{} (subset {subset})", self.service),
            None => write!(f, "{}", self.service),
        }
    }
}

/// A backend and its ready endpoints (a subset's: those whose workload has its labels).
#[derive(Debug, PartialEq, Eq)]
pub struct Backend {
    pub key: BackendKey,
    pub endpoints: Vec<Endpoint>,
    /// Names whose addresses are endpoints too (`endpoints` is empty then).
    pub dns: Option<Arc<DnsEndpoints>>,
    pub policy: DestinationPolicy,
}

/// Where a share of a route's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Index into the table's [`RouteTable::backends`].
    Backend(usize),
    /// Nothing to send to: answered with `status`, and why.
    Unresolved { status: StatusCode, reason: String },
}

#[derive(Clone, Debug)]
pub struct WeightedBackend {
    pub target: Target,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Clone, Debug)]
pub struct Mirror {
    /// `None`: the mirror's backend is unknown, nothing is copied.
    pub backend: Option<usize>,
    pub percent: Percent,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: RouteId,
    /// ORed; empty matches every request.
    pub matches: Vec<RequestMatch>,
    pub backends: Vec<WeightedBackend>,
    total_weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
}

/// What a route answers a request with when no backend can take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoBackend {
    pub status: StatusCode,
    pub reason: String,
}

impl Route {
    /// The share of traffic a draw of `random` falls in: weights are proportional, a weight of
    /// 0 gets nothing, no backends (or all weights 0) is a 500.
    pub fn split(&self, random: u32) -> Result<&WeightedBackend, NoBackend> {
        split(&self.id, &self.backends, self.total_weight, random)
    }
}

fn split<'r>(
    id: &RouteId,
    backends: &'r [WeightedBackend],
    total_weight: u32,
    random: u32,
) -> Result<&'r WeightedBackend, NoBackend> {
    let no_backend = |reason: String| NoBackend {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reason,
    };
    if total_weight == 0 {
        return Err(no_backend(format!("{id} has no backend with weight")));
    }
    let mut draw = random % total_weight;
    for backend in backends {
        if draw < backend.weight {
            return Ok(backend);
        }
        draw -= backend.weight;
    }
    Err(no_backend(format!("{id}: weights do not add up")))
}

/// A compiled `tcp` or `tls` route.
#[derive(Debug)]
pub struct TcpRoute {
    pub id: RouteId,
    /// Server names (lowercase); `*.example.com` kept as `.example.com`. Empty: any connection.
    sni: Vec<String>,
    pub backends: Vec<WeightedBackend>,
    total_weight: u32,
}

impl TcpRoute {
    /// Whether a connection whose ClientHello names `sni` (if any) takes this route.
    pub fn matches(&self, sni: Option<&str>) -> bool {
        if self.sni.is_empty() {
            return true;
        }
        let Some(name) = sni else {
            return false;
        };
        self.sni.iter().any(|host| match host.strip_prefix('.') {
            Some(_) => name.len() > host.len() && ends_with_ignore_case(name, host),
            None => name.eq_ignore_ascii_case(host),
        })
    }

    /// The backend a draw of `random` falls in, as [`Route::split`].
    pub fn split(&self, random: u32) -> Result<&WeightedBackend, NoBackend> {
        split(&self.id, &self.backends, self.total_weight, random)
    }
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name
            .get(name.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// A Service port's routes, in the order they are tried, and every backend they name.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    tcp: Vec<TcpRoute>,
    backends: Vec<Arc<Backend>>,
    /// Routes came from an object (a request that matches none gets 404), rather than being
    /// the port's default.
    attached: bool,
}

/// The route a request takes, and the match that took it.
pub struct Selected<'t> {
    pub route: &'t Route,
    pub matched: Option<&'t RequestMatch>,
}

impl Selected<'_> {
    /// The prefix the path matched, for prefix rewrites and redirects.
    pub fn matched_prefix(&self) -> MatchedPrefix<'_> {
        self.matched
            .and_then(|m| m.path.as_ref())
            .and_then(StringCondition::prefix)
    }
}

impl RouteTable {
    /// A table with no route at all: every request gets 404. Stands in for a table that did
    /// not compile, in a snapshot that is refused anyway.
    pub(crate) fn empty() -> Self {
        Self {
            routes: Vec::new(),
            tcp: Vec::new(),
            backends: Vec::new(),
            attached: true,
        }
    }

    /// The first route whose matches accept the request; `None` (404) when routes are attached
    /// and none does.
    pub fn select(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Selected<'_>> {
        self.routes.iter().find_map(|route| {
            if route.matches.is_empty() {
                return Some(Selected {
                    route,
                    matched: None,
                });
            }
            route
                .matches
                .iter()
                .find(|m| m.matches(method, uri, headers))
                .map(|matched| Selected {
                    route,
                    matched: Some(matched),
                })
        })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first `tcp`/`tls` route a connection whose ClientHello names `sni` takes; `None`:
    /// the port's own endpoints.
    pub fn select_tcp(&self, sni: Option<&str>) -> Option<&TcpRoute> {
        self.tcp.iter().find(|route| route.matches(sni))
    }

    pub fn tcp_routes(&self) -> &[TcpRoute] {
        &self.tcp
    }

    /// Every backend the routes send or mirror to, indexed by [`Target::Backend`] and
    /// [`Mirror::backend`].
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn is_attached(&self) -> bool {
        self.attached
    }
}

/// Finds a backend by host, port and subset while a snapshot is compiled.
pub(crate) trait Resolve {
    /// `Err` says why it cannot be resolved.
    fn resolve(&mut self, host: &str, port: u16, subset: &str) -> Result<Arc<Backend>, String>;
}

/// Compiles the table of Service port `own` from `source`; no routes gives the default route
/// to `own`'s endpoints.
pub(crate) fn compile_table(
    own: &ServiceKey,
    source: &[proto::HttpRoute],
    tcp_source: &[proto::TcpRoute],
    resolver: &mut dyn Resolve,
) -> Result<RouteTable, Vec<String>> {
    let mut backends: Vec<Arc<Backend>> = Vec::new();
    let mut index_of =
        |backend: Arc<Backend>| match backends.iter().position(|b| b.key == backend.key) {
            Some(i) => i,
            None => {
                backends.push(backend);
                backends.len() - 1
            }
        };
    let mut problems = Vec::new();
    let mut tcp = Vec::with_capacity(tcp_source.len());
    for (r, route) in tcp_source.iter().enumerate() {
        if route.kind != "VirtualService" {
            problems.push(format!(
                "tcpRoutes[{r}].kind: {:?} is not VirtualService",
                route.kind
            ));
            continue;
        }
        let sni = route
            .sni_hosts
            .iter()
            .map(|host| {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => suffix.to_owned(),
                    None => host,
                }
            })
            .collect();
        let weighted: Vec<WeightedBackend> = route
            .backends
            .iter()
            .map(|backend| WeightedBackend {
                target: match resolve(resolver, &backend.host, backend.port, &backend.subset) {
                    Ok(found) => Target::Backend(index_of(found)),
                    Err(reason) => Target::Unresolved {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        reason,
                    },
                },
                weight: backend.weight,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            })
            .collect();
        let Some(total_weight) = weighted
            .iter()
            .try_fold(0u32, |sum, b| sum.checked_add(b.weight))
        else {
            problems.push(format!(
                "tcpRoutes[{r}].backends: weights add up to more than 2^32"
            ));
            continue;
        };
        tcp.push(TcpRoute {
            id: RouteId {
                kind: RouteKind::VirtualService,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                rule: route.rule,
            },
            sni,
            backends: weighted,
            total_weight,
        });
    }
    if source.is_empty() {
        let target = match resolver.resolve(&own.hostname, own.port, "") {
            Ok(backend) => Target::Backend(index_of(backend)),
            Err(reason) => Target::Unresolved {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason,
            },
        };
        let route = Route {
            id: RouteId {
                kind: RouteKind::Default,
                namespace: String::new(),
                name: String::new(),
                rule: 0,
            },
            matches: Vec::new(),
            backends: vec![WeightedBackend {
                target,
                weight: 1,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }],
            total_weight: 1,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            redirect: None,
            rewrite: None,
            mirrors: Vec::new(),
            timeout: None,
            retry: RetryPolicy::default(),
            fault: None,
            cors: None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        return Ok(RouteTable {
            routes: vec![route],
            tcp,
            backends,
            attached: false,
        });
    }
    let mut routes = Vec::with_capacity(source.len());
    for (r, route) in source.iter().enumerate() {
        let mut problem =
            |field: &str, e: String| problems.push(format!("httpRoutes[{r}].{field}{e}"));
        let Some(kind) = RouteKind::parse(&route.kind) else {
            problem(
                "kind: ",
                format!(
                    "{:?} is not HTTPRoute, GRPCRoute or VirtualService",
                    route.kind
                ),
            );
            continue;
        };
        let mut matches = Vec::with_capacity(route.matches.len());
        for (m, source) in route.matches.iter().enumerate() {
            match RequestMatch::compile(source) {
                Ok(compiled) => matches.push(compiled),
                Err(found) => found
                    .into_iter()
                    .for_each(|e| problem(&format!("matches[{m}]."), e)),
            }
        }
        let mut weighted = Vec::with_capacity(route.backends.len());
        for (b, backend) in route.backends.iter().enumerate() {
            let target = match resolve(resolver, &backend.host, backend.port, &backend.subset) {
                Ok(found) => Target::Backend(index_of(found)),
                Err(reason) => Target::Unresolved {
                    status: kind.unresolved_status(),
                    reason,
                },
            };
            let ops = |field: &str,
                       ops: Option<&proto::HeaderOps>,
                       problem: &mut dyn FnMut(&str, String)| {
                HeaderOps::compile(ops).unwrap_or_else(|found| {
                    found
                        .into_iter()
                        .for_each(|e| problem(&format!("backends[{b}].{field}."), e));
                    HeaderOps::default()
                })
            };
            weighted.push(WeightedBackend {
                target,
                weight: backend.weight,
                request_headers: ops(
                    "requestHeaders",
                    backend.request_headers.as_ref(),
                    &mut problem,
                ),
                response_headers: ops(
                    "responseHeaders",
                    backend.response_headers.as_ref(),
                    &mut problem,
                ),
            });
        }
        let total_weight = weighted
            .iter()
            .try_fold(0u32, |sum, b| sum.checked_add(b.weight));
        let Some(total_weight) = total_weight else {
            problem("backends: ", "weights add up to more than 2^32".into());
            continue;
        };
        let mut ops = |field: &str, ops: Option<&proto::HeaderOps>| {
            HeaderOps::compile(ops).unwrap_or_else(|found| {
                found
                    .into_iter()
                    .for_each(|e| problem(&format!("{field}."), e));
                HeaderOps::default()
            })
        };
        let request_headers = ops("requestHeaders", route.request_headers.as_ref());
        let response_headers = ops("responseHeaders", route.response_headers.as_ref());
        let redirect = route.redirect.as_ref().and_then(|r| {
            Redirect::compile(r)
                .map_err(|e| problem("redirect.", e))
                .ok()
        });
        let rewrite = route
            .rewrite
            .as_ref()
            .and_then(|r| Rewrite::compile(r).map_err(|e| problem("rewrite.", e)).ok());
        let mirrors = route
            .mirrors
            .iter()
            .enumerate()
            .filter_map(|(i, mirror)| {
                let percent = Percent::compile(mirror.percent)
                    .map_err(|e| problem(&format!("mirrors[{i}].percent: "), e))
                    .ok()?;
                let backend = resolve(resolver, &mirror.host, mirror.port, &mirror.subset)
                    .ok()
                    .map(&mut index_of);
                Some(Mirror { backend, percent })
            })
            .collect();
        let retry = RetryPolicy::compile(route.retry.as_ref()).unwrap_or_else(|found| {
            found.into_iter().for_each(|e| problem("retry.", e));
            RetryPolicy::default()
        });
        let fault = route.fault.as_ref().and_then(|f| {
            Fault::compile(f)
                .map_err(|found| found.into_iter().for_each(|e| problem("fault.", e)))
                .ok()
        });
        let cors = route.cors.as_ref().and_then(|c| {
            Cors::compile(c)
                .map_err(|found| found.into_iter().for_each(|e| problem("cors.", e)))
                .ok()
        });
        routes.push(Route {
            id: RouteId {
                kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                rule: route.rule,
            },
            matches,
            backends: weighted,
            total_weight,
            request_headers,
            response_headers,
            redirect,
            rewrite,
            mirrors,
            timeout: policy::millis(route.timeout_ms),
            retry,
            fault,
            cors,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(RouteTable {
        routes,
        tcp,
        backends,
        attached: true,
    })
}

fn resolve(
    resolver: &mut dyn Resolve,
    host: &str,
    port: u32,
    subset: &str,
) -> Result<Arc<Backend>, String> {
    if host.is_empty() {
        return Err("the backend cannot be resolved".into());
    }
    let port = u16::try_from(port).map_err(|_| format!("{port} is not a port"))?;
    resolver.resolve(host, port, subset)
}
