//! The tunnel port 15008: where Remora sidecars send everything for this pod.
//!
//! Each caller sidecar keeps one mTLS HTTP/2 connection here. A request names its app port in
//! `remora-dst-port` and its original HTTP version in `remora-orig-proto`; a `CONNECT ip:port`
//! stream becomes a byte tunnel to that app port. Requests for the sidecar's own ports or for
//! another address are refused.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use remora_api::SpiffeId;
use tokio::net::TcpStream;

use crate::{
    app::{is_proxy_port, ConnectionError, Proxy},
    body::{self, local_response, Body},
    detect::{Detected, Protocol},
    headers,
    metrics::{request_protocol, Reporter, Security},
    prefixed::PrefixedIo,
    serve, transport,
};

pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream) -> Result<(), ConnectionError> {
    let pod_ip = tcp.local_addr()?.ip();
    proxy.metrics.connection("tunnel", "http2");
    let (tls, peer) = proxy.tls.accept(PrefixedIo::unread(tcp)).await?;
    let drain = proxy.drain.clone();
    let conn = Arc::new(TunnelConn {
        xfcc: headers::forwarded_client_cert(&proxy.id, &peer),
        peer,
        proxy,
        pod_ip,
    });
    serve::http2(tls, &drain, move |req| conn.clone().handle(req)).await?;
    Ok(())
}

/// One caller sidecar's connection.
struct TunnelConn {
    proxy: Arc<Proxy>,
    pod_ip: IpAddr,
    peer: SpiffeId,
    xfcc: HeaderValue,
}

impl TunnelConn {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return self.connect(req).await;
        }
        let protocol = request_protocol(req.headers());
        let response = match headers::dst_port(req.headers()) {
            None => local_response(StatusCode::BAD_REQUEST, "missing remora-dst-port\n"),
            Some(port) if is_proxy_port(port) => forbidden(port),
            Some(port) => {
                let version = headers::orig_proto(req.headers());
                headers::strip_mesh(req.headers_mut());
                headers::set_forwarded_client_cert(req.headers_mut(), Some(&self.xfcc));
                let app = SocketAddr::new(self.pod_ip, port);
                self.proxy
                    .app
                    .forward(app, version, protocol, req.map(Either::Left))
                    .await
            }
        };
        self.proxy.metrics.request(
            Reporter::destination,
            Security::mutual_tls,
            protocol,
            response.status(),
        );
        response
    }

    /// Opens a byte tunnel to the app port named by `CONNECT ip:port`. A tunnel carrying HTTP/1
    /// (an upgrade, per `remora-orig-proto`) is served as HTTP, like a plaintext caller on 15006
    /// but with this peer's identity; anything else is spliced to the app.
    async fn connect(&self, mut req: Request<Incoming>) -> Response<Body> {
        let target = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let app = match target {
            Some(app) if is_proxy_port(app.port()) => return forbidden(app.port()),
            Some(app) if app.ip() == self.pod_ip => app,
            _ => {
                return local_response(
                    StatusCode::BAD_REQUEST,
                    format!("CONNECT target must be {}:<port>\n", self.pod_ip),
                )
            }
        };
        if headers::orig_proto(req.headers()).is_some() {
            let upgrade = hyper::upgrade::on(&mut req);
            let (proxy, peer) = (self.proxy.clone(), self.peer.clone());
            self.proxy.drain.spawn(async move {
                let result = match upgrade.await {
                    Ok(tunnel) => {
                        let detected = Detected {
                            protocol: Protocol::Http1,
                            io: PrefixedIo::unread(TokioIo::new(tunnel)),
                        };
                        super::to_app(proxy, app, detected, Some(peer)).await
                    }
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = result {
                    tracing::debug!(%error, %app, "HTTP tunnel ended");
                }
            });
            return Response::new(body::empty());
        }
        let tcp = match transport::connect_to_app(app).await {
            Ok(tcp) => tcp,
            Err(error) => return super::app::unavailable(app, false, &error),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let metrics = self.proxy.metrics.clone();
        self.proxy.drain.spawn(async move {
            let tunnel = match upgrade.await {
                Ok(tunnel) => tunnel,
                Err(error) => {
                    tracing::debug!(%error, %app, "tunnel was not established");
                    return;
                }
            };
            let caller = PrefixedIo::unread(TokioIo::new(tunnel));
            let result = transport::splice_recorded(
                &metrics,
                Reporter::destination,
                Security::mutual_tls,
                caller,
                tcp,
            )
            .await;
            if let Err(error) = result {
                tracing::debug!(%error, %app, "tunnel ended");
            }
        });
        Response::new(body::empty())
    }
}

fn forbidden(port: u16) -> Response<Body> {
    local_response(
        StatusCode::FORBIDDEN,
        format!("port {port} is the sidecar's own\n"),
    )
}
