//! The tunnel port 15008: where Remora sidecars send everything for this pod (the receiving
//! half of [`crate::tunnel`]).
//!
//! Each caller sidecar keeps one mTLS HTTP/2 connection here. A request names its app port in
//! `remora-dst-port` and is served by that port's HTTP service, made (past the connection hook)
//! the first time the caller's connection asks for the port and reused for the connection's
//! life. A `CONNECT ip:port` stream is a connection of its own: served as HTTP when it says it
//! carries HTTP/1 or its app port is declared HTTP, spliced otherwise. Requests for the
//! sidecar's own ports or for another address are refused.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use arc_swap::ArcSwap;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use remora_api::{protocol::Declared, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use crate::{
    access_log::{Direction, Downstream},
    body::{self, Body},
    detect::{detect_declared, Protocol},
    listen::{Accepted, ConnectionError},
    metrics::{RecordedBody, RequestRecord, Security},
    overload::Listener,
    ports::{self, is_proxy_port},
    prefixed::PrefixedIo,
    respond::{respond, response, RequestError, Stages},
    serve, tls, tunnel,
};

use super::{http::AppHandler, serve as serve_conn, tcp, Inbound, PeerTls};

pub async fn handle<IO>(
    inbound: Arc<Inbound>,
    accepted: Accepted<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    inbound.metrics.connection("tunnel", "http2");
    let _open = inbound.metrics.open("tunnel");
    let (tls, peer) = inbound.tls.accept(PrefixedIo::unread(accepted.io)).await?;
    let sni = tls::server_name(&tls);
    let drain = inbound.drain.clone();
    let metrics = inbound.metrics.clone();
    let conn = Arc::new(TunnelConn {
        inbound,
        client: accepted.client,
        pod_ip: accepted.orig_dst.ip(),
        peer,
        sni,
        ports: ArcSwap::default(),
    });
    let recorder = {
        let snapshot = conn.inbound.config.load();
        let peer = Some(&conn.peer);
        let series = metrics.inbound(&snapshot, conn.client.ip(), peer, 0, Security::MutualTls);
        let downstream = Downstream {
            local: Some(SocketAddr::new(conn.pod_ip, ports::TUNNEL)),
            remote: Some(conn.client),
            server_name: conn.sni.clone(),
        };
        metrics.recorder(Direction::Server, series, downstream)
    };
    let requests = respond(
        conn.clone(),
        recorder,
        conn.inbound.requests(Listener::Tunnel),
    );
    // A CONNECT opens a stream, not a request: it is recorded as a TCP connection (opaque) or
    // by the requests it carries (HTTP/1), never as a request of its own.
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        let requests = requests.clone();
        async move {
            if req.method() == Method::CONNECT {
                Ok(conn.connect(req).await.map(RecordedBody::unrecorded))
            } else {
                requests.oneshot(req).await
            }
        }
    });
    serve::http2(tls, &drain, service).await?;
    Ok(())
}

/// One caller sidecar's connection.
struct TunnelConn {
    inbound: Arc<Inbound>,
    client: SocketAddr,
    pod_ip: IpAddr,
    peer: SpiffeId,
    sni: Option<Arc<str>>,
    /// The HTTP service of each app port this connection's requests have named so far.
    ports: ArcSwap<Vec<(u16, Arc<AppHandler>)>>,
}

impl Stages for TunnelConn {
    /// A request for the app port it names, answered by that port's handler and counted
    /// under its series.
    async fn call(
        &self,
        req: Request<Incoming>,
        record: &RequestRecord,
    ) -> Result<Response<Body>, RequestError> {
        let port = match tunnel::dst_port(req.headers()) {
            None => return Err(RequestError::MissingDstPort),
            Some(port) if is_proxy_port(port) => return Err(RequestError::ProxyPort(port)),
            Some(port) => port,
        };
        let handler = self.port(port)?;
        record.serves(handler.series(), port);
        handler.call(req, record).await
    }
}

impl TunnelConn {
    /// The HTTP service for `port`, let in once per connection and port.
    fn port(&self, port: u16) -> Result<Arc<AppHandler>, RequestError> {
        if let Some((_, handler)) = self.ports.load().iter().find(|(p, _)| *p == port) {
            return Ok(handler.clone());
        }
        let conn = self.inbound.connection(
            self.client,
            SocketAddr::new(self.pod_ip, port),
            PeerTls::Tunnel(self.peer.clone()),
            Protocol::Http2,
            self.sni.clone(),
        )?;
        let handler = AppHandler::new(self.inbound.clone(), conn);
        self.ports.rcu(|ports| {
            let mut ports = Vec::clone(ports);
            if !ports.iter().any(|(p, _)| *p == port) {
                ports.push((port, handler.clone()));
            }
            ports
        });
        Ok(handler)
    }

    /// Opens a byte stream to the app port named by `CONNECT ip:port`, answering 200 only once
    /// the app accepted it (or, for HTTP/1 inside, once the stream is let in).
    async fn connect(&self, mut req: Request<Incoming>) -> Response<Body> {
        let target = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let app = match target {
            Some(app) if is_proxy_port(app.port()) => {
                return response(&RequestError::ProxyPort(app.port()), false)
            }
            Some(app) if app.ip() == self.pod_ip => app,
            _ => return response(&RequestError::ConnectTarget(self.pod_ip), false),
        };
        let carries_http = tunnel::orig_proto(req.headers()).is_some();
        let (declared, _) = self.inbound.port_settings(app.port());
        if !carries_http && declared == Declared::Http {
            return self.connect_declared_http(req, app);
        }
        let protocol = if carries_http {
            Protocol::Http1
        } else {
            Protocol::Opaque
        };
        let peer = PeerTls::Tunnel(self.peer.clone());
        let sni = self.sni.clone();
        let conn = match self
            .inbound
            .connection(self.client, app, peer, protocol, sni)
        {
            Ok(conn) => conn,
            Err(error) => return response(&error, false),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let inbound = self.inbound.clone();
        if carries_http {
            self.inbound.drain.spawn(async move {
                let result = match upgrade.await {
                    Ok(stream) => {
                        let io = PrefixedIo::unread(TokioIo::new(stream));
                        serve_conn(inbound, conn, io).await
                    }
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = result {
                    tracing::debug!(%error, %app, "HTTP tunnel ended");
                }
            });
            return Response::new(body::empty());
        }
        let to_app = match tcp::connect(&self.inbound, &conn).await {
            Ok(to_app) => to_app,
            Err(error) => return response(&error, false),
        };
        self.inbound.drain.spawn(async move {
            let result = match upgrade.await {
                Ok(stream) => {
                    let io = PrefixedIo::unread(TokioIo::new(stream));
                    tcp::splice(&inbound, &conn, io, to_app).await
                }
                Err(error) => Err(error.into()),
            };
            if let Err(error) = result {
                tracing::debug!(%error, %app, "tunnel ended");
            }
        });
        Response::new(body::empty())
    }

    /// A stream of bytes for an app port declared HTTP (its caller's sidecar, which dialled
    /// the pod's address, could not know): the declaration holds here, so it is served as
    /// HTTP, or passed on as the app's own TLS only as a whole ClientHello, and answered at
    /// once; what is read decides how it is let in.
    fn connect_declared_http(&self, mut req: Request<Incoming>, app: SocketAddr) -> Response<Body> {
        let upgrade = hyper::upgrade::on(&mut req);
        let inbound = self.inbound.clone();
        let (client, peer, sni) = (self.client, self.peer.clone(), self.sni.clone());
        self.inbound.drain.spawn(async move {
            let served = async {
                let stream = upgrade.await?;
                let timeout = inbound.detect_timeout;
                let detected =
                    detect_declared(TokioIo::new(stream), Declared::Http, timeout).await?;
                let io = match detected.protocol {
                    Protocol::Tls => match tls::client_hello(detected.io, timeout).await? {
                        (Some(_), io) => io,
                        (None, _) => return Err(ConnectionError::NotHttp),
                    },
                    _ => detected.io,
                };
                let tls = PeerTls::Tunnel(peer);
                let conn = inbound.connection(client, app, tls, detected.protocol, sni)?;
                serve_conn(inbound, conn, io).await
            };
            if let Err(error) = served.await {
                tracing::debug!(%error, %app, "tunnel to an HTTP port ended");
            }
        });
        Response::new(body::empty())
    }
}
