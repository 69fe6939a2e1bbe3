//! Getting a workload certificate from the mesh CA the way Istio's agent does: a fresh key for
//! every certificate, a CSR naming only this sidecar's SPIFFE identity, and the pod's
//! service-account token as the bearer credential (`IstioCertificateService/CreateCertificate`).

use std::{path::PathBuf, time::Duration};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use remora_api::{
    proto::ca::{
        istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest,
    },
    SpiffeId,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::{metadata::MetadataValue, transport::Channel};

use super::{parse_certs, IdentityError, Issued};
use crate::control_plane::REQUEST_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("making the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("reading the service-account token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token in {0} cannot be sent as a header")]
    TokenHeader(PathBuf),
    #[error("the CA refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the CA's answer: {0}")]
    Answer(String),
    #[error("the CA's certificate: {0}")]
    Certificate(#[from] IdentityError),
}

/// Asks the CA for certificates for one identity.
#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    id: SpiffeId,
    token: PathBuf,
    ttl: Duration,
}

impl CaClient {
    pub fn new(channel: Channel, id: SpiffeId, token: PathBuf, ttl: Duration) -> Self {
        Self {
            client: IstioCertificateServiceClient::new(channel),
            id,
            token,
            ttl,
        }
    }

    /// A new key and a certificate for it.
    pub async fn fetch(&self) -> Result<Issued, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.id.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        // Re-read every time: Kubernetes rotates projected tokens in place.
        let token = tokio::fs::read_to_string(&self.token)
            .await
            .map_err(|source| CaError::Token {
                path: self.token.clone(),
                source,
            })?;
        let bearer: MetadataValue<_> = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| CaError::TokenHeader(self.token.clone()))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
        });
        request.metadata_mut().insert("authorization", bearer);
        request.set_timeout(REQUEST_TIMEOUT);
        let chain = self
            .client
            .clone()
            .create_certificate(request)
            .await?
            .into_inner()
            .cert_chain;
        let mut certs = parse_certs(chain.concat().as_bytes()).map_err(CaError::Answer)?;
        // Istio's chain ends with the root, which peers already have.
        if certs.len() > 1 && certs.last().is_some_and(|cert| is_self_signed(cert)) {
            certs.pop();
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Issued::new(certs, key, &self.id)?)
    }
}

fn is_self_signed(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .is_ok_and(|(_, cert)| cert.subject() == cert.issuer())
}
