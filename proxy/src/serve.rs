//! Serving one accepted connection as HTTP/1 or HTTP/2 with a [`tower::Service`] per request,
//! until the caller closes or a drain has let the requests in flight finish.

mod head_timeout;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::{body::Incoming, server::conn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};

use bytes::Bytes;

use head_timeout::{HeadLimits, HEAD_TIMEOUT};

use crate::{
    body::{Body, BoxError},
    detect::Protocol,
    drain::Drain,
    tunnel::H2_SETTINGS,
};

/// What `serve` runs for a connection's requests: infallible, because [`crate::respond`] has
/// made every failure a response, answering with bodies of type `B`.
pub trait HttpService<B: ResponseBody = Body>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B: ResponseBody> HttpService<B> for S where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A body `serve` can send back.
pub trait ResponseBody: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static {}

impl<B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static> ResponseBody for B {}

/// Serves HTTP/1.x (upgrades allowed) on `io`.
pub async fn http1<IO, S, B>(io: IO, drain: &Drain, service: S) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    let (io, timer) = head_timeout::watch(io, HeadLimits::default());
    let conn = conn::http1::Builder::new()
        .timer(timer)
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        () = drain.started() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// Serves HTTP/2 on `io`; a drain sends GOAWAY and lets the open streams finish.
pub async fn http2<IO, S, B>(io: IO, drain: &Drain, service: S) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    let conn = conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_SETTINGS.stream_window)
        .initial_connection_window_size(H2_SETTINGS.connection_window)
        .max_frame_size(H2_SETTINGS.max_frame_size)
        .max_concurrent_streams(H2_SETTINGS.max_concurrent_streams)
        .max_header_list_size(H2_SETTINGS.max_header_list_size)
        .keep_alive_interval(H2_SETTINGS.keep_alive_interval)
        .keep_alive_timeout(H2_SETTINGS.keep_alive_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        () = drain.started() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// Serves `io` as the HTTP version detection found: HTTP/2 for [`Protocol::Http2`], else HTTP/1.
pub async fn http<IO, S, B>(
    protocol: Protocol,
    io: IO,
    drain: &Drain,
    service: S,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    match protocol {
        Protocol::Http2 => http2(io, drain, service).await,
        _ => http1(io, drain, service).await,
    }
}
