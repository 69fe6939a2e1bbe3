//! The security policies of a sidecar's own workload, compiled once per snapshot: its mTLS
//! mode per port, its AuthorizationPolicies and its RequestAuthentications. Anything that cannot
//! be compiled refuses the whole snapshot, so the sidecar keeps enforcing the last good one: a
//! policy never widens access by failing.

use crate::{
    authz::{Authorization, Policy},
    jwt::Authentication,
    peer_authn::PeerAuthn,
    proto::config as proto,
};

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

fn prefixed(problems: &mut Vec<String>, path: &str, found: Vec<String>) {
    problems.extend(found.into_iter().map(|p| format!("{path}.{p}")));
}
