//! Wiring: binds the status listeners first so `/healthz/ready` answers "not ready" until the
//! sidecar has its certificate (files, or the mesh CA) and its config (static, or the discovery
//! stream) and its capture listeners are up, then runs them. A bad bootstrap or certificate file
//! stops the sidecar before it binds anything.

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context;
use http::{Request, Response};
use hyper::body::Incoming;
use remora_api::{proto::config::Node, Bootstrap, IdentitySource, Snapshot, SpiffeId};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{
    admin::{Admin, LogControl},
    body::Body,
    config::Config,
    control_plane::ControlPlane,
    discovery::Subscription,
    drain::Drain,
    identity::{ca::CaClient, load_roots, rotation, CurrentCert, Identity},
    inbound::{self, Inbound},
    listen::{self, Accepted, Destination, Lifetime},
    metrics::{Metrics, Own},
    outbound::{self, Outbound},
    overload::{ConnectionPermit, Listener, Overload},
    ports, serve,
    status::{self, Readiness, StatusPort},
    tls::MeshTls,
    tunnel::TunnelClient,
};

/// Runs the sidecar until `shutdown` completes (or a drain is requested over admin), then
/// drains and returns.
pub async fn run(
    bootstrap: Bootstrap,
    shutdown: impl Future<Output = ()>,
    log: LogControl,
) -> anyhow::Result<()> {
    let id = bootstrap.spiffe_id().context("bootstrap identity")?;
    // Certificate files are checked before anything is bound: a bad one is a config error.
    let from_files = match &bootstrap.identity {
        IdentitySource::Files(files) => Some(
            Identity::load(files, &id)
                .with_context(|| format!("loading the workload identity of {id}"))?,
        ),
        IdentitySource::Ca(_) => None,
    };
    let metrics = Arc::new(Metrics::new(Some(Own {
        namespace: bootstrap.metadata.namespace.clone(),
        pod: bootstrap.metadata.pod_name.clone(),
        id: id.clone(),
    })));
    let readiness = Readiness::default();
    let drain = Drain::default();
    let config = Arc::new(Config::default());
    tokio::spawn(metrics.clone().follow(config.clone()));
    for listener in listen::bind_all(ports::HEALTH).context("binding the health port")? {
        let readiness = readiness.clone();
        tokio::spawn(serve_status(listener, "health", move |req| {
            std::future::ready(status::health(&readiness, &req))
        }));
    }
    for listener in listen::bind_all(ports::STATS).context("binding the stats port")? {
        let metrics = metrics.clone();
        tokio::spawn(serve_status(listener, "stats", move |req| {
            std::future::ready(status::stats(&metrics, &req))
        }));
    }
    let status_port = Arc::new(StatusPort {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        probers: bootstrap.app_probers.clone(),
        app_metrics: bootstrap
            .app_metrics
            .as_ref()
            .and_then(|m| m.target().map(|(port, path)| (port, path.to_owned()))),
        pod_ip: bootstrap
            .metadata
            .instance_ip
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    });
    for listener in listen::bind_all(ports::STATUS).context("binding the status port")? {
        let status_port = status_port.clone();
        tokio::spawn(serve_status(listener, "status", move |req| {
            let status_port = status_port.clone();
            async move { status_port.handle(req).await }
        }));
    }

    tokio::pin!(shutdown);
    // Not ready until the sidecar has both its certificate and its config; a signal meanwhile
    // stops it without draining (nothing is being served yet).
    let started = tokio::select! {
        started = start(&bootstrap, from_files, &id, &config, &metrics) => started?,
        () = &mut shutdown => {
            tracing::info!("shutdown signal before the sidecar was ready");
            return Ok(());
        }
    };
    let tls = MeshTls::new(&started.identity).context("building mesh TLS")?;
    let admin = Arc::new(Admin {
        bootstrap: serde_json::to_value(&bootstrap).context("serialising the config dump")?,
        config: config.clone(),
        cert: started.identity.cert.clone(),
        drain: drain.clone(),
        log,
        metrics: metrics.clone(),
    });
    let admin_listener = listen::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, ports::ADMIN)))
        .context("binding the admin port")?;
    tokio::spawn(serve_status(admin_listener, "admin", move |req| {
        std::future::ready(admin.handle(&req))
    }));
    tracing::info!(
        id = %started.identity.id,
        serial = %started.identity.cert.get().serial,
        version = %config.load().version(),
        destinations = config.load().destination_count(),
        "identity and config loaded"
    );
    let overload = Overload::new(config.clone(), metrics.clone());
    let outbound = Outbound::new(
        config.clone(),
        TunnelClient::new(tls.clone()),
        metrics.clone(),
        overload.clone(),
        drain.clone(),
    );
    let inbound = Inbound::new(
        started.identity.id.clone(),
        config.clone(),
        tls,
        metrics,
        overload.clone(),
        drain.clone(),
    );
    // Outbound keeps accepting through a drain: the app may still be shutting down and need
    // to call out. Inbound doors close when it starts.
    spawn_listeners(
        ports::OUTBOUND,
        "outbound",
        Lifetime::ThroughDrain(drain.clone()),
        Destination::Original,
        admit(&overload, Listener::Outbound),
        move |accepted| outbound::handle(outbound.clone(), accepted),
    )?;
    let capture = inbound.clone();
    spawn_listeners(
        ports::INBOUND,
        "inbound",
        Lifetime::UntilDrain(drain.clone()),
        Destination::OriginalLocal,
        admit(&overload, Listener::Inbound),
        move |accepted| inbound::capture::handle(capture.clone(), accepted),
    )?;
    spawn_listeners(
        ports::TUNNEL,
        "tunnel",
        Lifetime::UntilDrain(drain.clone()),
        Destination::Listener,
        admit(&overload, Listener::Tunnel),
        move |accepted| inbound::tunnel::handle(inbound.clone(), accepted),
    )?;
    readiness.set_ready();
    tracing::info!("ready");

    tokio::select! {
        () = shutdown => tracing::info!("shutdown signal: draining"),
        () = drain.started() => {}
    }
    // The mesh's `defaultConfig.drainDuration` (or the pod's override) wins over the bootstrap.
    let drain_duration = config
        .load()
        .mesh
        .drain_duration
        .unwrap_or_else(|| bootstrap.drain_duration());
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

/// What the sidecar needs before it can serve.
struct Started {
    identity: Identity,
}

/// Gets the workload certificate (from files, or from the CA, then keeps it renewed) and the
/// first snapshot (static, or from the discovery stream, which then keeps it current).
async fn start(
    bootstrap: &Bootstrap,
    from_files: Option<Identity>,
    id: &SpiffeId,
    config: &Arc<Config>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Started> {
    let identity = match (&bootstrap.identity, from_files) {
        (_, Some(identity)) => identity,
        (IdentitySource::Files(_), None) => anyhow::bail!("certificate files were not loaded"),
        (IdentitySource::Ca(ca), None) => {
            let roots = load_roots(&ca.roots).context("loading the mesh root certificate")?;
            let channel = ControlPlane::new(&ca.address, roots.clone(), None)
                .context("CA address")?
                .channel(true)
                .await
                .context("CA address")?;
            let client = CaClient::new(channel, id.clone(), ca.token.clone(), ca.ttl);
            // Without a certificate the sidecar cannot serve at all: wait for one.
            let issued = rotation::fetch(&client, "no certificate yet; retrying").await;
            tracing::info!(serial = %issued.serial, "certificate issued by the CA");
            metrics.certificate(&issued);
            let cert = Arc::new(CurrentCert::new(issued));
            tokio::spawn(rotation::run(client, cert.clone(), metrics.clone()));
            Identity {
                id: id.clone(),
                roots,
                cert,
            }
        }
    };
    match (&bootstrap.static_snapshot, &bootstrap.control_plane) {
        (Some(snapshot), _) => {
            let snapshot =
                Snapshot::try_from(snapshot.clone()).context("invalid static snapshot")?;
            config.store(snapshot);
        }
        (None, Some(address)) => {
            let control_plane =
                ControlPlane::new(address, identity.roots.clone(), Some(identity.cert.clone()))
                    .context("control-plane address")?;
            let (first, applied) = oneshot::channel();
            tokio::spawn(
                Subscription {
                    control_plane,
                    node: Node {
                        pod_name: bootstrap.metadata.pod_name.clone(),
                        namespace: bootstrap.metadata.namespace.clone(),
                        ip: bootstrap
                            .metadata
                            .instance_ip
                            .map(|ip| ip.to_string())
                            .unwrap_or_default(),
                    },
                    trust_domain: bootstrap.trust_domain.clone(),
                    config: config.clone(),
                    metrics: metrics.clone(),
                }
                .run(first),
            );
            applied
                .await
                .context("the discovery stream stopped before the first snapshot")?;
        }
        (None, None) => anyhow::bail!("the bootstrap gives no config source"),
    }
    Ok(Started { identity })
}

/// What lets connections to `listener` in.
fn admit(
    overload: &Arc<Overload>,
    listener: Listener,
) -> impl Fn() -> Option<ConnectionPermit> + Clone + Send + 'static {
    let overload = overload.clone();
    move || overload.admit(listener)
}

/// Binds `port` and accepts connections on it that `admit` lets in with `handle` for
/// `lifetime`.
fn spawn_listeners<A, H, F>(
    port: u16,
    name: &'static str,
    lifetime: Lifetime,
    destination: Destination,
    admit: A,
    handle: H,
) -> anyhow::Result<()>
where
    A: Fn() -> Option<ConnectionPermit> + Clone + Send + 'static,
    H: Fn(Accepted) -> F + Clone + Send + 'static,
    F: Future<Output = Result<(), listen::ConnectionError>> + Send + 'static,
{
    for listener in listen::bind_all(port).with_context(|| format!("binding the {name} port"))? {
        tokio::spawn(listen::accept(
            listener,
            name,
            lifetime.clone(),
            destination,
            admit.clone(),
            handle.clone(),
        ));
    }
    Ok(())
}

/// Serves one of the sidecar's own HTTP endpoints; they stay up through a drain.
async fn serve_status<H, F>(listener: TcpListener, name: &'static str, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let never = Drain::default();
    listen::accept(
        listener,
        name,
        Lifetime::Forever,
        Destination::Listener,
        || Some(()),
        move |accepted| {
            let handle = handle.clone();
            let never = never.clone();
            async move {
                let service = tower::service_fn(move |req| {
                    let response = handle(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                serve::http1(accepted.io, &never, service).await
            }
        },
    )
    .await
}
