//! The outbound HTTP service: per request, an endpoint from the connection's backend, then the
//! request goes to it through its sidecar's tunnel (or directly, to an endpoint without one).
//! The caller gets its own HTTP version back, whatever the hop in between spoke.

use std::sync::Arc;

use http::{Method, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    body::Body,
    detect::Protocol,
    headers,
    http_client::Connect,
    listen::ConnectionError,
    metrics::{Observed, Reporter, Security},
    prefixed::PrefixedIo,
    respond::{respond, RequestError},
    serve,
    tunnel::{self, PeerChannel, TunnelError},
    upgrade,
};

use super::{balance::Upstream, Backend, Outbound};

/// Serves one app connection's requests.
pub(super) async fn serve<IO>(
    outbound: Arc<Outbound>,
    backend: Backend,
    protocol: Protocol,
    io: PrefixedIo<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = outbound.drain.clone();
    let metrics = outbound.metrics.clone();
    let target = Arc::new(Target { outbound, backend });
    let stages = tower::service_fn(move |req| {
        let target = target.clone();
        async move { target.forward(req).await }
    });
    // Istio's client side reports the policy of the mesh hop it makes.
    let observed = Observed {
        reporter: Reporter::source,
        security: Security::mutual_tls,
    };
    serve::http(protocol, io, &drain, respond(stages, metrics, observed)).await?;
    Ok(())
}

/// One app connection's destination.
struct Target {
    outbound: Arc<Outbound>,
    backend: Backend,
}

impl Target {
    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Body>, RequestError> {
        if req.method() == Method::CONNECT {
            // An app asking this hop to open a tunnel: Remora is not the app's forward proxy.
            return Err(RequestError::ConnectNotSupported);
        }
        let upstream = self.backend.pick()?;
        match &upstream.channel {
            Some(channel) if headers::is_upgrade(&req) => self.upgrade_through(channel, req).await,
            Some(channel) => through_tunnel(channel, req).await,
            None => self.direct(&upstream, req).await,
        }
    }

    /// A WebSocket-style upgrade: HTTP/1.1 inside a tunnel, served as HTTP again by the peer
    /// sidecar (which sets `x-forwarded-client-cert`), then the upgraded bytes end to end.
    async fn upgrade_through(
        &self,
        channel: &PeerChannel,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, RequestError> {
        let stream = channel
            .tunnel(Some(req.version()))
            .await
            .map_err(|e| RequestError::unavailable(channel.dst(), e))?;
        upgrade::forward(stream, &self.outbound.drain, req)
            .await
            .map_err(|e| RequestError::unavailable(channel.dst(), e))
    }

    /// To an endpoint without a sidecar, as the app spoke it.
    async fn direct(
        &self,
        upstream: &Upstream,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, RequestError> {
        let address = upstream.endpoint.address;
        if headers::is_upgrade(&req) {
            let tcp = self
                .outbound
                .direct
                .connector()
                .connect(address)
                .await
                .map_err(|e| RequestError::unavailable(address, e))?;
            return upgrade::forward(TokioIo::new(tcp), &self.outbound.drain, req)
                .await
                .map_err(|e| RequestError::unavailable(address, e));
        }
        let version = req.version();
        let response = self
            .outbound
            .direct
            .forward(
                address,
                (version != Version::HTTP_2).then_some(version),
                req.map(Either::Left),
            )
            .await?;
        Ok(response.map(Either::Left))
    }
}

/// An HTTP request through the peer's tunnel.
async fn through_tunnel(
    channel: &PeerChannel,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    let version = req.version();
    match channel.request(req.map(Either::Left)).await {
        Ok(mut response) => {
            headers::strip_hop_by_hop(response.headers_mut());
            tunnel::strip_mesh(response.headers_mut());
            *response.version_mut() = version;
            Ok(response.map(Either::Left))
        }
        Err(TunnelError::Authority(authority)) => Err(RequestError::InvalidAuthority(authority)),
        Err(error) => Err(RequestError::unavailable(channel.dst(), error)),
    }
}
