//! What a sidecar's token proves in a cluster, as the API server says: a TokenReview
//! (`authentication.k8s.io/v1`, audience `istio-ca`). Only the reviewed user counts, a
//! `system:serviceaccount:<namespace>:<name>`, and the pod the token is bound to
//! (`authentication.kubernetes.io/pod-name`), never a claim the caller wrote. A review that
//! cannot be made refuses the token: the CA fails closed.
//!
//! Answers are cached until the token expires (its `exp`, read once the API server accepted
//! the token), for at most [`CACHE_ENTRIES`] tokens kept by their SHA-256, so sidecars renewing
//! certificates do not each cost a review.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

use super::{Authenticator, ServiceAccount, TokenError, AUDIENCE};

/// Reviewed tokens remembered, at most.
pub const CACHE_ENTRIES: usize = 10_000;

/// The user a service account's token authenticates as.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";
/// The extra field naming the pod a bound token belongs to.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

type Digest = [u8; 32];

/// Checks tokens with the API server's TokenReview.
pub struct TokenReviews {
    client: kube::Client,
    /// Accepted tokens, by digest: the account and when the token expires.
    cache: Mutex<HashMap<Digest, (ServiceAccount, SystemTime)>>,
}

impl TokenReviews {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    async fn review(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let status = answer
            .status
            .ok_or_else(|| TokenError::Unavailable("the review has no status".to_owned()))?;
        account_of(status)
    }

    fn cached(&self, digest: &Digest, now: SystemTime) -> Option<ServiceAccount> {
        let cache = self.cache.lock();
        let (account, until) = cache.get(digest)?;
        (*until > now).then(|| account.clone())
    }

    fn remember(
        &self,
        digest: Digest,
        account: &ServiceAccount,
        until: SystemTime,
        now: SystemTime,
    ) {
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, until)| *until > now);
        }
        if cache.len() < CACHE_ENTRIES {
            cache.insert(digest, (account.clone(), until));
        }
    }
}

impl Authenticator for TokenReviews {
    async fn authenticate(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        let digest = digest(token);
        let now = SystemTime::now();
        if let Some(account) = self.cached(&digest, now) {
            return Ok(account);
        }
        let account = self.review(token).await?;
        if let Some(until) = expiry(token).filter(|until| *until > now) {
            self.remember(digest, &account, until, now);
        }
        Ok(account)
    }
}

/// The service account and pod a review's answer names, if it authenticated the token for
/// the CA's audience.
fn account_of(status: TokenReviewStatus) -> Result<ServiceAccount, TokenError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".to_owned());
        return Err(TokenError::Invalid(why));
    }
    if let Some(audiences) = &status.audiences {
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(TokenError::Invalid(format!(
                "the token is not for audience {AUDIENCE:?}"
            )));
        }
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_USER)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
        .ok_or_else(|| TokenError::Invalid(format!("{username:?} is not a service account")))?;
    let pod = user
        .extra
        .and_then(|extra| extra.get(POD_NAME).and_then(|names| names.first().cloned()));
    Ok(ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod,
    })
}

fn digest(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// When a JWT expires, by its `exp` claim (read without checking the signature: only ever of
/// a token the API server has just accepted).
fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
mod tests;
