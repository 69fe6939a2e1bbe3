//! `remoractl route check`: where a workload's sidecar would send a request, and why.
//!
//! The manifests are read with the control plane's own reader and the workload's snapshot cut
//! as the control plane cuts it (its namespace and labels choose consumer routes, `exportTo`,
//! `sourceLabels`); the route is chosen by the sidecar's own code (`remora_api::route`). Pass
//! the state directory's `cluster` directory of a running `remoractl local up` as a second
//! `--config-dir` to see the endpoints its pods provide.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use http::{header, HeaderMap, HeaderValue, Method, Uri};
use remora_api::{
    route::{Abort, RetryPolicy, Route, RouteTable, Target},
    Logical, ServiceKey, ServicePort, Snapshot,
};
use remora_injector::config::{read_directories, well_known::CLUSTER_DOMAIN};

use crate::args;

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Route one request as the calling workload's sidecar would, and explain it.
    Check(Check),
}

#[derive(Args)]
pub struct Check {
    /// Directory of manifests, read as the control plane reads it (repeatable).
    #[arg(long = "config-dir", required = true)]
    config_dirs: Vec<PathBuf>,
    /// The calling workload, NAMESPACE/NAME of a Deployment or a Pod.
    #[arg(long)]
    from: String,
    /// The request's URL, e.g. http://reviews.bookinfo:9080/path (a Service name, short or
    /// fully qualified, or its cluster IP).
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header, NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

pub fn run(command: RouteCommand) -> anyhow::Result<()> {
    match command {
        RouteCommand::Check(check) => {
            print!("{}", check.run()?);
            Ok(())
        }
    }
}

impl Check {
    /// The explanation: the route on its first line, then what it does.
    fn run(&self) -> anyhow::Result<String> {
        args::readable(&self.config_dirs)?;
        let (namespace, name) = args::workload("--from", &self.from)?;
        let uri: Uri = self
            .url
            .parse()
            .with_context(|| format!("--url {:?}: not a URL", self.url))?;
        let host = uri
            .host()
            .with_context(|| format!("--url {:?}: names no host", self.url))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            bail!(
                "--url {:?}: the sidecar routes plain http:// requests",
                self.url
            );
        }
        let port = uri.port_u16().unwrap_or(80);
        let method = Method::from_bytes(self.method.as_bytes())
            .with_context(|| format!("--method {:?}: not an HTTP method", self.method))?;
        let mut headers = HeaderMap::new();
        let authority = uri.authority().map_or(host, |a| a.as_str());
        headers.insert(
            header::HOST,
            HeaderValue::try_from(authority).context("--url: the host is not a header value")?,
        );
        for text in &self.headers {
            let (name, value) = args::header(text)?;
            headers.append(name, value);
        }
        let catalog = read_directories(&self.config_dirs);
        let source = catalog
            .workload_snapshot(namespace, name)
            .with_context(|| {
                format!(
                    "--from {}: no Deployment or Pod {namespace}/{name}",
                    self.from
                )
            })?;
        let snapshot = Snapshot::try_from(source)
            .context("the workload's sidecar would refuse its snapshot")?;
        let port = destination(&snapshot, host, port, namespace).with_context(|| {
            format!(
                "--url {:?}: no Service port {host}:{port} in the mesh",
                self.url
            )
        })?;
        let path_only: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .context("--url: not a request path")?;
        Ok(explain(&port, &method, &path_only, &headers))
    }
}

/// The Service port `host:port` names for a client in `namespace`: a cluster IP, or a Service
/// name as the pod's DNS search path completes it.
fn destination(
    snapshot: &Snapshot,
    host: &str,
    port: u16,
    namespace: &str,
) -> Option<std::sync::Arc<ServicePort>> {
    if let Ok(ip) = host.parse() {
        return match snapshot.lookup(std::net::SocketAddr::new(ip, port)) {
            Logical::Service(port) => Some(port),
            _ => None,
        };
    }
    let suffix = format!("svc.{CLUSTER_DOMAIN}");
    let candidates = [
        format!("{host}.{namespace}.{suffix}"),
        format!("{host}.{suffix}"),
        format!("{host}.{CLUSTER_DOMAIN}"),
        host.trim_end_matches('.').to_owned(),
    ];
    candidates.into_iter().find_map(|hostname| {
        snapshot
            .service(&ServiceKey {
                hostname: hostname.into(),
                port,
            })
            .cloned()
    })
}

fn explain(port: &ServicePort, method: &Method, uri: &Uri, headers: &HeaderMap) -> String {
    let mut out = String::new();
    let table = &port.routes;
    let Some(selected) = table.select(method, uri, headers) else {
        let _ = writeln!(
            out,
            "no route matches: 404 (NR)\nroutes tried ({}):",
            table.routes().len()
        );
        for route in table.routes() {
            let _ = writeln!(out, "  {}", route.id);
        }
        return out;
    };
    let route = selected.route;
    let matched = selected
        .matched
        .and_then(|m| route.matches.iter().position(|c| std::ptr::eq(c, m)))
        .map(|i| format!(" (matches[{i}])"))
        .unwrap_or_default();
    let _ = writeln!(out, "route: {}{matched}", route.id);
    if let Some(fault) = &route.fault {
        if let Some((delay, percent)) = fault.delay {
            let _ = writeln!(
                out,
                "fault: delay {delay:?} for {}% of requests",
                percent.as_percent()
            );
        }
        if let Some((abort, percent)) = fault.abort {
            let what = match abort {
                Abort::Http(status) => format!("status {}", status.as_u16()),
                Abort::Grpc(code) => format!("grpc-status {code}"),
            };
            let _ = writeln!(
                out,
                "fault: abort with {what} for {}% of requests",
                percent.as_percent()
            );
        }
    }
    if let Some(redirect) = &route.redirect {
        let authority = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let location = redirect.location(
            "http",
            authority,
            uri.path(),
            uri.query(),
            selected.matched_prefix(),
        );
        let _ = writeln!(out, "redirect: {} to {location}", redirect.status.as_u16());
        return out;
    }
    if let Some(rewrite) = &route.rewrite {
        if let Some(authority) = &rewrite.authority {
            let _ = writeln!(
                out,
                "rewrite: authority {}",
                authority.to_str().unwrap_or("?")
            );
        }
        if let Some(path) = rewrite.path(uri.path(), uri.query(), selected.matched_prefix()) {
            let _ = writeln!(out, "rewrite: path {path}");
        }
    }
    backends(&mut out, route, table);
    let _ = writeln!(
        out,
        "timeout: {}",
        route
            .timeout
            .map_or("none".to_owned(), |t| format!("{t:?}"))
    );
    retries(&mut out, &route.retry);
    for mirror in &route.mirrors {
        let target = mirror
            .backend
            .map_or("(unresolved: not sent)".to_owned(), |i| {
                table.backends()[i].key.to_string()
            });
        let _ = writeln!(
            out,
            "mirror: {target}, {}% of requests",
            mirror.percent.as_percent()
        );
    }
    out
}

fn backends(out: &mut String, route: &Route, table: &RouteTable) {
    let total: u64 = route.backends.iter().map(|b| u64::from(b.weight)).sum();
    let _ = writeln!(out, "backends:");
    if total == 0 {
        let _ = writeln!(out, "  none with weight: 500");
    }
    for share in &route.backends {
        let percent = if total == 0 {
            0.0
        } else {
            f64::from(share.weight) * 100.0 / total as f64
        };
        match &share.target {
            Target::Backend(i) => {
                let backend = &table.backends()[*i];
                let endpoints: Vec<String> = backend
                    .endpoints
                    .iter()
                    .map(|e| match &e.workload {
                        Some(w) => format!("{} ({}/{})", e.address, w.namespace, w.name),
                        None => e.address.to_string(),
                    })
                    .collect();
                let endpoints = if endpoints.is_empty() {
                    "none ready (503)".to_owned()
                } else {
                    endpoints.join(", ")
                };
                let _ = writeln!(
                    out,
                    "  {percent:.0}% {} [{:?}]: {endpoints}",
                    backend.key, backend.policy.load_balancer
                );
            }
            Target::Unresolved { status, reason } => {
                let _ = writeln!(
                    out,
                    "  {percent:.0}% unresolved ({}): {reason}",
                    status.as_u16()
                );
            }
        }
    }
}

fn retries(out: &mut String, retry: &RetryPolicy) {
    if retry.attempts == 0 {
        let _ = writeln!(out, "retries: none");
        return;
    }
    let mut on: Vec<String> = retry.conditions().iter().map(|c| c.to_string()).collect();
    on.extend(retry.codes().iter().map(u16::to_string));
    let _ = writeln!(
        out,
        "retries: {} on {}; per try timeout {}",
        retry.attempts,
        on.join(","),
        retry
            .per_try_timeout
            .map_or("none".to_owned(), |t| format!("{t:?}"))
    );
}

#[cfg(test)]
mod tests;
