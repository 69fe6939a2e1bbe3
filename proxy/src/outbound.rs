//! Outbound: connections the app opens, redirected to 15001.
//!
//! Destinations in the snapshot are mesh endpoints: traffic goes to the sidecar in front of them,
//! which must prove the identity the snapshot names, over the pooled sidecar-to-sidecar
//! connection ([`mesh::MeshClient`]). HTTP/1.x and HTTP/2 are proxied request by request;
//! anything else (opaque TCP, the app's own TLS, protocols whose server speaks first) rides a
//! tunnel. Destinations not in the snapshot are passed through untouched.

pub mod mesh;

use mesh::{MeshError, MeshRoute};

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use remora_api::{Resolved, Upstream};
use tokio::net::TcpStream;

use crate::{
    app::{intended_destination, ConnectionError, Proxy},
    body::{local_response, upstream_unavailable, Body},
    detect::{detect, Protocol},
    headers,
    metrics::{request_protocol, Reporter, Security},
    prefixed::PrefixedIo,
    serve, transport, upgrade,
};

pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream) -> Result<(), ConnectionError> {
    let dst = intended_destination(&tcp)?;
    let resolved = proxy.config.load().resolve(dst);
    let (upstream, identity) = match resolved {
        Some(Resolved::Upstream(Upstream {
            address,
            identity: Some(identity),
        })) => (address, identity),
        Some(Resolved::NoEndpoints) => {
            // A known service with nothing behind it: refuse, as Envoy does (no healthy upstream).
            proxy.metrics.connection("outbound", "no_endpoints");
            tracing::debug!(%dst, "service has no ready endpoints");
            return Ok(());
        }
        // Not in the mesh registry (passed through as addressed), or an endpoint without a
        // sidecar (reached directly, in the clear).
        other => {
            let address = match other {
                Some(Resolved::Upstream(Upstream { address, .. })) => address,
                _ => dst,
            };
            proxy.metrics.connection("outbound", "passthrough");
            let upstream = transport::connect(address).await?;
            transport::splice(PrefixedIo::unread(tcp), upstream).await?;
            return Ok(());
        }
    };
    let detected = detect(tcp, proxy.detect_timeout).await?;
    proxy
        .metrics
        .connection("outbound", detected.protocol.name());
    let drain = proxy.drain.clone();
    let target = Arc::new(Target {
        route: proxy.mesh.route(upstream, identity),
        proxy,
    });
    match detected.protocol {
        Protocol::Http1 | Protocol::Http2 => {
            serve::http(detected.protocol, detected.io, &drain, move |req| {
                target.clone().forward(req)
            })
            .await?
        }
        Protocol::Tls | Protocol::Opaque => {
            let tunnel = target.route.tunnel(None).await?;
            transport::splice_recorded(
                &target.proxy.metrics,
                Reporter::source,
                Security::mutual_tls,
                detected.io,
                TokioIo::new(tunnel),
            )
            .await?;
        }
    }
    Ok(())
}

/// One app connection's destination: a mesh endpoint and the way to its sidecar.
struct Target {
    proxy: Arc<Proxy>,
    route: MeshRoute,
}

impl Target {
    async fn forward(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let protocol = request_protocol(req.headers());
        let grpc = protocol == "grpc";
        let response = if req.method() == Method::CONNECT {
            // An app asking this hop to open a tunnel: Remora is not the app's forward proxy.
            local_response(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n")
        } else if headers::is_upgrade(&req) {
            self.upgrade(req).await
        } else {
            let version = req.version();
            match self.route.request(req.map(Either::Left)).await {
                Ok(mut response) => {
                    headers::strip_hop_by_hop(response.headers_mut());
                    headers::strip_mesh(response.headers_mut());
                    *response.version_mut() = version;
                    response.map(Either::Left)
                }
                Err(MeshError::Authority(authority)) => local_response(
                    StatusCode::BAD_REQUEST,
                    format!("invalid authority {authority:?}\n"),
                ),
                Err(error) => self.unavailable(grpc, &error),
            }
        };
        self.proxy.metrics.request(
            Reporter::source,
            Security::mutual_tls,
            protocol,
            response.status(),
        );
        response
    }

    /// A WebSocket-style upgrade: HTTP/1.1 inside a tunnel, served as HTTP again by the peer
    /// sidecar (which sets `x-forwarded-client-cert`), then the upgraded bytes end to end.
    async fn upgrade(&self, req: Request<Incoming>) -> Response<Body> {
        let tunnel = self.route.tunnel(Some(req.version())).await;
        let tunnel = match tunnel {
            Ok(tunnel) => tunnel,
            Err(error) => return self.unavailable(false, &error),
        };
        upgrade::forward(tunnel, &self.proxy.drain, req)
            .await
            .unwrap_or_else(|error| self.unavailable(false, &error))
    }

    fn unavailable(&self, grpc: bool, error: &dyn std::fmt::Display) -> Response<Body> {
        tracing::info!(%error, dst = %self.route.dst(), "request failed upstream");
        upstream_unavailable(grpc, error)
    }
}
