//! Wiring: loads the identity (a bad one stops the sidecar before it binds anything), binds the
//! status listeners first so `/healthz/ready` answers "not ready" until the capture listeners are
//! up, and runs them.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use remora_api::{Bootstrap, EndpointTable, IdentitySource, SpiffeId};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    identity::Identity,
    inbound::{self, app::AppClient},
    metrics::Metrics,
    outbound::{
        self,
        mesh::{MeshClient, MeshError},
    },
    status::{self, Readiness},
    tls::{MeshTls, TlsError},
    transport::original_dst,
};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub use crate::outbound::mesh::TUNNEL_PORT;
pub const HEALTH_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15090;

/// How long to wait for a client's first bytes before treating the connection as a protocol
/// whose server speaks first.
const DETECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a captured connection ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("refusing a connection addressed to the sidecar's own port {0}")]
    Loop(SocketAddr),
    #[error("reading the original destination: {0}")]
    OriginalDst(#[source] std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("mesh mTLS: {0}")]
    Tls(#[from] TlsError),
    #[error("mesh: {0}")]
    Mesh(#[from] MeshError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// Whether `port` is one the sidecar listens on for traffic to forward. A connection addressed
/// to one of them (e.g. a caller dialing `<pod-ip>:15006` directly) would be forwarded back to
/// the same listener forever, so it is refused, as Envoy's listeners do.
pub fn is_proxy_port(port: u16) -> bool {
    matches!(port, OUTBOUND_PORT | INBOUND_PORT | TUNNEL_PORT)
}

/// Where a redirected connection was headed.
pub fn intended_destination(tcp: &TcpStream) -> Result<SocketAddr, ConnectionError> {
    let dst = original_dst(tcp).map_err(ConnectionError::OriginalDst)?;
    if is_proxy_port(dst.port()) {
        return Err(ConnectionError::Loop(dst));
    }
    Ok(dst)
}

/// What every connection handler shares.
pub struct Proxy {
    pub id: SpiffeId,
    pub tls: MeshTls,
    pub mesh: MeshClient,
    pub app: AppClient,
    pub endpoints: EndpointTable,
    pub metrics: Arc<Metrics>,
    pub detect_timeout: Duration,
}

/// Runs the sidecar until `shutdown` completes.
pub async fn run(bootstrap: Bootstrap, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let id = bootstrap.spiffe_id().context("bootstrap identity")?;
    let identity = match &bootstrap.identity {
        IdentitySource::Files(files) => Identity::load(files, &id)
            .with_context(|| format!("loading the workload identity of {id}"))?,
    };
    let tls = MeshTls::new(&identity).context("building mesh TLS")?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let health = bind(HEALTH_PORT).await?;
    let stats = bind(STATS_PORT).await?;
    tokio::spawn(status::serve_health(health, readiness.clone()));
    tokio::spawn(status::serve_stats(stats, metrics.clone()));

    let snapshot = bootstrap.static_snapshot.unwrap_or_default();
    tracing::info!(
        id = %identity.id,
        version = %snapshot.version,
        endpoints = snapshot.endpoints.len(),
        "identity loaded"
    );
    let proxy = Arc::new(Proxy {
        id: identity.id,
        mesh: MeshClient::new(tls.clone()),
        app: AppClient::new(),
        tls,
        endpoints: snapshot.table(),
        metrics,
        detect_timeout: DETECT_TIMEOUT,
    });

    let outbound_listener = bind(OUTBOUND_PORT).await?;
    let inbound_listener = bind(INBOUND_PORT).await?;
    let tunnel_listener = bind(TUNNEL_PORT).await?;
    readiness.set_ready();
    tracing::info!("ready");

    tokio::select! {
        () = accept(outbound_listener, proxy.clone(), "outbound", outbound::handle) => {}
        () = accept(inbound_listener, proxy.clone(), "inbound", inbound::handle) => {}
        () = accept(tunnel_listener, proxy, "tunnel", inbound::tunnel::handle) => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

async fn accept<H, F>(listener: TcpListener, proxy: Arc<Proxy>, direction: &'static str, handle: H)
where
    H: Fn(Arc<Proxy>, TcpStream) -> F,
    F: Future<Output = Result<(), ConnectionError>> + Send + 'static,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, direction, "accept failed");
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY");
        }
        let conn = handle(proxy.clone(), tcp);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::info!(%error, %peer, direction, "connection failed");
            }
        });
    }
}
