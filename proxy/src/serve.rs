//! Serving one accepted connection as HTTP/1 or HTTP/2 with a handler per request.

use std::{convert::Infallible, future::Future, sync::Arc};

use http::{Request, Response};
use hyper::{body::Incoming, server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{body::Body, detect::Protocol, drain::Drain, pool::H2_SETTINGS};

/// Serves HTTP/1.x (upgrades allowed) on `io`, answering each request with `handle`, until
/// the caller closes or a drain has let the request in flight finish.
pub async fn http1<IO, H, F>(io: IO, drain: &Drain, handle: H) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // With a timer, hyper enforces its header read timeout (30 s) against slow clients.
    let conn = conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service(handle))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        () = drain.started() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// Serves HTTP/2 on `io`, answering each request (stream) with `handle`, until the caller
/// closes or a drain has sent GOAWAY and let the streams in flight finish.
pub async fn http2<IO, H, F>(io: IO, drain: &Drain, handle: H) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
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
        .serve_connection(TokioIo::new(io), service(handle));
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        () = drain.started() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// Serves `io` as the HTTP version detection found: HTTP/2 for [`Protocol::Http2`], else HTTP/1.
pub async fn http<IO, H, F>(
    protocol: Protocol,
    io: IO,
    drain: &Drain,
    handle: H,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    match protocol {
        Protocol::Http2 => http2(io, drain, handle).await,
        _ => http1(io, drain, handle).await,
    }
}

fn service<H, F>(
    handle: H,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handle = Arc::new(handle);
    service_fn(move |req| {
        let response = handle(req);
        async move { Ok::<_, Infallible>(response.await) }
    })
}
