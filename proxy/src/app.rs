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
use http::{Request, Response};
use hyper::body::Incoming;
use remora_api::{Bootstrap, EndpointTable, IdentitySource, SpiffeId};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    admin::{Admin, LogControl},
    body::Body,
    drain::Drain,
    identity::Identity,
    inbound::{self, app::AppClient},
    listen::{self, Lifetime},
    metrics::Metrics,
    outbound::{
        self,
        mesh::{MeshClient, MeshError},
    },
    serve,
    status::{self, Readiness},
    tls::{MeshTls, TlsError},
    transport::original_dst,
};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub use crate::outbound::mesh::TUNNEL_PORT;
pub const ADMIN_PORT: u16 = 15000;
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
    #[error("refusing an inbound connection addressed to {0}, not to this pod")]
    NotThisPod(SocketAddr),
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
    pub drain: Drain,
    pub detect_timeout: Duration,
}

/// Runs the sidecar until `shutdown` completes (or a drain is requested over admin), then
/// drains and returns.
pub async fn run(
    bootstrap: Bootstrap,
    shutdown: impl Future<Output = ()>,
    log: LogControl,
) -> anyhow::Result<()> {
    let id = bootstrap.spiffe_id().context("bootstrap identity")?;
    let identity = match &bootstrap.identity {
        IdentitySource::Files(files) => Identity::load(files, &id)
            .with_context(|| format!("loading the workload identity of {id}"))?,
    };
    let tls = MeshTls::new(&identity).context("building mesh TLS")?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let drain = Drain::default();
    let drain_duration = bootstrap.drain_duration();
    let admin = Arc::new(Admin {
        config_dump: serde_json::to_vec_pretty(&bootstrap)
            .context("serialising the config dump")?
            .into(),
        drain: drain.clone(),
        log,
        metrics: metrics.clone(),
    });
    for listener in listen::bind_all(HEALTH_PORT).context("binding the health port")? {
        let readiness = readiness.clone();
        tokio::spawn(serve_status(listener, "health", move |req| {
            status::health(&readiness, &req)
        }));
    }
    for listener in listen::bind_all(STATS_PORT).context("binding the stats port")? {
        let metrics = metrics.clone();
        tokio::spawn(serve_status(listener, "stats", move |req| {
            status::stats(&metrics, &req)
        }));
    }
    let admin_listener = listen::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT)))
        .context("binding the admin port")?;
    tokio::spawn(serve_status(admin_listener, "admin", move |req| {
        admin.handle(&req)
    }));

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
        drain: drain.clone(),
        detect_timeout: DETECT_TIMEOUT,
    });

    let until_drain = Lifetime::UntilDrain(drain.clone());
    let through_drain = Lifetime::ThroughDrain(drain.clone());
    spawn_listeners(
        OUTBOUND_PORT,
        "outbound",
        &proxy,
        through_drain,
        outbound::handle,
    )?;
    spawn_listeners(
        INBOUND_PORT,
        "inbound",
        &proxy,
        until_drain.clone(),
        inbound::handle,
    )?;
    spawn_listeners(
        TUNNEL_PORT,
        "tunnel",
        &proxy,
        until_drain,
        inbound::tunnel::handle,
    )?;
    readiness.set_ready();
    tracing::info!("ready");

    tokio::select! {
        () = shutdown => tracing::info!("shutdown signal: draining"),
        () = drain.started() => {}
    }
    readiness.set_draining();
    drain.start();
    match drain.finish(drain_duration).await {
        Ok(()) => tracing::info!("drained"),
        Err(open) => tracing::warn!(
            open,
            ?drain_duration,
            "drain duration passed with connections still open"
        ),
    }
    Ok(())
}

/// Binds `port` and accepts connections on it with `handle` for `lifetime`.
fn spawn_listeners<H, F>(
    port: u16,
    name: &'static str,
    proxy: &Arc<Proxy>,
    lifetime: Lifetime,
    handle: H,
) -> anyhow::Result<()>
where
    H: Fn(Arc<Proxy>, TcpStream) -> F + Copy + Send + 'static,
    F: Future<Output = Result<(), ConnectionError>> + Send + 'static,
{
    for listener in listen::bind_all(port).with_context(|| format!("binding the {name} port"))? {
        let proxy = proxy.clone();
        tokio::spawn(listen::accept(
            listener,
            name,
            lifetime.clone(),
            move |tcp| handle(proxy.clone(), tcp),
        ));
    }
    Ok(())
}

/// Serves one of the sidecar's own HTTP endpoints; they stay up through a drain.
async fn serve_status<H>(listener: TcpListener, name: &'static str, handle: H)
where
    H: Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    let never = Drain::default();
    listen::accept(listener, name, Lifetime::Forever, move |tcp| {
        let handle = handle.clone();
        let never = never.clone();
        async move {
            serve::http1(tcp, &never, move |req| {
                let response = handle(req);
                async move { response }
            })
            .await
        }
    })
    .await
}
