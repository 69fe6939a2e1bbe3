//! Connections to the control plane (`CA_ADDR`, e.g. `istiod.istio-system.svc:15012`): gRPC over
//! TLS, the server verified against the mesh roots under its DNS name, as Istio's agent does.
//! The name resolves through the pod's resolver (`/etc/hosts` locally, cluster DNS in
//! Kubernetes); the sidecar's own traffic is never captured (uid 1337).

use std::{io, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{client::ResolvesClientCert, ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::{identity::provider, transport};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one CA request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control-plane address {0:?} is not host:port")]
    Address(String),
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connecting to the control plane: {0}")]
    Connect(#[from] tonic::transport::Error),
}

/// Where the control plane is and how to reach it.
#[derive(Clone)]
pub struct ControlPlane {
    address: String,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

impl ControlPlane {
    /// TLS to `address`, verifying the server against `roots`; `client_cert` is presented when
    /// given (the discovery stream authenticates the sidecar by its workload certificate).
    pub fn new(
        address: &str,
        roots: RootCertStore,
        client_cert: Option<Arc<dyn ResolvesClientCert>>,
    ) -> Result<Self, ControlPlaneError> {
        let host = address
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| ControlPlaneError::Address(address.to_owned()))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ControlPlaneError::Address(address.to_owned()))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let mut tls = match client_cert {
            Some(cert) => builder.with_client_cert_resolver(cert),
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            address: address.to_owned(),
            name,
            tls: Arc::new(tls),
        })
    }

    /// A gRPC channel; `lazy` ones connect on first use and reconnect by themselves.
    pub async fn channel(&self, lazy: bool) -> Result<Channel, ControlPlaneError> {
        // The URI only labels requests: the connector below decides where bytes go.
        // Keepalives notice a control plane that vanished without closing, so the sidecar
        // resubscribes (and reports itself disconnected) instead of waiting forever.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let this = self.clone();
        let connector = tower::service_fn(move |_| {
            let this = this.clone();
            async move { this.connect().await }
        });
        Ok(if lazy {
            endpoint.connect_with_connector_lazy(connector)
        } else {
            endpoint.connect_with_connector(connector).await?
        })
    }

    async fn connect(&self) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
        let mut tcp = Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
        for addr in tokio::net::lookup_host(&self.address).await? {
            tcp = transport::connect(addr).await;
            if tcp.is_ok() {
                break;
            }
        }
        let tcp = tcp?;
        let handshake = TlsConnector::from(self.tls.clone()).connect(self.name.clone(), tcp);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(TokioIo::new(tls))
    }
}
