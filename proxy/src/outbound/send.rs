//! One request to one endpoint: through its sidecar's tunnel (the peer must prove the
//! identity the snapshot names), or directly to an endpoint without a sidecar (in the clear,
//! or over TLS the sidecar originates); an upgrade
//! (WebSocket) as a byte stream after it. Every try, mirror and fixed destination ends here,
//! so each is a span of the request's trace here: its context written on the request, the span
//! reported when the try has its answer (or is given up).

use std::future::Future;

use futures_util::{future::Either, FutureExt};
use http::{request::Parts, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::{
    body::Body,
    headers,
    http_client::Connect,
    metrics::Flags,
    respond::{BoxedAnswer, RequestError},
    trace::Trace,
    tunnel::{self, TunnelError},
    upgrade,
};

use super::{
    balance::{Upstream, Way},
    Outbound,
};

/// A WebSocket-style upgrade, one try: HTTP/1.1 inside a tunnel, served as HTTP again by the
/// peer sidecar (which sets `x-forwarded-client-cert`), then the upgraded bytes end to end; or
/// directly to an endpoint without a sidecar.
pub(super) async fn upgrade_to(
    outbound: &Outbound,
    upstream: &Upstream,
    req: Request<Incoming>,
    trace: Option<&Trace>,
) -> Result<Response<Body>, RequestError> {
    traced(trace, upstream, req, |req| {
        upgrade_once(outbound, upstream, req)
    })
    .await
}

async fn upgrade_once(
    outbound: &Outbound,
    upstream: &Upstream,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    let address = upstream.endpoint.address;
    match &upstream.way {
        Way::Mesh(channel) => {
            let stream = channel
                .tunnel(Some(req.version()))
                .await
                .map_err(|e| RequestError::unavailable(address, e))?;
            upgrade::forward(stream, &outbound.drain, req)
                .await
                .map_err(|e| RequestError::unavailable(address, e))
        }
        Way::Direct => {
            let tcp = outbound
                .direct
                .connector()
                .connect(address)
                .await
                .map_err(|e| RequestError::unavailable(address, e))?;
            upgrade::forward(TokioIo::new(tcp), &outbound.drain, req)
                .await
                .map_err(|e| RequestError::unavailable(address, e))
        }
        Way::Originate(originator) => {
            let tls = originator.connect(address).await?;
            upgrade::forward(TokioIo::new(tls), &outbound.drain, req)
                .await
                .map_err(|e| RequestError::unavailable(address, e))
        }
    }
}

/// One try: `req` to `upstream`, through its sidecar's tunnel or directly, a span of `trace`.
///
/// This and the functions under it are not `async fn`s but build their future from the one
/// below: each `async fn` layer would keep a dead copy of the request, and this future is part
/// of every request's (4.5 KiB as `async fn`s, 0.9 KiB now).
pub(super) fn send<'a>(
    outbound: &'a Outbound,
    upstream: &'a Upstream,
    req: Request<Body>,
    trace: Option<&'a Trace>,
) -> impl Future<Output = Result<Response<Body>, RequestError>> + Send + 'a {
    traced(trace, upstream, req, |req| {
        send_once(outbound, upstream, req)
    })
}

/// Runs `try_once` on `req` as a span of `trace`: its context written on the request; the
/// span reported when the try fails, or handed back to the trace with its answer (it ends
/// when the caller has that answer, or when a retry answers instead).
fn traced<'a, B, F>(
    trace: Option<&'a Trace>,
    upstream: &Upstream,
    mut req: Request<B>,
    try_once: impl FnOnce(Request<B>) -> F,
) -> impl Future<Output = Result<Response<Body>, RequestError>> + 'a
where
    F: Future<Output = Result<Response<Body>, RequestError>> + 'a,
{
    let attempt = trace.and_then(|t| Some((t, t.attempt(&mut req, &upstream.to())?)));
    try_once(req).map(move |result| {
        if let Some((trace, attempt)) = attempt {
            match &result {
                Ok(response) => trace.answered(attempt, response.status().as_u16()),
                Err(error) => {
                    let flags = error.flag().map_or(Flags::NONE, Flags::from);
                    attempt.end(0, &flags, None);
                }
            }
        }
        result
    })
}

fn send_once<'a>(
    outbound: &'a Outbound,
    upstream: &'a Upstream,
    req: Request<Body>,
) -> impl Future<Output = Result<Response<Body>, RequestError>> + Send + 'a {
    let version = req.version();
    let address = upstream.endpoint.address;
    match &upstream.way {
        Way::Mesh(channel) => Either::Left(channel.request(req).map(move |result| match result {
            Ok(mut response) => {
                headers::strip_hop_by_hop(response.headers_mut());
                tunnel::strip_mesh(response.headers_mut());
                *response.version_mut() = version;
                Ok(response.map(Body::Incoming))
            }
            Err(TunnelError::Authority(authority)) => {
                Err(RequestError::InvalidAuthority(authority))
            }
            Err(error) => Err(RequestError::unavailable(channel.dst(), error)),
        })),
        // Boxed: the plain clients' futures are large, and endpoints without a sidecar rare.
        Way::Direct => {
            let http1 = (version != Version::HTTP_2).then_some(version);
            let unmeshed: BoxedAnswer<'a> = Box::pin(async move {
                let response = outbound.direct.forward(address, http1, req).await?;
                Ok(response.map(Body::Incoming))
            });
            Either::Right(unmeshed)
        }
        Way::Originate(originator) => {
            let unmeshed: BoxedAnswer<'a> = Box::pin(async move {
                let response = originator.forward(address, req).await?;
                Ok(response.map(Body::Incoming))
            });
            Either::Right(unmeshed)
        }
    }
}

/// A copy of a request's head, for another try or a mirror.
pub(super) fn copy_head(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}
