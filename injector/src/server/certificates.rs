//! The CA service (`istio.v1.auth.IstioCertificateService/CreateCertificate`): a CSR and a
//! bearer token in, a PEM chain out. The token says which service account the caller runs as;
//! the CSR must ask for exactly that account's SPIFFE identity, nothing else.

use std::{sync::Arc, time::Duration};

use remora_api::{
    proto::ca::{
        istio_certificate_service_server::IstioCertificateService, IstioCertificateRequest,
        IstioCertificateResponse,
    },
    SpiffeId,
};
use tonic::{Request, Response, Status};

use super::{metrics::Metrics, CatalogWatch};
use crate::{
    ca::{Authority, CaError, DEFAULT_WORKLOAD_TTL},
    token::Authenticator,
};

/// The longest certificate the CA signs, whatever is asked (Istio's `MAX_WORKLOAD_CERT_TTL`).
const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);

pub struct Certificates<A> {
    pub ca: Arc<Authority>,
    pub tokens: A,
    pub catalog: CatalogWatch,
    pub metrics: Arc<Metrics>,
}

impl<A: Authenticator> Certificates<A> {
    async fn sign(&self, request: Request<IstioCertificateRequest>) -> Result<Vec<String>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                self.metrics.auth_failures.inc();
                Status::unauthenticated("no bearer token in `authorization`")
            })?;
        let account = self.tokens.authenticate(token).await.map_err(|e| {
            self.metrics.auth_failures.inc();
            Status::unauthenticated(e.to_string())
        })?;
        let trust_domain = self.catalog.borrow().trust_domain().to_owned();
        let id = SpiffeId::new(&trust_domain, &account.namespace, &account.name)
            .map_err(|e| Status::invalid_argument(format!("token's service account: {e}")))?;
        let request = request.into_inner();
        let ttl = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map_or(DEFAULT_WORKLOAD_TTL, Duration::from_secs)
            .min(MAX_WORKLOAD_TTL);
        let chain = self
            .ca
            .sign_csr(&request.csr, &id, ttl)
            .map_err(|e| match e {
                CaError::ForeignIdentity { .. } => Status::permission_denied(e.to_string()),
                CaError::Csr(_) | CaError::Ttl(_) => Status::invalid_argument(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        tracing::info!(%id, ?ttl, "certificate issued");
        Ok(chain)
    }
}

#[tonic::async_trait]
impl<A: Authenticator> IstioCertificateService for Certificates<A> {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.metrics.csrs.inc();
        match self.sign(request).await {
            Ok(cert_chain) => {
                self.metrics.issued.inc();
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "certificate request refused");
                Err(status)
            }
        }
    }
}
