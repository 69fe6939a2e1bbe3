//! The sidecar's side of the security policies: gathers what `remora_api`'s pure decisions need
//! from a connection or a request, asks them, and acts on the answer (a typed refusal for
//! `respond`, the counters and log lines that explain it). Both inbound hooks call in here, so
//! every door enforces the same policies the same way.

use std::borrow::Cow;

use http::{header, uri::PathAndQuery, Request, Uri};
use remora_api::{
    authz::{self, ConnectionFacts, Decision, RequestFacts, Verdict},
    jwt::JwtOutcome,
    peer_authn::MtlsMode,
    Snapshot,
};

use crate::{detect::Protocol, metrics::Metrics, respond::RequestError};

use super::InboundConn;

impl InboundConn {
    fn facts(&self) -> ConnectionFacts<'_> {
        ConnectionFacts {
            peer: self.tls.peer(),
            source: self.client,
            destination: self.app,
            sni: self.sni.as_deref(),
        }
    }
}

/// Whether `conn` may reach the app at all: its PeerAuthentication mode, and for anything that
/// is not HTTP (decided per request instead), the AuthorizationPolicies.
pub(super) fn connection(
    snapshot: &Snapshot,
    metrics: &Metrics,
    conn: &InboundConn,
) -> Result<(), RequestError> {
    let security = &snapshot.security;
    let port = conn.app.port();
    if security.mtls.mode(port) == MtlsMode::Strict && conn.tls.peer().is_none() {
        tracing::debug!(
            client = %conn.client,
            port,
            policy = security.mtls.policy.as_deref().unwrap_or("-"),
            "connection refused: PeerAuthentication STRICT needs mesh mTLS"
        );
        return Err(RequestError::MtlsRequired(port));
    }
    if matches!(conn.protocol, Protocol::Http1 | Protocol::Http2) || security.authz.is_empty() {
        return Ok(());
    }
    let decision = security.authz.decide(&conn.facts(), None);
    enforce(metrics, conn, &decision, "connection")
}

/// Lets one request through to the app, or says why not: its path normalized (and rewritten
/// for the app when that changed it), its JWT verified, then the AuthorizationPolicies.
pub(super) fn request<B>(
    snapshot: &Snapshot,
    metrics: &Metrics,
    conn: &InboundConn,
    req: &mut Request<B>,
) -> Result<(), RequestError> {
    normalize_path(snapshot, req)?;
    let security = &snapshot.security;
    let claims = match security.authn.verify(req.headers(), req.uri().query()) {
        JwtOutcome::Missing => None,
        JwtOutcome::Valid { claims, rule } => {
            rule.rewrite(&claims, req.headers_mut());
            Some(claims)
        }
        JwtOutcome::Invalid(reason) => {
            tracing::debug!(client = %conn.client, %reason, "JWT refused");
            return Err(RequestError::JwtInvalid);
        }
    };
    if security.authz.is_empty() {
        return Ok(());
    }
    let headers = req.headers();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let facts = RequestFacts {
        method: req.method().as_str(),
        path: req.uri().path(),
        host,
        headers,
        remote_ip: authz::remote_ip(headers, snapshot.mesh.num_trusted_proxies, conn.client.ip()),
        jwt: claims.as_ref(),
    };
    let decision = security.authz.decide(&conn.facts(), Some(&facts));
    enforce(metrics, conn, &decision, "request")
}

/// Counts and logs what `decision` reports, and refuses what it denies.
fn enforce(
    metrics: &Metrics,
    conn: &InboundConn,
    decision: &Decision<'_>,
    what: &'static str,
) -> Result<(), RequestError> {
    for matched in &decision.audit {
        metrics.authz_audit(&matched.policy.name);
        tracing::info!(
            policy = %matched.policy.name,
            rule = matched.rule,
            client = %conn.client,
            peer = conn.tls.peer().map(|p| p.principal()).unwrap_or("-"),
            port = conn.app.port(),
            what,
            "AUDIT policy matched"
        );
    }
    for matched in &decision.dry_run {
        let action = matched.policy.action.name();
        metrics.authz_dry_run(&matched.policy.name, action);
        tracing::info!(
            policy = %matched.policy.name,
            action,
            rule = matched.rule,
            client = %conn.client,
            peer = conn.tls.peer().map(|p| p.principal()).unwrap_or("-"),
            port = conn.app.port(),
            what,
            "dry-run policy matched (not enforced)"
        );
    }
    match decision.verdict {
        Verdict::Allow => Ok(()),
        Verdict::Deny => {
            metrics.authz_denied(decision.policy());
            tracing::debug!(
                by = %decision.by,
                client = %conn.client,
                peer = conn.tls.peer().map(|p| p.principal()).unwrap_or("-"),
                port = conn.app.port(),
                what,
                "denied"
            );
            Err(RequestError::Denied)
        }
    }
}

/// Normalizes the request's path as the mesh's `pathNormalization` says, rewriting the URI
/// only when that changes it.
fn normalize_path<B>(snapshot: &Snapshot, req: &mut Request<B>) -> Result<(), RequestError> {
    let normalized = match snapshot
        .mesh
        .path_normalization
        .normalize(req.uri().path())?
    {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    Ok(())
}
