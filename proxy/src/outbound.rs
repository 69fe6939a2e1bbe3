//! Outbound: connections the app opens, redirected to 15001, and the only way out to the mesh.
//!
//! Per connection, its original destination is looked up once ([`remora_api::Snapshot::lookup`])
//! as a logical target: a Service port (its routes kept current by `routes`, its backends'
//! endpoints balanced per request by [`balance`]), a mesh workload, an address outside the
//! registry (passed through untouched under `ALLOW_ANY`), or a black hole (`REGISTRY_ONLY`).
//! What the connection speaks is what the Service port declares, else what its first bytes
//! say ([`crate::detect::detect_declared`]): a port declared TCP is not read first, one
//! declared HTTP is always HTTP (TLS only as a whole ClientHello). HTTP/1.x and HTTP/2 are then
//! served request by request by `http` (routing, retries, mirrors); anything else (opaque TCP,
//! the app's own TLS, protocols whose server speaks first) by `tcp`, on one endpoint of the
//! port for the connection's life. Endpoints with a sidecar are reached
//! through the tunnel ([`crate::tunnel::client`]), which checks the identity the snapshot names;
//! endpoints without one directly, in the clear.

pub mod balance;
mod dns;
mod filters;
mod http;
mod mirror;
mod originate;
mod retry;
mod routes;
mod send;
mod tcp;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use remora_api::{
    protocol::Declared,
    route::{DestinationPolicy, Target},
    Logical,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};

use crate::{
    access_log::{Direction, Downstream},
    config::Config,
    detect::{detect_declared, Detected, Protocol, DETECT_TIMEOUT},
    drain::Drain,
    http_client::{Connect, HttpClient},
    listen::{Accepted, ConnectionError},
    metrics::{Metrics, Recorder, Series, Unresolved},
    overload::{Listener, Overload, RequestGate},
    prefixed::PrefixedIo,
    respond::RequestError,
    tls, transport,
    tunnel::TunnelClient,
};

use balance::{Balancers, Original, Upstream};
use routes::{PortRoutes, Routes};

/// What the outbound side shares across connections.
pub struct Outbound {
    config: Arc<Config>,
    tunnel: TunnelClient,
    /// For endpoints that run no sidecar.
    direct: HttpClient<Direct>,
    balancers: Balancers,
    routes: Routes,
    metrics: Arc<Metrics>,
    /// Lets its requests in (or not).
    requests: RequestGate,
    drain: Drain,
    detect_timeout: Duration,
}

impl Outbound {
    /// The outbound side over `config`; its balancers follow every config push.
    pub fn new(
        config: Arc<Config>,
        tunnel: TunnelClient,
        metrics: Arc<Metrics>,
        overload: Arc<Overload>,
        drain: Drain,
    ) -> Arc<Self> {
        let changes = config.changes();
        let outbound = Arc::new(Self {
            config,
            tunnel,
            direct: HttpClient::with_connector(Direct),
            balancers: Balancers::default(),
            routes: Routes::default(),
            metrics,
            requests: RequestGate {
                overload,
                listener: Listener::Outbound,
            },
            drain,
            detect_timeout: DETECT_TIMEOUT,
        });
        tokio::spawn(follow_config(Arc::downgrade(&outbound), changes));
        outbound
    }
}

/// Hands each balancer its backend's endpoints, then each port in use its routes, from every
/// snapshot put in use and every change of what its names resolve to (names new to a
/// snapshot are resolved before it is used).
async fn follow_config(outbound: Weak<Outbound>, mut changes: watch::Receiver<()>) {
    let Some(mut resolved) = outbound.upgrade().map(|o| o.balancers.dns.changes()) else {
        return;
    };
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = resolved.changed() => {}
            }
        }
        let Some(outbound) = outbound.upgrade() else {
            return;
        };
        let snapshot = outbound.config.load();
        outbound.balancers.dns.track(snapshot.dns_names()).await;
        outbound.balancers.update(&snapshot, &outbound.tunnel);
        outbound
            .routes
            .update(&snapshot, &outbound.tunnel, &outbound.balancers);
    }
}

/// Where the requests (or the bytes) of one app connection go.
enum Backend {
    /// A Service port: each request routed (opaque TCP to one of the port's endpoints).
    Routed(Arc<PortRoutes>),
    /// One workload.
    Fixed(Arc<Upstream>),
    /// Nowhere (`REGISTRY_ONLY`).
    Blackhole(SocketAddr),
}

impl Backend {
    /// The endpoint of a connection that is not HTTP, whose ClientHello (if TLS) names `sni`:
    /// by the port's first `tcp`/`tls` route that takes it (its backend chosen by weight), else
    /// one of the port's own endpoints.
    fn pick(&self, sni: Option<&str>, original: &Original) -> Result<Arc<Upstream>, RequestError> {
        match self {
            Backend::Routed(routes) => {
                let resolved = routes.load();
                let balancer = match resolved.port.routes.select_tcp(sni) {
                    None => &resolved.own,
                    Some(route) => {
                        let share =
                            route
                                .split(rand::random())
                                .map_err(|e| RequestError::NoBackend {
                                    status: e.status,
                                    reason: e.reason,
                                })?;
                        match &share.target {
                            Target::Backend(index) => &resolved.balancers[*index],
                            Target::Unresolved { status, reason } => {
                                return Err(RequestError::NoBackend {
                                    status: *status,
                                    reason: reason.clone(),
                                })
                            }
                        }
                    }
                };
                balancer.pick(&[], original).map_err(retry::no_upstream)
            }
            Backend::Fixed(upstream) => Ok(upstream.clone()),
            Backend::Blackhole(dst) => Err(RequestError::Blackhole(*dst)),
        }
    }

    /// What this connection's requests are recorded by (counted under its series until an
    /// upstream answers one).
    fn recorder(&self, outbound: &Outbound, downstream: Downstream) -> Recorder {
        let series = self.series(outbound);
        outbound
            .metrics
            .recorder(Direction::Client, series, downstream)
    }

    fn series(&self, outbound: &Outbound) -> Arc<Series> {
        let snapshot = outbound.config.load();
        let metrics = &outbound.metrics;
        match self {
            Backend::Routed(routes) => metrics.outbound_unresolved(
                &snapshot,
                Unresolved::Service(&routes.load().port.key.hostname),
            ),
            Backend::Fixed(upstream) => upstream.series(metrics, &outbound.config).clone(),
            Backend::Blackhole(_) => metrics.outbound_unresolved(&snapshot, Unresolved::Blackhole),
        }
    }

    /// Whether choosing this connection's endpoint reads its ClientHello's server name.
    fn routes_by_sni(&self) -> bool {
        matches!(self, Backend::Routed(routes) if !routes.load().port.routes.tcp_routes().is_empty())
    }
}

pub async fn handle<IO>(
    outbound: Arc<Outbound>,
    accepted: Accepted<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = outbound.metrics.open("outbound");
    let downstream = Downstream {
        local: Some(accepted.orig_dst),
        remote: Some(accepted.client),
        server_name: None,
    };
    let logical = outbound.config.load().lookup(accepted.orig_dst);
    let declared = match &logical {
        Logical::Service(port) => port.protocol,
        _ => Declared::Undeclared,
    };
    let backend = match logical {
        Logical::Passthrough(dst) => {
            // Not in the mesh registry: passed through as addressed.
            return Box::pin(passthrough(&outbound, dst, accepted.io, downstream)).await;
        }
        Logical::Service(port) => Backend::Routed(outbound.routes.get(
            &port,
            &outbound.config,
            &outbound.tunnel,
            &outbound.balancers,
        )),
        Logical::Workload(endpoint) => Backend::Fixed(Arc::new(Upstream::new(
            &outbound.tunnel,
            endpoint,
            None,
            &DestinationPolicy::default(),
            None,
        ))),
        Logical::Blackhole(dst) => Backend::Blackhole(dst),
    };
    let original = Original::new(accepted.orig_dst);
    // Routes that match by server name need the ClientHello read, whatever the port declares.
    let declared = match declared {
        Declared::Tcp if backend.routes_by_sni() => Declared::Tls,
        declared => declared,
    };
    let detected = detect_declared(accepted.io, declared, outbound.detect_timeout).await?;
    outbound
        .metrics
        .connection("outbound", detected.protocol.name());
    match detected.protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let io = detected.io;
            http::serve(
                outbound,
                backend,
                original,
                detected.protocol,
                io,
                downstream,
            )
            .await
        }
        // Boxed: inline, the state of a TCP or TLS connection would size the task of every
        // connection, the HTTP ones (most of them) included.
        Protocol::Tls | Protocol::Opaque => {
            Box::pin(forward_opaque(
                outbound, backend, original, declared, detected, downstream,
            ))
            .await
        }
    }
}

/// Forwards a connection that is not HTTP to an endpoint of `backend`: TLS by its ClientHello's
/// server name when routes match on it, anything else as it is.
async fn forward_opaque<IO>(
    outbound: Arc<Outbound>,
    backend: Backend,
    original: Original,
    declared: Declared,
    detected: Detected<IO>,
    downstream: Downstream,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if detected.protocol == Protocol::Tls && (backend.routes_by_sni() || declared == Declared::Http)
    {
        let (hello, io) = tls::client_hello(detected.io, outbound.detect_timeout).await?;
        // On a port declared HTTP, TLS is the app's own only as a whole ClientHello.
        if hello.is_none() && declared == Declared::Http {
            return Err(ConnectionError::NotHttp);
        }
        let server_name = hello.and_then(|hello| hello.server_name);
        let upstream = backend.pick(server_name.as_deref(), &original);
        let recorder = backend.recorder(&outbound, downstream);
        return tcp::forward(&outbound, upstream, io, recorder).await;
    }
    let upstream = backend.pick(None, &original);
    let recorder = backend.recorder(&outbound, downstream);
    tcp::forward(&outbound, upstream, detected.io, recorder).await
}

/// Splices a connection to `dst`, outside the mesh registry, as addressed.
async fn passthrough<IO>(
    outbound: &Outbound,
    dst: SocketAddr,
    io: IO,
    downstream: Downstream,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    outbound.metrics.connection("outbound", "passthrough");
    let upstream = transport::connect(dst).await?;
    let snapshot = outbound.config.load();
    let metrics = &outbound.metrics;
    let series = metrics.outbound_unresolved(&snapshot, Unresolved::Passthrough);
    let recorder = metrics.recorder(Direction::Client, series, downstream);
    let mut record = recorder.tcp();
    record.upstream(dst, None);
    transport::splice_recorded(record, PrefixedIo::unread(io), upstream).await?;
    Ok(())
}

/// Dials endpoints that run no sidecar, as addressed.
#[derive(Clone, Copy)]
struct Direct;

impl Connect for Direct {
    type Io = TcpStream;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        transport::connect(addr)
    }
}
