//! The sidecar's side of the security policies: gathers what `remora_api`'s pure checks need
//! from a connection or a request, asks them, and acts on the answer (a typed refusal for
//! `respond`, the counters and log lines that explain it). Both inbound hooks call in here, so
//! every door enforces the same policies the same way.

use http::Request;
use remora_api::{authz::ConnectionFacts, authz::Decision, Outcome, Snapshot};

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

/// Whether `conn` may reach the app at all (PeerAuthentication; AuthorizationPolicy for
/// anything that is not HTTP).
pub(super) fn connection(
    snapshot: &Snapshot,
    metrics: &Metrics,
    conn: &InboundConn,
) -> Result<(), RequestError> {
    let opaque = !matches!(conn.protocol, Protocol::Http1 | Protocol::Http2);
    let outcome = snapshot.security.check_connection(&conn.facts(), opaque);
    enforce(snapshot, metrics, conn, outcome, "connection")
}

/// Lets one request through to the app (rewritten as normalization and JWT rules say), or says
/// why not.
pub(super) fn request<B>(
    snapshot: &Snapshot,
    metrics: &Metrics,
    conn: &InboundConn,
    req: &mut Request<B>,
) -> Result<(), RequestError> {
    let outcome = snapshot
        .security
        .check_request(&snapshot.mesh, &conn.facts(), req);
    enforce(snapshot, metrics, conn, outcome, "request")
}

/// Reports what `outcome` found and refuses what it refuses.
fn enforce(
    snapshot: &Snapshot,
    metrics: &Metrics,
    conn: &InboundConn,
    outcome: Outcome<'_>,
    what: &'static str,
) -> Result<(), RequestError> {
    let peer = conn.tls.peer().map(|p| p.principal()).unwrap_or("-");
    let (client, port) = (conn.client, conn.app.port());
    match outcome {
        Outcome::Allowed(None) => Ok(()),
        Outcome::Allowed(Some(decision)) => {
            report(metrics, conn, &decision, what);
            Ok(())
        }
        Outcome::Denied(decision) => {
            report(metrics, conn, &decision, what);
            metrics.authz_denied(decision.policy());
            tracing::debug!(by = %decision.by, %client, peer, port, what, "denied");
            Err(RequestError::Denied)
        }
        Outcome::MtlsRequired => {
            let policy = snapshot.security.mtls.policy.as_deref().unwrap_or("-");
            tracing::debug!(%client, port, policy, "refused: PeerAuthentication STRICT needs mesh mTLS");
            Err(RequestError::MtlsRequired(port))
        }
        Outcome::JwtInvalid(reason) => {
            tracing::debug!(%client, peer, port, %reason, "JWT refused");
            Err(RequestError::JwtInvalid)
        }
        Outcome::InvalidPath(error) => Err(error.into()),
    }
}

/// Counts and logs the AUDIT and dry-run policies a decision matched.
fn report(metrics: &Metrics, conn: &InboundConn, decision: &Decision<'_>, what: &'static str) {
    let peer = conn.tls.peer().map(|p| p.principal()).unwrap_or("-");
    let (client, port) = (conn.client, conn.app.port());
    for matched in &decision.audit {
        metrics.authz_audit(&matched.policy.name);
        let (policy, rule) = (&matched.policy.name, matched.rule);
        tracing::info!(%policy, rule, %client, peer, port, what, "AUDIT policy matched");
    }
    for matched in &decision.dry_run {
        let action = matched.policy.action.name();
        metrics.authz_dry_run(&matched.policy.name, action);
        let (policy, rule) = (&matched.policy.name, matched.rule);
        tracing::info!(
            %policy, action, rule, %client, peer, port, what,
            "dry-run policy matched (not enforced)"
        );
    }
}
