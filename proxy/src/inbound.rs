//! Inbound: the only way to the app.
//!
//! Two doors lead in: the tunnel port 15008 ([`tunnel`]), where Remora sidecars send everything
//! for this pod over mesh mTLS, and the capture port 15006 ([`capture`]), where everything else
//! is redirected: Istio sidecars' mTLS (told apart by ALPN), the app's own TLS, plaintext. Every
//! door ends the same way: it describes what it accepted as an [`InboundConn`] (who called,
//! which app port, how the caller was authenticated, what it speaks), which only
//! `Inbound::connection` makes, past the connection-level policy hook; then the connection is
//! served by exactly one of `tcp` (the only byte path to the app) or `http` (the only HTTP
//! service in front of it), where the per-request hook sits. The app client and the way to dial
//! the app are private to this module: nothing outside it can reach the app.
//!
//! Everything reaches the app from 127.0.0.6 (or `::6`) so it is not captured again.

mod app_client;
pub mod app_health;
mod authorize;
pub mod capture;
mod http;
mod tcp;
pub mod tunnel;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ::http::HeaderValue;
use remora_api::{peer_authn::MtlsMode, protocol::Declared, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    access_log::{Direction, Downstream},
    config::Config,
    detect::{Protocol, DETECT_TIMEOUT},
    drain::Drain,
    headers,
    listen::ConnectionError,
    metrics::{Metrics, Recorder, Security},
    overload::{Listener, Overload, RequestGate},
    prefixed::PrefixedIo,
    respond::RequestError,
    tls::MeshTls,
};

use app_client::AppClient;

/// What the inbound side shares across connections.
pub struct Inbound {
    id: SpiffeId,
    config: Arc<Config>,
    tls: MeshTls,
    app: AppClient,
    metrics: Arc<Metrics>,
    overload: Arc<Overload>,
    drain: Drain,
    detect_timeout: Duration,
}

/// How the caller of an inbound connection proved who it is, if at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTls {
    /// A Remora sidecar, through the tunnel port (mesh mTLS, identity verified).
    Tunnel(SpiffeId),
    /// An Istio sidecar's mTLS on the capture port, told apart by its ALPN (identity verified).
    IstioMtls(SpiffeId),
    /// TLS the app terminates itself: opaque to the sidecar.
    AppTls,
    /// No TLS at all.
    Plaintext,
}

impl PeerTls {
    /// The verified mesh identity of the caller.
    pub fn peer(&self) -> Option<&SpiffeId> {
        match self {
            PeerTls::Tunnel(peer) | PeerTls::IstioMtls(peer) => Some(peer),
            PeerTls::AppTls | PeerTls::Plaintext => None,
        }
    }

    /// Istio's `connection_security_policy`.
    pub fn security(&self) -> Security {
        match self.peer() {
            Some(_) => Security::MutualTls,
            None => Security::None,
        }
    }
}

/// One connection (or, through the tunnel, one app port of a caller sidecar's connection) that
/// has been let in.
pub struct InboundConn {
    client: SocketAddr,
    app: SocketAddr,
    tls: PeerTls,
    protocol: Protocol,
    /// The server name the caller's mesh TLS asked for (AuthorizationPolicy `connection.sni`).
    sni: Option<Arc<str>>,
    /// What its requests and bytes are counted (and logged) by.
    recorder: Recorder,
}

impl InboundConn {
    /// The caller's address.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The app port the caller asked for (on this pod's address).
    pub fn app(&self) -> SocketAddr {
        self.app
    }

    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

impl Inbound {
    pub fn new(
        id: SpiffeId,
        config: Arc<Config>,
        tls: MeshTls,
        metrics: Arc<Metrics>,
        overload: Arc<Overload>,
        drain: Drain,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            config,
            tls,
            app: AppClient::new(),
            metrics,
            overload,
            drain,
            detect_timeout: DETECT_TIMEOUT,
        })
    }

    /// Lets a connection from `client` to the app at `app` in: the connection-level policy
    /// hook, the one place every door passes before a byte reaches the app. PeerAuthentication
    /// is enforced here, and AuthorizationPolicy for anything that is not HTTP (HTTP is decided
    /// per request, in `http`).
    fn connection(
        &self,
        client: SocketAddr,
        app: SocketAddr,
        tls: PeerTls,
        protocol: Protocol,
        sni: Option<Arc<str>>,
    ) -> Result<InboundConn, RequestError> {
        let snapshot = self.config.load();
        let series = self.metrics.inbound(
            &snapshot,
            client.ip(),
            tls.peer(),
            app.port(),
            tls.security(),
        );
        let downstream = Downstream {
            local: Some(app),
            remote: Some(client),
            server_name: sni.clone(),
        };
        let recorder = self.metrics.recorder(Direction::Server, series, downstream);
        let conn = InboundConn {
            client,
            app,
            tls,
            protocol,
            sni,
            recorder,
        };
        authorize::connection(&snapshot, &self.metrics, &conn)?;
        Ok(conn)
    }

    /// Whether `conn`, let in earlier, is still let in by the snapshot in use.
    fn still_allowed(&self, conn: &InboundConn) -> bool {
        authorize::connection(&self.config.load(), &self.metrics, conn).is_ok()
    }

    /// What app port `port` declares it speaks, and its PeerAuthentication mode.
    fn port_settings(&self, port: u16) -> (Declared, MtlsMode) {
        let snapshot = self.config.load();
        (
            snapshot.inbound_ports.declared(port),
            snapshot.security.mtls.mode(port),
        )
    }

    /// What lets the requests of connections that came in through `door` in.
    fn requests(&self, door: Listener) -> RequestGate {
        RequestGate {
            overload: self.overload.clone(),
            listener: door,
        }
    }

    /// Envoy's `x-forwarded-client-cert` for the callers of `conn`.
    fn forwarded_client_cert(&self, conn: &InboundConn) -> Option<HeaderValue> {
        conn.tls
            .peer()
            .map(|peer| headers::forwarded_client_cert(&self.id, peer))
    }
}

/// Serves a connection that was let in: request by request for HTTP, spliced otherwise.
async fn serve<IO>(
    inbound: Arc<Inbound>,
    conn: InboundConn,
    io: PrefixedIo<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match conn.protocol {
        Protocol::Http1 | Protocol::Http2 => http::serve(inbound, conn, io).await,
        // Boxed: inline, a splice's state would size the task of every connection, the HTTP
        // ones (most of them) included.
        Protocol::Tls | Protocol::Opaque => Box::pin(tcp::serve(&inbound, &conn, io)).await,
    }
}
