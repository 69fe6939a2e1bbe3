//! The control plane's own serving certificate (gRPC on 15012, the webhook on 15017): issued by
//! the mesh CA for istiod's names, and renewed at half its lifetime while the process runs, as
//! istiod renews its own, so a replica that runs for months never serves an expired one. Every
//! new handshake picks up the newest certificate; established connections keep theirs.

use std::{io, sync::Arc, time::Duration};

use parking_lot::RwLock;
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;

use remora_api::SpiffeId;

use crate::ca::Authority;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the serving certificate could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("the serving certificate: {0}")]
pub struct ServingError(String);

fn error(e: impl std::fmt::Display) -> ServingError {
    ServingError(e.to_string())
}

/// The current serving certificate, swapped whole on renewal.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    id: SpiffeId,
    names: Vec<String>,
    ttl: Duration,
}

impl ServingCert {
    /// A certificate for `id` and DNS `names`, valid for `ttl`.
    pub fn issue(
        ca: &Authority,
        id: SpiffeId,
        names: &[&str],
        ttl: Duration,
    ) -> Result<Arc<Self>, ServingError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let current = RwLock::new(Arc::new(certified(ca, &id, &names, ttl)?));
        Ok(Arc::new(Self {
            current,
            id,
            names,
            ttl,
        }))
    }

    /// Renews the certificate at half its lifetime, for as long as the process runs; a renewal
    /// that fails is tried again a minute later (the current certificate still has half its
    /// life).
    pub async fn renew(self: Arc<Self>, ca: Arc<Authority>) {
        let mut wait = self.ttl / 2;
        loop {
            tokio::time::sleep(wait).await;
            match certified(&ca, &self.id, &self.names, self.ttl) {
                Ok(fresh) => {
                    *self.current.write() = Arc::new(fresh);
                    tracing::info!("serving certificate renewed");
                    wait = self.ttl / 2;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the serving certificate; retrying");
                    wait = Duration::from_secs(60).min(self.ttl / 4);
                }
            }
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }

    /// TLS for the gRPC port: HTTP/2; a client certificate of the mesh (`roots_pem`) is
    /// asked for but not required, since the CA's callers have none yet.
    pub fn grpc_config(self: &Arc<Self>, roots_pem: &str) -> Result<ServerConfig, ServingError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(cert.map_err(error)?).map_err(error)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(error)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(error)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// TLS for the webhook: HTTP/1.1 (as the API server calls webhooks), no client
    /// certificate.
    pub fn webhook_config(self: &Arc<Self>) -> Result<ServerConfig, ServingError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(error)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified(
    ca: &Authority,
    id: &SpiffeId,
    names: &[String],
    ttl: Duration,
) -> Result<CertifiedKey, ServingError> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let issued = ca.issue_with_dns(id, &names, ttl).map_err(error)?;
    let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(error)?;
    let key = any_supported_type(&key).map_err(error)?;
    Ok(CertifiedKey::new(chain, key))
}

/// The TLS connections accepted on `listener`, each handshake done in a task of its own (a
/// slow or silent client holds up no other), as a stream for tonic's server.
pub fn incoming(
    listener: TcpListener,
    tls: TlsAcceptor,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (accepted, stream) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted_now = tokio::select! {
                accepted_now = listener.accept() => accepted_now,
                () = accepted.closed() => return,
            };
            let (tcp, _) = match accepted_now {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tls, handed) = (tls.clone(), accepted.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = handed.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

#[cfg(test)]
mod tests;
