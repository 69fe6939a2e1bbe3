//! `remoractl authz check`: what a workload's sidecar would decide for a request, and why.
//!
//! The manifests are read with the control plane's own reader and the workload's policies
//! selected as it selects them; the decision is the sidecar's own code (`remora_api`), so the
//! answer is the sidecar's. Istio's tooling can say which policies apply; this also says which
//! one decided, with which rule.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use http::{header, HeaderValue, Method, Request};
use remora_api::{
    authz::{ConnectionFacts, Decision},
    proto::config as proto,
    Outcome, Snapshot, SpiffeId,
};
use remora_injector::config::read_directories;

use crate::args;

#[derive(Subcommand)]
pub enum AuthzCommand {
    /// Decide one request (or connection) as the workload's sidecar would, and explain it.
    Check(Check),
}

#[derive(Args)]
pub struct Check {
    /// Directory of manifests, read as the control plane reads it (repeatable).
    #[arg(long = "config-dir", required = true)]
    config_dirs: Vec<PathBuf>,
    /// The called workload, NAMESPACE/NAME of a Deployment or a Pod.
    #[arg(long)]
    to: String,
    /// The caller: its SPIFFE identity (spiffe://TD/ns/NS/sa/SA), or `plaintext`.
    #[arg(long)]
    from: String,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// The workload (container) port called; its first container port by default.
    #[arg(long)]
    port: Option<u16>,
    /// The Host header (default: the workload's name and port).
    #[arg(long)]
    host: Option<String>,
    /// A request header, NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// A JWT, sent as `Authorization: Bearer TOKEN`.
    #[arg(long)]
    jwt: Option<String>,
    /// The caller's address, for ipBlocks and source.ip rules.
    #[arg(long, default_value = "0.0.0.0")]
    source_ip: IpAddr,
    /// Decide a TCP connection (not HTTP) instead of a request.
    #[arg(long)]
    tcp: bool,
}

pub fn run(command: AuthzCommand) -> anyhow::Result<()> {
    match command {
        AuthzCommand::Check(check) => {
            print!("{}", check.run()?);
            Ok(())
        }
    }
}

impl Check {
    /// The explanation `check` prints: the verdict on its first line.
    fn run(&self) -> anyhow::Result<String> {
        args::readable(&self.config_dirs)?;
        let (namespace, name) = args::workload("--to", &self.to)?;
        let peer = match self.from.as_str() {
            "plaintext" => None,
            id => Some(id.parse::<SpiffeId>().with_context(|| {
                format!("--from {id:?}: expected spiffe://TD/ns/NS/sa/SA or plaintext")
            })?),
        };
        let catalog = read_directories(&self.config_dirs);
        let workload = catalog.workload(namespace, name).with_context(|| {
            let why = catalog
                .rejected
                .iter()
                .find(|r| r.object.contains(&format!(" {namespace}/{name} ")))
                .map(|r| format!(" (rejected: {})", r.reason))
                .unwrap_or_default();
            format!(
                "--to {}: no Deployment or Pod {namespace}/{name}{why}",
                self.to
            )
        })?;
        let port = match (self.port, workload.first_port) {
            (Some(port), _) | (None, Some(port)) => port,
            (None, None) => bail!("--port: {} declares no container port", self.to),
        };
        let snapshot = Snapshot::try_from(proto::Snapshot {
            mesh: Some(workload.mesh),
            security: Some(workload.security),
            ..Default::default()
        })
        .context("the workload's policies cannot be applied")?;
        let conn = ConnectionFacts {
            peer: peer.as_ref(),
            source: SocketAddr::new(self.source_ip, 0),
            destination: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            sni: None,
        };
        let security = &snapshot.security;
        let mut req = self.request(name, port)?;
        let outcome = if self.tcp {
            security.check_connection(&conn, true)
        } else {
            match security.check_connection(&conn, false) {
                Outcome::Allowed(_) => security.check_request(&snapshot.mesh, &conn, &mut req),
                refused => refused,
            }
        };
        let mtls = security.mtls.mode(port);
        let mut out = String::new();
        match &outcome {
            Outcome::Allowed(decision) => {
                out.push_str("ALLOW\n");
                match decision {
                    Some(decision) => explain(&mut out, decision),
                    None => {
                        out.push_str("by: no AuthorizationPolicy applies (allowed by default)\n")
                    }
                }
            }
            Outcome::Denied(decision) => {
                out.push_str("DENY\n");
                explain(&mut out, decision);
            }
            Outcome::MtlsRequired => {
                let policy = security.mtls.policy.as_deref().unwrap_or("-");
                let _ = writeln!(
                    out,
                    "DENY\nby: PeerAuthentication {policy}: {} on port {port} refuses callers without mesh mTLS (the connection is closed)",
                    mtls.name()
                );
            }
            Outcome::JwtInvalid(reason) => {
                let _ = writeln!(
                    out,
                    "DENY\nby: RequestAuthentication: Jwt verification fails (401): {reason}"
                );
            }
            Outcome::InvalidPath(error) => {
                let _ = writeln!(out, "DENY\nby: path normalization (400): {error}");
            }
        }
        Ok(out)
    }

    /// The request `--method`, `--path`, `--header`, `--jwt` describe.
    fn request(&self, name: &str, port: u16) -> anyhow::Result<Request<()>> {
        if !self.path.starts_with('/') {
            bail!("--path {:?}: a request path starts with /", self.path);
        }
        let method = Method::from_bytes(self.method.as_bytes())
            .with_context(|| format!("--method {:?}: not an HTTP method", self.method))?;
        let mut req = Request::builder()
            .method(method)
            .uri(&self.path)
            .body(())
            .with_context(|| format!("--path {:?}: not a request path", self.path))?;
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| format!("{name}:{port}"));
        let headers = req.headers_mut();
        headers.insert(
            header::HOST,
            HeaderValue::try_from(host.as_str()).with_context(|| format!("--host {host:?}"))?,
        );
        for text in &self.headers {
            let (name, value) = args::header(text)?;
            headers.append(name, value);
        }
        if let Some(jwt) = &self.jwt {
            let value = HeaderValue::try_from(format!("Bearer {jwt}"))
                .context("--jwt: not a header value")?;
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(req)
    }
}

fn explain(out: &mut String, decision: &Decision<'_>) {
    let _ = writeln!(out, "by: {}", decision.by);
    for matched in &decision.dry_run {
        let _ = writeln!(
            out,
            "dry-run: {} ({matched}; not enforced)",
            matched.policy.name
        );
    }
    for matched in &decision.audit {
        let _ = writeln!(out, "audit: {} ({matched})", matched.policy.name);
    }
}

#[cfg(test)]
mod tests;
