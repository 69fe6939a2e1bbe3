//! The calling half of the tunnel protocol: one pooled mTLS HTTP/2 connection per peer sidecar
//! (a pod IP and the identity it must prove), shared by every app connection and request headed
//! there. A [`PeerChannel`] is one destination on it, made once per endpoint (per app connection,
//! or per config push for a Service's endpoints), so a request goes straight to the pooled
//! connection without a map lookup.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures_util::{
    future::{self, Either},
    TryFutureExt,
};
use http::{
    header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::{body::Incoming, upgrade::Upgraded};
use remora_api::SpiffeId;

use crate::{
    body::{self, Body},
    headers,
    pool::{Dial, DialError, H2Pool, PoolError, PoolHandle},
    ports,
    tls::{ClientStream, MeshTls},
    transport,
};

use super::{dst_port_value, orig_proto_value, strip_mesh, DST_PORT, ORIG_PROTO};

/// How long an unused connection to a peer sidecar stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("request has an invalid authority {0:?}")]
    Authority(String),
    #[error("peer refused the tunnel to {dst} with {status}")]
    Refused { dst: SocketAddr, status: StatusCode },
    #[error("tunnel upgrade: {0}")]
    Upgrade(#[source] hyper::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Peer {
    ip: IpAddr,
    identity: SpiffeId,
    /// Requests one connection carries (`maxRequestsPerConnection`; 0: any number): peers
    /// reached under different limits get connections of their own.
    max_requests: u32,
}

/// Dials a peer's tunnel port over mTLS, insisting on its expected identity.
struct PeerDialer<'a> {
    peer: &'a Peer,
    port: u16,
    tls: &'a MeshTls,
}

impl Dial for PeerDialer<'_> {
    type Io = ClientStream;

    async fn dial(&self) -> Result<ClientStream, PoolError> {
        let addr = SocketAddr::new(self.peer.ip, self.port);
        let dial = async {
            let tcp = transport::connect(addr).await?;
            Ok::<_, DialError>(
                self.tls
                    .connect(tcp, self.peer.ip, &self.peer.identity)
                    .await?,
            )
        };
        dial.await
            .map_err(|source| PoolError::Dial { addr, source })
    }
}

pub struct TunnelClient {
    tls: MeshTls,
    /// The peers' tunnel port: [`ports::TUNNEL`], except in tests that run both ends on one
    /// host.
    port: u16,
    pool: Arc<H2Pool<Peer>>,
}

impl TunnelClient {
    pub fn new(tls: MeshTls) -> Self {
        Self::with_port(tls, ports::TUNNEL)
    }

    /// A client that dials peers' tunnels on `port`.
    pub fn with_port(tls: MeshTls, port: u16) -> Self {
        Self {
            tls,
            port,
            pool: H2Pool::new(IDLE_TIMEOUT),
        }
    }

    /// The way to `dst`, whose sidecar must be `identity`, over connections that carry at
    /// most `max_requests` requests each (0: any number).
    pub fn channel(&self, dst: SocketAddr, identity: SpiffeId, max_requests: u32) -> PeerChannel {
        let peer = Peer {
            ip: dst.ip(),
            identity,
            max_requests,
        };
        PeerChannel {
            dst,
            dst_port: dst_port_value(dst),
            handle: self.pool.handle(&peer, max_requests),
            peer,
            port: self.port,
            tls: self.tls.clone(),
        }
    }
}

/// One mesh destination (an endpoint's address) and its peer sidecar's pooled connection.
pub struct PeerChannel {
    dst: SocketAddr,
    dst_port: HeaderValue,
    peer: Peer,
    port: u16,
    tls: MeshTls,
    handle: PoolHandle,
}

impl PeerChannel {
    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// The requests one of its connections carries (0: any number).
    pub fn max_requests(&self) -> u32 {
        self.peer.max_requests
    }

    /// Sends an app's HTTP request to the destination. Not an `async fn`: the head is rewritten
    /// here, and the future is the pool's own (see [`PoolHandle::send`]).
    pub fn request(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, TunnelError>> + Send + '_ {
        match self.tunnelled(req) {
            Ok(req) => Either::Left(self.send(req).err_into()),
            Err(error) => Either::Right(future::ready(Err(error))),
        }
    }

    /// `req` as the tunnel carries it: hop-by-hop and mesh headers gone, HTTP/1 turned into
    /// HTTP/2 (its authority in the URI, its version in `remora-orig-proto`), and the app port
    /// it is for.
    fn tunnelled(&self, mut req: Request<Body>) -> Result<Request<Body>, TunnelError> {
        headers::strip_hop_by_hop(req.headers_mut());
        strip_mesh(req.headers_mut());
        if let Some(orig) = orig_proto_value(req.version()) {
            // HTTP/2 needs the authority in the URI; HTTP/1 had it in Host (or nowhere).
            let authority = match req.headers_mut().remove(header::HOST) {
                Some(host) => host
                    .to_str()
                    .map(str::to_owned)
                    .map_err(|_| TunnelError::Authority(format!("{host:?}")))?,
                None => self.dst.to_string(),
            };
            *req.uri_mut() = absolute(&authority, req.uri().path_and_query())?;
            req.headers_mut().insert(ORIG_PROTO, orig);
            *req.version_mut() = Version::HTTP_2;
        }
        req.headers_mut().insert(DST_PORT, self.dst_port.clone());
        Ok(req)
    }

    /// Opens a byte stream to the destination. `carries` names the HTTP/1.x version spoken
    /// inside (an upgrade), so the peer serves it as HTTP and sanitises it; `None` means opaque
    /// bytes.
    pub async fn tunnel(&self, carries: Option<Version>) -> Result<Upgraded, TunnelError> {
        let dst = self.dst;
        let mut connect = Request::new(body::empty());
        if let Some(proto) = carries.and_then(orig_proto_value) {
            connect.headers_mut().insert(ORIG_PROTO, proto);
        }
        *connect.method_mut() = Method::CONNECT;
        *connect.uri_mut() = dst
            .to_string()
            .parse()
            .map_err(|_| TunnelError::Authority(dst.to_string()))?;
        *connect.version_mut() = Version::HTTP_2;
        let mut response = self.send(connect).await?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                dst,
                status: response.status(),
            });
        }
        hyper::upgrade::on(&mut response)
            .await
            .map_err(TunnelError::Upgrade)
    }

    fn send(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, PoolError>> + Send + '_ {
        let dialer = PeerDialer {
            peer: &self.peer,
            port: self.port,
            tls: &self.tls,
        };
        self.handle.send(dialer, req)
    }
}

fn absolute(authority: &str, path: Option<&PathAndQuery>) -> Result<Uri, TunnelError> {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path.map_or("/", PathAndQuery::as_str))
        .build()
        .map_err(|_| TunnelError::Authority(authority.to_owned()))
}
