//! The client half of Remora's sidecar-to-sidecar protocol.
//!
//! All traffic to one peer sidecar (one pod IP and identity) shares one pooled HTTP/2 connection
//! over mTLS to the peer's tunnel port 15008: HTTP requests travel as HTTP/2 requests (their
//! original HTTP/1.x version and destination port in `remora-*` headers), and everything else
//! (opaque TCP, an app's own TLS, HTTP upgrades) as an HTTP/2 `CONNECT <ip:port>` stream, the
//! idea of Istio's HBONE.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::{
    header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::{body::Incoming, upgrade::Upgraded};
use remora_api::SpiffeId;

use crate::{
    body::{self, Body},
    headers,
    pool::{Dial, H2Pool, PoolError, PoolHandle},
    tls::{ClientStream, MeshTls},
    transport,
};

/// Istio's inbound tunnel port, exempt from capture; Remora sidecars accept mesh HTTP/2 on it.
pub const TUNNEL_PORT: u16 = 15008;
/// How long an unused connection to a peer sidecar stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("request has an invalid authority {0:?}")]
    Authority(String),
    #[error("peer refused the tunnel to {dst} with {status}")]
    TunnelRefused { dst: SocketAddr, status: StatusCode },
    #[error("tunnel upgrade: {0}")]
    Upgrade(#[source] hyper::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Peer {
    ip: IpAddr,
    identity: SpiffeId,
}

/// Dials a peer's tunnel port over mTLS, insisting on its expected identity.
struct PeerDialer<'a> {
    peer: &'a Peer,
    tls: &'a MeshTls,
}

impl Dial for PeerDialer<'_> {
    type Io = ClientStream;

    async fn dial(&self) -> Result<ClientStream, PoolError> {
        let addr = SocketAddr::new(self.peer.ip, TUNNEL_PORT);
        let tcp = transport::connect(addr)
            .await
            .map_err(|e| PoolError::Dial(format!("{addr}: {e}")))?;
        self.tls
            .connect(tcp, self.peer.ip, &self.peer.identity)
            .await
            .map_err(|e| PoolError::Dial(format!("{addr}: {e}")))
    }
}

pub struct MeshClient {
    tls: MeshTls,
    pool: Arc<H2Pool<Peer>>,
}

impl MeshClient {
    pub fn new(tls: MeshTls) -> Self {
        Self {
            tls,
            pool: H2Pool::new(IDLE_TIMEOUT),
        }
    }

    /// The way to `dst`, whose sidecar must be `identity`; one per app connection, so its
    /// requests go straight to the peer's pooled connection.
    pub fn route(&self, dst: SocketAddr, identity: SpiffeId) -> MeshRoute {
        let peer = Peer {
            ip: dst.ip(),
            identity,
        };
        MeshRoute {
            dst,
            dst_port: headers::dst_port_value(dst),
            handle: self.pool.handle(&peer),
            peer,
            tls: self.tls.clone(),
        }
    }
}

/// One mesh destination and its peer sidecar's pooled connection.
pub struct MeshRoute {
    dst: SocketAddr,
    dst_port: HeaderValue,
    peer: Peer,
    tls: MeshTls,
    handle: PoolHandle,
}

impl MeshRoute {
    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// Sends an app's HTTP request to the destination.
    pub async fn request(&self, mut req: Request<Body>) -> Result<Response<Incoming>, MeshError> {
        headers::strip_hop_by_hop(req.headers_mut());
        headers::strip_mesh(req.headers_mut());
        if let Some(orig) = headers::orig_proto_value(req.version()) {
            // HTTP/2 needs the authority in the URI; HTTP/1 had it in Host (or nowhere).
            let authority = match req.headers_mut().remove(header::HOST) {
                Some(host) => host
                    .to_str()
                    .map(str::to_owned)
                    .map_err(|_| MeshError::Authority(format!("{host:?}")))?,
                None => self.dst.to_string(),
            };
            *req.uri_mut() = absolute(&authority, req.uri().path_and_query())?;
            req.headers_mut().insert(headers::ORIG_PROTO, orig);
            *req.version_mut() = Version::HTTP_2;
        }
        req.headers_mut()
            .insert(headers::DST_PORT, self.dst_port.clone());
        Ok(self.send(req).await?)
    }

    /// Opens a byte stream to the destination. `carries` names the HTTP/1.x version spoken
    /// inside (an upgrade), so the peer serves it as HTTP and sanitises it; `None` means opaque
    /// bytes.
    pub async fn tunnel(&self, carries: Option<Version>) -> Result<Upgraded, MeshError> {
        let dst = self.dst;
        let mut connect = Request::new(body::empty());
        if let Some(proto) = carries.and_then(headers::orig_proto_value) {
            connect.headers_mut().insert(headers::ORIG_PROTO, proto);
        }
        *connect.method_mut() = Method::CONNECT;
        *connect.uri_mut() = dst
            .to_string()
            .parse()
            .map_err(|_| MeshError::Authority(dst.to_string()))?;
        *connect.version_mut() = Version::HTTP_2;
        let mut response = self.send(connect).await?;
        if response.status() != StatusCode::OK {
            return Err(MeshError::TunnelRefused {
                dst,
                status: response.status(),
            });
        }
        hyper::upgrade::on(&mut response)
            .await
            .map_err(MeshError::Upgrade)
    }

    async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, PoolError> {
        let dialer = PeerDialer {
            peer: &self.peer,
            tls: &self.tls,
        };
        self.handle.send(&dialer, req).await
    }
}

fn absolute(authority: &str, path: Option<&PathAndQuery>) -> Result<Uri, MeshError> {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path.map_or("/", PathAndQuery::as_str))
        .build()
        .map_err(|_| MeshError::Authority(authority.to_owned()))
}
