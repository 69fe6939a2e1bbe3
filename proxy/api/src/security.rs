//! The security policies of a sidecar's own workload, compiled once per snapshot: its mTLS
//! mode per port, its AuthorizationPolicies and its RequestAuthentications. Anything that cannot
//! be compiled refuses the whole snapshot, so the sidecar keeps enforcing the last good one: a
//! policy never widens access by failing.

use std::borrow::Cow;

use http::{header, uri::PathAndQuery, Request, Uri};

use crate::{
    authz::{self, Authorization, ConnectionFacts, Decision, Policy, RequestFacts, Verdict},
    jwt::{Authentication, JwtOutcome},
    mesh::MeshSettings,
    path::PathError,
    peer_authn::{MtlsMode, PeerAuthn},
    proto::config as proto,
};

/// What the policies say about a connection or a request.
#[derive(Debug)]
pub enum Outcome<'p> {
    /// Let through; with the decision when AuthorizationPolicies were asked (its AUDIT and
    /// dry-run matches are to be reported).
    Allowed(Option<Decision<'p>>),
    /// Refused by AuthorizationPolicy.
    Denied(Decision<'p>),
    /// No mesh mTLS on a port whose PeerAuthentication is STRICT.
    MtlsRequired,
    /// A JWT that does not verify, and why.
    JwtInvalid(String),
    /// A path that cannot be normalized.
    InvalidPath(PathError),
}

#[derive(Debug, Default)]
pub struct Security {
    pub mtls: PeerAuthn,
    pub authz: Authorization,
    pub authn: Authentication,
}

impl Security {
    /// Compiles `source`; each problem names its path under `security`.
    pub fn compile(source: &proto::Security) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mtls = source
            .peer_authentication
            .as_ref()
            .map(PeerAuthn::compile)
            .transpose()
            .map_err(|e| prefixed(&mut problems, "security.peerAuthentication", e))
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut policies = Vec::new();
        for (i, policy) in source.authorization_policies.iter().enumerate() {
            match Policy::compile(policy) {
                Ok(policy) => policies.push(policy),
                Err(e) => prefixed(
                    &mut problems,
                    &format!("security.authorizationPolicies[{i}]"),
                    e,
                ),
            }
        }
        let authn = Authentication::compile(&source.request_authentications)
            .map_err(|e| prefixed(&mut problems, "security", e))
            .unwrap_or_default();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            mtls,
            authz: Authorization::new(policies),
            authn,
        })
    }
}

impl Security {
    /// Whether a connection may reach the app at all: its PeerAuthentication mode, and for a
    /// connection that is not HTTP (`opaque`; HTTP is decided per request) the
    /// AuthorizationPolicies.
    pub fn check_connection(&self, conn: &ConnectionFacts<'_>, opaque: bool) -> Outcome<'_> {
        if self.mtls.mode(conn.destination.port()) == MtlsMode::Strict && conn.peer.is_none() {
            return Outcome::MtlsRequired;
        }
        if !opaque || self.authz.is_empty() {
            return Outcome::Allowed(None);
        }
        verdict(self.authz.decide(conn, None))
    }

    /// Whether one request may reach the app: its path normalized as `mesh` says (the request
    /// rewritten when that changes it), its JWT verified (and, if valid, removed or copied into
    /// headers as the rule says), then the AuthorizationPolicies.
    pub fn check_request<B>(
        &self,
        mesh: &MeshSettings,
        conn: &ConnectionFacts<'_>,
        req: &mut Request<B>,
    ) -> Outcome<'_> {
        if let Err(e) = normalize_path(mesh, req) {
            return Outcome::InvalidPath(e);
        }
        let claims = match self.authn.verify(req.headers(), req.uri().query()) {
            JwtOutcome::Missing => None,
            JwtOutcome::Valid { claims, rule } => {
                rule.rewrite(&claims, req.headers_mut());
                Some(claims)
            }
            JwtOutcome::Invalid(reason) => return Outcome::JwtInvalid(reason),
        };
        if self.authz.is_empty() {
            return Outcome::Allowed(None);
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
            remote_ip: authz::remote_ip(headers, mesh.num_trusted_proxies, conn.source.ip()),
            jwt: claims.as_ref(),
        };
        verdict(self.authz.decide(conn, Some(&facts)))
    }
}

fn verdict(decision: Decision<'_>) -> Outcome<'_> {
    match decision.verdict {
        Verdict::Allow => Outcome::Allowed(Some(decision)),
        Verdict::Deny => Outcome::Denied(decision),
    }
}

/// Normalizes the request's path, rewriting the URI only when that changes it.
fn normalize_path<B>(mesh: &MeshSettings, req: &mut Request<B>) -> Result<(), PathError> {
    let normalized = match mesh.path_normalization.normalize(req.uri().path())? {
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

fn prefixed(problems: &mut Vec<String>, path: &str, found: Vec<String>) {
    problems.extend(found.into_iter().map(|p| format!("{path}.{p}")));
}
