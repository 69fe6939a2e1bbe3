//! Inbound: connections to the app.
//!
//! Two doors lead in. Remora sidecars call the tunnel port 15008 ([`tunnel`]): one mTLS HTTP/2
//! connection per caller sidecar carrying requests and `CONNECT` tunnels. Everything else is
//! redirected to 15006 and handled here: Istio sidecars' mTLS (told apart by ALPN) is
//! terminated and the peer's SPIFFE identity read from its certificate; plaintext and the app's
//! own TLS are accepted as they are (PeerAuthentication PERMISSIVE, Istio's default).
//!
//! HTTP requests get Envoy's `x-forwarded-client-cert` treatment (SANITIZE_SET: whatever the
//! caller sent is dropped, ours is set for mesh peers). Everything reaches the app from
//! 127.0.0.6 so it is not captured again.

pub mod app;
pub mod tunnel;

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderValue, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use remora_api::SpiffeId;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    app::{intended_destination, ConnectionError, Proxy},
    body::Body,
    detect::{detect, Detected, Protocol},
    headers,
    metrics::{request_protocol, Reporter, Security},
    serve, tls, transport, upgrade,
};

pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream) -> Result<(), ConnectionError> {
    let app = intended_destination(&tcp)?;
    // REDIRECT accepts on the pod's own address; a different original destination (loopback,
    // another host) can only come from a forged packet, and must not be dialled from 127.0.0.6
    // or ::6 on its behalf.
    if app.ip() != tcp.local_addr()?.ip() {
        return Err(ConnectionError::NotThisPod(app));
    }
    let detected = detect(tcp, proxy.detect_timeout).await?;
    proxy
        .metrics
        .connection("inbound", detected.protocol.name());
    if detected.protocol != Protocol::Tls {
        return to_app(proxy, app, detected, None).await;
    }
    let (mesh, io) = tls::offers_mesh_alpn(detected.io, proxy.detect_timeout).await?;
    if !mesh {
        // The app's own TLS: not ours to open.
        let detected = Detected {
            protocol: Protocol::Tls,
            io,
        };
        return to_app(proxy, app, detected, None).await;
    }
    let (tls, peer) = proxy.tls.accept(io).await?;
    let inner = detect(tls, proxy.detect_timeout).await?;
    to_app(proxy, app, inner, Some(peer)).await
}

/// Hands a connection to the app at `app`: request by request for HTTP, spliced otherwise.
async fn to_app<S>(
    proxy: Arc<Proxy>,
    app: SocketAddr,
    detected: Detected<S>,
    peer: Option<SpiffeId>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let security = match peer {
        Some(_) => Security::mutual_tls,
        None => Security::none,
    };
    let xfcc = peer.map(|peer| headers::forwarded_client_cert(&proxy.id, &peer));
    let drain = proxy.drain.clone();
    let target = Arc::new(AppTarget {
        proxy,
        app,
        xfcc,
        security,
    });
    match detected.protocol {
        Protocol::Http1 | Protocol::Http2 => {
            serve::http(detected.protocol, detected.io, &drain, move |req| {
                target.clone().forward(req)
            })
            .await?
        }
        Protocol::Tls | Protocol::Opaque => {
            let upstream = transport::connect_to_app(app).await?;
            transport::splice_recorded(
                &target.proxy.metrics,
                Reporter::destination,
                security,
                detected.io,
                upstream,
            )
            .await?;
        }
    }
    Ok(())
}

/// The app port one inbound connection is for, and what is known about the caller.
struct AppTarget {
    proxy: Arc<Proxy>,
    app: SocketAddr,
    xfcc: Option<HeaderValue>,
    security: Security,
}

impl AppTarget {
    async fn forward(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let protocol = request_protocol(req.headers());
        headers::strip_mesh(req.headers_mut());
        headers::set_forwarded_client_cert(req.headers_mut(), self.xfcc.as_ref());
        let response = if headers::is_upgrade(&req) {
            match transport::connect_to_app(self.app).await {
                Ok(tcp) => upgrade::forward(TokioIo::new(tcp), &self.proxy.drain, req)
                    .await
                    .unwrap_or_else(|error| app::unavailable(self.app, false, &error)),
                Err(error) => app::unavailable(self.app, false, &error),
            }
        } else {
            let version = req.version();
            let orig = (version != http::Version::HTTP_2).then_some(version);
            self.proxy
                .app
                .forward(self.app, orig, protocol, req.map(Either::Left))
                .await
        };
        self.proxy.metrics.request(
            Reporter::destination,
            self.security,
            protocol,
            response.status(),
        );
        response
    }
}
