//! Binding listeners (IPv4, plus IPv6 when the pod has it) and accepting connections on them.

use std::{
    fmt::Display,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::drain::Drain;

/// Listeners on `port` for every address family the pod has: `0.0.0.0` always, `[::]` (IPv6
/// only, so the two never overlap) unless the kernel has IPv6 turned off.
pub fn bind_all(port: u16) -> io::Result<Vec<TcpListener>> {
    let mut listeners = vec![bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?];
    match bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
        Ok(listener) => listeners.push(listener),
        Err(error) if error.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::debug!(port, "no IPv6 in this pod");
        }
        Err(error) if error.raw_os_error() == Some(97) => {
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

/// Accepts connections and runs `handle` on each. With a `drain`, connections are work the
/// drain waits for and accepting stops when it starts; without, it goes on for good.
pub async fn accept<H, F, E>(
    listener: TcpListener,
    name: &'static str,
    drain: Option<Drain>,
    handle: H,
) where
    H: Fn(TcpStream) -> F,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    loop {
        let accepted = match &drain {
            Some(drain) => tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.started() => return,
            },
            None => listener.accept().await,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, listener = name, "accept failed");
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY");
        }
        let conn = handle(tcp);
        let task = async move {
            if let Err(error) = conn.await {
                tracing::info!(%error, %peer, listener = name, "connection failed");
            }
        };
        match &drain {
            Some(drain) => drain.spawn(task),
            None => {
                tokio::spawn(task);
            }
        }
    }
}
