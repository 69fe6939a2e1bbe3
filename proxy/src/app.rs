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
    inbound,
    metrics::Metrics,
    outbound,
    status::{self, Readiness},
    tls::MeshTls,
};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const HEALTH_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15090;

/// How long to wait for a client's first bytes before treating the connection as a protocol
/// whose server speaks first.
const DETECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a connection's original destination is one of the sidecar's own capture ports.
/// Such a connection (e.g. a caller dialing `<pod-ip>:15006` directly) would be forwarded back
/// to the same listener forever, so both directions refuse it, as Envoy's listeners do.
pub fn addressed_to_proxy(dst: SocketAddr) -> bool {
    matches!(dst.port(), OUTBOUND_PORT | INBOUND_PORT)
}

/// What every connection handler shares.
pub struct Proxy {
    pub id: SpiffeId,
    pub tls: MeshTls,
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
        tls,
        endpoints: snapshot.table(),
        metrics,
        detect_timeout: DETECT_TIMEOUT,
    });

    let outbound_listener = bind(OUTBOUND_PORT).await?;
    let inbound_listener = bind(INBOUND_PORT).await?;
    readiness.set_ready();
    tracing::info!("ready");

    tokio::select! {
        () = accept(outbound_listener, proxy.clone(), "outbound", |p, tcp| async move {
            outbound::handle(p, tcp).await.map_err(|e| e.to_string())
        }) => {}
        () = accept(inbound_listener, proxy, "inbound", |p, tcp| async move {
            inbound::handle(p, tcp).await.map_err(|e| e.to_string())
        }) => {}
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
    F: Future<Output = Result<(), String>> + Send + 'static,
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
