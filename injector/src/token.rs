//! Service-account tokens: who a caller of the CA is.
//!
//! A sidecar proves its identity to the CA with the projected service-account token Kubernetes
//! mounts for it (audience `istio-ca`). The CA asks an [`Authenticator`] what service account a
//! token proves; in a cluster that is the API server's TokenReview ([`TokenReviews`]), locally
//! it is [`LocalTokens`]: ES256 JWTs shaped like Kubernetes' own, minted by the local launcher
//! with a key it keeps in its state directory ([`TokenIssuer`]).

mod review;

pub use review::TokenReviews;

use std::{
    fs,
    future::Future,
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The audience Istio's agent requests for the CA.
pub const AUDIENCE: &str = "istio-ca";
/// The issuer of tokens minted by [`TokenIssuer`].
const LOCAL_ISSUER: &str = "remora-local";
const PRIVATE_KEY: &str = "token-key.pem";
const PUBLIC_KEY: &str = "token-key.pub.pem";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("token key: {0}")]
    Key(String),
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token could not be checked (the API server did not answer): refused, as the CA
    /// fails closed.
    #[error("token review unavailable: {0}")]
    Unavailable(String),
}

/// A Kubernetes service account, as a token proves it, and the pod the token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub pod: Option<String>,
}

/// Checks bearer tokens presented to the CA.
pub trait Authenticator: Send + Sync + 'static {
    /// The service account `token` proves, or why it proves nothing.
    fn authenticate(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<ServiceAccount, TokenError>> + Send;
}

/// The claims of a projected service-account token that matter here (Kubernetes' shape).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: u64,
    iat: u64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: Named,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<Named>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Named {
    name: String,
}

/// Mints tokens for local pods (the launcher's stand-in for the kubelet).
pub struct TokenIssuer {
    key: EncodingKey,
}

impl TokenIssuer {
    /// Loads the signing key from `dir`, or makes one (and its public half) when there is none.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TokenError> {
        let private = dir.join(PRIVATE_KEY);
        let pem = match fs::read(&private) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| TokenError::Key(e.to_string()))?;
                let io = |path: &Path| {
                    let path = path.to_owned();
                    move |source| TokenError::Io { path, source }
                };
                fs::create_dir_all(dir).map_err(io(dir))?;
                fs::write(Self::public_key_path(dir), key.public_key_pem())
                    .map_err(io(&Self::public_key_path(dir)))?;
                crate::ca::write_private(dir, PRIVATE_KEY, &key.serialize_pem())
                    .map_err(|e| TokenError::Key(e.to_string()))?;
                key.serialize_pem().into_bytes()
            }
            Err(source) => {
                return Err(TokenError::Io {
                    path: private,
                    source,
                })
            }
        };
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// Where [`load_or_generate`](Self::load_or_generate) keeps the public key that
    /// [`LocalTokens`] verifies with.
    pub fn public_key_path(dir: &Path) -> PathBuf {
        dir.join(PUBLIC_KEY)
    }

    /// A token for `pod` running as `namespace/service_account`, valid for `ttl`.
    pub fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let now = unix_now();
        let claims = Claims {
            iss: LOCAL_ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: vec![AUDIENCE.to_owned()],
            iat: now,
            exp: now + ttl.as_secs(),
            kubernetes: KubernetesClaims {
                namespace: namespace.to_owned(),
                serviceaccount: Named {
                    name: service_account.to_owned(),
                },
                pod: Some(Named {
                    name: pod.to_owned(),
                }),
            },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|e| TokenError::Key(e.to_string()))
    }
}

/// Verifies tokens minted by a [`TokenIssuer`], given its public key.
pub struct LocalTokens {
    key: DecodingKey,
    validation: Validation,
}

impl LocalTokens {
    pub fn load(public_key: &Path) -> Result<Self, TokenError> {
        let pem = fs::read(public_key).map_err(|source| TokenError::Io {
            path: public_key.to_owned(),
            source,
        })?;
        let key = DecodingKey::from_ec_pem(&pem).map_err(|e| TokenError::Key(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[LOCAL_ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        Ok(Self { key, validation })
    }

    fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?
            .claims;
        let account = ServiceAccount {
            namespace: claims.kubernetes.namespace,
            name: claims.kubernetes.serviceaccount.name,
            pod: claims.kubernetes.pod.map(|pod| pod.name),
        };
        let subject = format!(
            "system:serviceaccount:{}:{}",
            account.namespace, account.name
        );
        if claims.sub != subject {
            return Err(TokenError::Invalid(format!(
                "subject {:?} does not match the service account {subject:?}",
                claims.sub
            )));
        }
        Ok(account)
    }
}

impl Authenticator for LocalTokens {
    async fn authenticate(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        self.verify(token)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "remora-token-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[tokio::test]
    async fn a_minted_token_proves_its_service_account() {
        let dir = dir();
        let issuer = TokenIssuer::load_or_generate(&dir).expect("issuer");
        let token = issuer
            .mint("client", "sleep", "sleep-0", Duration::from_secs(60))
            .expect("token");
        let tokens = LocalTokens::load(&TokenIssuer::public_key_path(&dir)).expect("verifier");
        assert_eq!(
            tokens.authenticate(&token).await.expect("valid"),
            ServiceAccount {
                namespace: "client".into(),
                name: "sleep".into(),
                pod: Some("sleep-0".into()),
            }
        );
        // The same key is used again after a restart.
        let again = TokenIssuer::load_or_generate(&dir).expect("reloaded");
        let token = again
            .mint("demo", "httpbin", "httpbin-0", Duration::from_secs(60))
            .expect("token");
        assert!(tokens.authenticate(&token).await.is_ok());
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[tokio::test]
    async fn foreign_tampered_and_expired_tokens_are_refused() {
        let (mine, theirs) = (dir(), dir());
        let issuer = TokenIssuer::load_or_generate(&mine).expect("issuer");
        let foreign = TokenIssuer::load_or_generate(&theirs).expect("foreign issuer");
        let tokens = LocalTokens::load(&TokenIssuer::public_key_path(&mine)).expect("verifier");
        let ttl = Duration::from_secs(60);

        let forged = foreign.mint("client", "sleep", "p", ttl).expect("token");
        assert!(tokens.authenticate(&forged).await.is_err());

        let token = issuer.mint("client", "sleep", "p", ttl).expect("token");
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = issuer
            .mint("kube-system", "admin", "p", ttl)
            .expect("token");
        parts[1] = other.split('.').nth(1).expect("claims");
        let tampered = parts.join(".");
        assert!(tokens.authenticate(&tampered).await.is_err());

        let expired = issuer
            .mint("client", "sleep", "p", Duration::ZERO)
            .expect("token");
        // jsonwebtoken allows 60 s of leeway by default; step past it.
        let mut strict = LocalTokens::load(&TokenIssuer::public_key_path(&mine)).expect("v");
        strict.validation.leeway = 0;
        std::thread::sleep(Duration::from_millis(1100));
        assert!(strict.authenticate(&expired).await.is_err());

        assert!(tokens.authenticate("not a jwt").await.is_err());
        fs::remove_dir_all(mine).expect("cleanup");
        fs::remove_dir_all(theirs).expect("cleanup");
    }
}
