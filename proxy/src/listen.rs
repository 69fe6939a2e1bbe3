//! Binding listeners (IPv4, plus IPv6 when the pod has it) and accepting connections on them.
//!
//! Every connection leaves here as an [`Accepted`]: who called, where the connection was headed
//! (read once, from `SO_ORIGINAL_DST` for a captured one) and the stream. The forwarding-loop
//! check happens here too, once: a captured connection addressed to one of the sidecar's own
//! ports would come straight back to it. Handlers never touch the socket's options, so they run
//! over any stream (in-process tests use pipes).

use std::{
    fmt::Display,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    drain::Drain, ports::is_proxy_port, respond::RequestError, tls::TlsError,
    transport::original_dst, tunnel::TunnelError,
};

/// One accepted connection and where it was headed.
pub struct Accepted<IO = TcpStream> {
    /// The caller's address.
    pub client: SocketAddr,
    /// Where the caller meant to connect: the original destination of a captured connection,
    /// the listener's own address otherwise.
    pub orig_dst: SocketAddr,
    pub io: IO,
}

/// How a listener learns where its connections were headed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Captured outbound: anywhere the app dialled.
    Original,
    /// Captured inbound: REDIRECT accepts on the pod's own address, so an original destination
    /// elsewhere (loopback, another host) can only come from a forged packet, and must not be
    /// dialled from the passthrough source on its behalf.
    OriginalLocal,
    /// Not captured (the tunnel, the sidecar's own endpoints): the listener's address.
    Listener,
}

/// Why a connection ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("refusing a connection addressed to the sidecar's own port {0}")]
    Loop(SocketAddr),
    #[error("refusing an inbound connection addressed to {0}, not to this pod")]
    NotThisPod(SocketAddr),
    #[error("reading the original destination: {0}")]
    OriginalDst(#[source] io::Error),
    /// TLS on a port declared HTTP whose ClientHello was cut short or malformed: not passed
    /// to anyone as raw bytes.
    #[error("refusing an incomplete or malformed TLS ClientHello on a port declared HTTP")]
    NotHttp,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("mesh mTLS: {0}")]
    Tls(#[from] TlsError),
    #[error("mesh: {0}")]
    Tunnel(#[from] TunnelError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// Refused, or its upstream (the app) could not be reached.
    #[error("{0}")]
    Request(#[from] RequestError),
}

impl Destination {
    fn of(self, tcp: &TcpStream) -> Result<SocketAddr, ConnectionError> {
        let local = tcp.local_addr()?;
        if self == Destination::Listener {
            return Ok(local);
        }
        let dst = original_dst(tcp).map_err(ConnectionError::OriginalDst)?;
        if is_proxy_port(dst.port()) {
            return Err(ConnectionError::Loop(dst));
        }
        if self == Destination::OriginalLocal && dst.ip() != local.ip() {
            return Err(ConnectionError::NotThisPod(dst));
        }
        Ok(dst)
    }
}

/// Pause after a failed accept (e.g. EMFILE) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Listeners on `port` for every address family the pod has: `0.0.0.0` always, `[::]` (IPv6
/// only, so the two never overlap) unless the kernel has IPv6 turned off.
pub fn bind_all(port: u16) -> io::Result<Vec<TcpListener>> {
    let mut listeners = vec![bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?];
    match bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
        Ok(listener) => listeners.push(listener),
        Err(error) if error.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::debug!(port, "no IPv6 in this pod");
        }
        Err(error) if error.kind() == io::ErrorKind::Unsupported => {
            // EAFNOSUPPORT: IPv6 disabled in the kernel.
            tracing::debug!(port, "IPv6 not supported");
        }
        Err(error) => return Err(error),
    }
    Ok(listeners)
}

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = match addr.ip() {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How a listener lives through a drain.
#[derive(Clone)]
pub enum Lifetime {
    /// The sidecar's own endpoints: untouched by a drain, they answer until the process exits.
    Forever,
    /// Inbound: stop accepting when the drain starts; connections are work the drain waits for.
    UntilDrain(Drain),
    /// Outbound: the app may still be shutting down and need to call out, so keep accepting
    /// (each new connection closes after its first request); connections are drain work.
    ThroughDrain(Drain),
}

/// Accepts connections and runs `handle` on each that `admit` lets in (its permit held until
/// the connection ends; one it refuses is closed at once), for the listener's `lifetime`.
pub async fn accept<A, P, H, F, E>(
    listener: TcpListener,
    name: &'static str,
    lifetime: Lifetime,
    destination: Destination,
    admit: A,
    handle: H,
) where
    A: Fn() -> Option<P>,
    P: Send + 'static,
    H: Fn(Accepted) -> F,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    loop {
        let accepted = match &lifetime {
            Lifetime::UntilDrain(drain) => tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.started() => return,
            },
            Lifetime::Forever | Lifetime::ThroughDrain(_) => listener.accept().await,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(%error, listener = name, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = admit() else {
            tracing::debug!(%peer, listener = name, "over the connection limit: closed");
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY");
        }
        let orig_dst = match destination.of(&tcp) {
            Ok(orig_dst) => orig_dst,
            Err(error) => {
                tracing::info!(%error, %peer, listener = name, "connection failed");
                continue;
            }
        };
        let conn = handle(Accepted {
            client: peer,
            orig_dst,
            io: tcp,
        });
        let task = async move {
            if let Err(error) = conn.await {
                tracing::info!(%error, %peer, listener = name, "connection failed");
            }
            drop(permit);
        };
        match &lifetime {
            Lifetime::UntilDrain(drain) | Lifetime::ThroughDrain(drain) => drain.spawn(task),
            Lifetime::Forever => {
                tokio::spawn(task);
            }
        }
    }
}
