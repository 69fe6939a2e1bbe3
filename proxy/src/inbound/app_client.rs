//! The inbound side's only ways to the app: pooled HTTP, and single connections for the TCP
//! path and upgrades, all dialled from the passthrough source.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::net::{TcpSocket, TcpStream};

use crate::{
    http_client::{Connect, HttpClient},
    transport::within_connect_timeout,
};

/// Source address for traffic the sidecar hands to its own app. Istio's iptables rules exempt
/// it (`-o lo -s 127.0.0.6/32 -j RETURN`) so the connection is not captured a second time.
const INBOUND_PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// The IPv6 twin (`-o lo -s ::6/128 -j RETURN`); `remora-init --dual-stack` puts it on `lo`.
const INBOUND_PASSTHROUGH_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

pub(super) type AppClient = HttpClient<ToApp>;

impl AppClient {
    pub(super) fn new() -> Self {
        HttpClient::with_connector(ToApp)
    }
}

/// Dials the local app.
#[derive(Clone, Copy)]
pub(super) struct ToApp;

impl Connect for ToApp {
    type Io = TcpStream;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        connect_to_app(addr)
    }
}

/// Dials the local app at `dst` from [`INBOUND_PASSTHROUGH_SOURCE`] (or its IPv6 twin).
pub(super) async fn connect_to_app(dst: SocketAddr) -> io::Result<TcpStream> {
    let (socket, source) = match dst.ip() {
        IpAddr::V4(_) => (TcpSocket::new_v4()?, IpAddr::V4(INBOUND_PASSTHROUGH_SOURCE)),
        IpAddr::V6(_) => (
            TcpSocket::new_v6()?,
            IpAddr::V6(INBOUND_PASSTHROUGH_SOURCE_V6),
        ),
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = within_connect_timeout(socket.connect(dst)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}
