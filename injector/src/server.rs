//! The control plane's servers: gRPC over TLS on 15012 (the CA and config discovery), the
//! sidecar injection webhook over HTTPS on 15017, and plain HTTP on 15014 (metrics, readiness,
//! rejected objects, each sidecar's sync state).
//!
//! The gRPC port serves both services on one TLS listener, as istiod does: a client certificate
//! is optional at the TLS layer because the CA's callers do not have one yet (they prove
//! themselves with a token), and the discovery service refuses callers without one.

mod certificates;
mod discovery;
mod http;
mod jwks;
mod metrics;
mod serving;
mod sync_status;
mod webhook;

pub use discovery::CONCURRENT_PUSHES;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use remora_api::{
    proto::{
        ca::istio_certificate_service_server::IstioCertificateServiceServer,
        config::discovery_server::DiscoveryServer,
    },
    SpiffeId,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;

use crate::{
    ca::{self, Authority, CaError},
    config::{Catalog, Source, SourceError},
    token::{Authenticator, TokenError},
};

use certificates::Certificates;
use discovery::DiscoveryService;
use jwks::Jwks;
use metrics::Metrics;
use serving::{ServingCert, ServingError};
use sync_status::SyncStatus;

/// The latest valid config, as every service reads it.
type CatalogWatch = watch::Receiver<Arc<Catalog>>;

/// The control plane's DNS names, which its serving certificate carries (Istio's Service
/// `istiod` in `istio-system`).
const SERVING_NAMES: [&str; 3] = [
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "istiod",
];
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of the serving certificate, renewed at half of it.
const SERVING_TTL: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("config source: {0}")]
    Source(#[from] SourceError),
    #[error("CA {place}: {source}")]
    Ca {
        /// Where its material is: `in /dir`, `in the cluster`.
        place: String,
        #[source]
        source: CaError,
    },
    #[error("token verification key: {0}")]
    Token(#[from] TokenError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the serving identity: {0}")]
    Identity(String),
    #[error(transparent)]
    Serving(#[from] ServingError),
}

/// Where the control plane listens and what it serves.
pub struct Options {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The injection webhook (HTTPS).
    pub webhook: SocketAddr,
    pub ca: CaStore,
}

/// Where the CA's key material is kept.
pub enum CaStore {
    /// Files (Istio's plug-in layout); a new root is made here when there is none.
    Directory(PathBuf),
    /// A cluster's Secrets in the control plane's namespace (`cacerts`, else
    /// `istio-ca-secret`, made by the first replica), the root published in every namespace and
    /// in the `caBundle` of webhook configuration `webhook`.
    Cluster {
        client: kube::Client,
        namespace: String,
        webhook: String,
    },
}

/// Runs the control plane until the gRPC server fails.
pub async fn run<A: Authenticator>(
    options: Options,
    source: Box<dyn Source>,
    tokens: A,
) -> Result<(), ServeError> {
    let catalog = source.watch().await?;
    let trust_domain = catalog.borrow().trust_domain().to_owned();
    let ca = Arc::new(match &options.ca {
        CaStore::Directory(dir) => load_or_create_ca(dir, &trust_domain)?,
        CaStore::Cluster {
            client,
            namespace,
            webhook,
        } => {
            let ca = ca::cluster::load_or_create(client.clone(), namespace, &trust_domain)
                .await
                .map_err(|source| ServeError::Ca {
                    place: format!("in namespace {namespace}"),
                    source,
                })?;
            tokio::spawn(crate::cluster::keep_roots(
                client.clone(),
                webhook.clone(),
                ca.roots_pem().to_owned(),
            ));
            ca
        }
    });
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(track_rejections(catalog.clone(), metrics.clone()));
    let (jwks, fetched) = watch::channel(Arc::new(Jwks::default()));
    tokio::spawn(jwks::refresh(catalog.clone(), jwks));
    let (publisher, published) = watch::channel(Arc::new(discovery::Published::first(
        catalog.borrow().clone(),
    )));
    tokio::spawn(discovery::publish(catalog.clone(), publisher));

    let id = SpiffeId::new(&trust_domain, "istio-system", "istiod")
        .map_err(|e| ServeError::Identity(e.to_string()))?;
    let serving = ServingCert::issue(&ca, id, &SERVING_NAMES, SERVING_TTL)?;
    tokio::spawn(serving.clone().renew(ca.clone()));
    let grpc_tls = TlsAcceptor::from(Arc::new(serving.grpc_config(ca.roots_pem())?));
    let webhook_tls = TlsAcceptor::from(Arc::new(serving.webhook_config()?));
    let grpc = bind(options.grpc).await?;
    let http = bind(options.http).await?;
    let webhook = bind(options.webhook).await?;
    tokio::spawn(webhook::serve(webhook, webhook_tls, catalog.clone()));
    let status = Arc::new(SyncStatus::default());
    tokio::spawn(http::serve(
        http,
        metrics.clone(),
        catalog.clone(),
        status.clone(),
    ));
    tracing::info!(grpc = %options.grpc, http = %options.http, webhook = %options.webhook, %trust_domain, "control plane serving");
    // Keepalives find sidecars that vanished without closing (their session tasks end and
    // `pilot_xds` drops) rather than keeping them forever.
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
        .add_service(IstioCertificateServiceServer::new(Certificates {
            ca,
            tokens,
            catalog: catalog.clone(),
            metrics: metrics.clone(),
        }))
        .add_service(DiscoveryServer::new(DiscoveryService {
            published,
            turns: discovery::Turns::default(),
            jwks: fetched,
            metrics,
            status,
        }))
        .serve_with_incoming(serving::incoming(grpc, grpc_tls))
        .await?;
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Loads the CA from `dir`, or makes and saves a new root there on first start.
fn load_or_create_ca(dir: &std::path::Path, trust_domain: &str) -> Result<Authority, ServeError> {
    let error = |source| ServeError::Ca {
        place: format!("in {}", dir.display()),
        source,
    };
    match Authority::load(dir) {
        Ok(ca) => Ok(ca),
        Err(CaError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(dir = %dir.display(), "no CA found: creating a new mesh root");
            let ca = Authority::generate(trust_domain).map_err(error)?;
            ca.save_new(dir).map_err(error)?;
            Ok(ca)
        }
        Err(e) => Err(error(e)),
    }
}

/// Keeps the rejected-objects gauge in step with the catalog.
async fn track_rejections(mut catalog: CatalogWatch, metrics: Arc<Metrics>) {
    loop {
        let rejected = catalog.borrow_and_update().rejected.len();
        metrics
            .rejected_objects
            .set(i64::try_from(rejected).unwrap_or(i64::MAX));
        if catalog.changed().await.is_err() {
            return;
        }
    }
}
