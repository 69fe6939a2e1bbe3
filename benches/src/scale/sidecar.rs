//! A simulated sidecar: what a real one does with the control plane and nothing else. It gets
//! a certificate from the CA with its service-account token, subscribes to discovery with it
//! (gRPC over mTLS), and acknowledges every push, saying when each arrived and its size.

use std::{io, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use prost::Message;
use remora_api::{
    proto::config::{discovery_client::DiscoveryClient, Node, SubscribeRequest},
    resources::Parts,
    SpiffeId,
};
use remora_proxy::identity::{ca::CaClient, provider, CurrentCert};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::{net::TcpStream, sync::mpsc, time::Instant};
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The name the control plane's certificate is checked for.
const CONTROL_PLANE: &str = "istiod.istio-system.svc";

/// A push a sidecar received.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub sidecar: usize,
    pub at: Instant,
    pub bytes: usize,
}

/// One simulated sidecar.
pub struct Sidecar {
    pub index: usize,
    pub node: Node,
    pub id: SpiffeId,
    pub token: PathBuf,
}

/// A gRPC channel to the control plane at `addr`, checked against `roots` under istiod's name,
/// presenting `cert` when given.
fn channel(
    addr: SocketAddr,
    roots: RootCertStore,
    cert: Option<Arc<CurrentCert>>,
) -> anyhow::Result<Channel> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = TlsConnector::from(Arc::new(tls));
    let connector = tower::service_fn(move |_| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from(CONTROL_PLANE)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok::<_, io::Error>(TokioIo::new(tls.connect(name, tcp).await?))
        }
    });
    Ok(
        Endpoint::from_static("http://istiod.istio-system.svc:15012")
            .connect_timeout(Duration::from_secs(30))
            .connect_with_connector_lazy(connector),
    )
}

impl Sidecar {
    /// Its certificate, from the CA.
    pub async fn certificate(
        &self,
        addr: SocketAddr,
        roots: RootCertStore,
    ) -> anyhow::Result<Arc<CurrentCert>> {
        let channel = channel(addr, roots, None)?;
        let ca = CaClient::new(
            channel,
            self.id.clone(),
            self.token.clone(),
            Duration::from_secs(3600),
        );
        let issued = ca
            .fetch()
            .await
            .with_context(|| format!("certificate for {}", self.id))?;
        Ok(Arc::new(CurrentCert::new(issued)))
    }

    /// Subscribes and acknowledges every push, reporting each, until the stream ends.
    pub async fn subscribe(
        &self,
        addr: SocketAddr,
        roots: RootCertStore,
        cert: Arc<CurrentCert>,
        reports: mpsc::UnboundedSender<Received>,
    ) -> anyhow::Result<()> {
        let channel = channel(addr, roots, Some(cert))?;
        let (answers, requests) = mpsc::channel(4);
        let _ = answers
            .send(SubscribeRequest {
                node: Some(self.node.clone()),
                ..Default::default()
            })
            .await;
        let mut pushes = DiscoveryClient::new(channel)
            .delta_subscribe(ReceiverStream::new(requests))
            .await
            .with_context(|| format!("subscribing as {}", self.id))?
            .into_inner();
        let mut parts = Parts::default();
        let mut bytes = 0;
        while let Some(part) = pushes.message().await? {
            bytes += part.encoded_len();
            let Some(push) = parts.add(part) else {
                continue;
            };
            let ack = SubscribeRequest {
                version: push.version,
                ..Default::default()
            };
            if answers.send(ack).await.is_err() {
                break;
            }
            let received = Received {
                sidecar: self.index,
                at: Instant::now(),
                bytes: std::mem::take(&mut bytes),
            };
            if reports.send(received).is_err() {
                break;
            }
        }
        Ok(())
    }
}
