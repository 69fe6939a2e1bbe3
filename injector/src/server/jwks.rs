//! RequestAuthentication `jwksUri`: the control plane fetches the keys and sends them inline, as
//! istiod does, so sidecars never reach out to an identity provider and all agree on the keys.
//!
//! One task follows the catalog: every URI a sidecar's policies name is fetched when first
//! seen, then refreshed every [`REFRESH`]; a failed fetch is retried sooner and keeps the keys
//! last fetched (none before the first success: tokens of that issuer then fail to verify, as
//! with Istio). What was fetched is published on a watch channel; discovery sessions fill it into
//! each sidecar's `security` resource and push again when it changes.

mod fetch;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use jsonwebtoken::jwk::JwkSet;
use remora_api::proto::config::Security;
use tokio::{sync::watch, time::Instant};

use super::CatalogWatch;

pub use fetch::{fetch, FetchError};

/// How often keys are fetched again (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a failed fetch is tried again.
pub const RETRY: Duration = Duration::from_secs(15);

/// The JWKS fetched for each URI.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Jwks(BTreeMap<String, String>);

impl Jwks {
    /// Fills the keys of every `jwksUri` rule of `security` that has been fetched.
    pub fn fill(&self, security: &mut Security) {
        let rules = security
            .request_authentications
            .iter_mut()
            .flat_map(|r| r.jwt_rules.iter_mut());
        for rule in rules {
            if let Some(keys) = self.0.get(&rule.jwks_uri) {
                rule.jwks.clone_from(keys);
            }
        }
    }
}

/// When each URI is due again.
#[derive(Default)]
struct Schedule(HashMap<String, Instant>);

/// Keeps `keys` filled for every `jwksUri` the catalog's policies name, until the catalog's
/// source stops.
pub async fn refresh(mut catalog: CatalogWatch, keys: watch::Sender<Arc<Jwks>>) {
    let mut due = Schedule::default();
    loop {
        let uris = catalog.borrow_and_update().jwks_uris();
        due.0.retain(|uri, _| uris.contains(uri));
        let now = Instant::now();
        for uri in &uris {
            if due.0.get(uri).is_some_and(|at| *at > now) {
                continue;
            }
            let next = match fetch(uri).await.and_then(|body| checked(uri, body)) {
                Ok(body) => {
                    keys.send_if_modified(|current| {
                        if current.0.get(uri) == Some(&body) {
                            return false;
                        }
                        let mut updated = Jwks::clone(current);
                        updated.0.insert(uri.clone(), body);
                        *current = Arc::new(updated);
                        tracing::info!(uri, "fetched new keys for jwksUri");
                        true
                    });
                    REFRESH
                }
                Err(error) => {
                    tracing::warn!(uri, %error, "fetching jwksUri failed; keeping the last keys");
                    RETRY
                }
            };
            due.0.insert(uri.clone(), Instant::now() + next);
        }
        let wake = due.0.values().min().copied();
        tokio::select! {
            changed = catalog.changed() => if changed.is_err() { return },
            () = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `body` if it is a JSON Web Key Set.
fn checked(uri: &str, body: String) -> Result<String, FetchError> {
    serde_json::from_str::<JwkSet>(&body)
        .map(|_| body)
        .map_err(|e| FetchError::NotJwks(uri.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests;
