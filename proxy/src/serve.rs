//! Serving one accepted connection as HTTP/1 or HTTP/2 with a [`tower::Service`] per request,
//! until the caller closes or a drain has let the requests in flight finish.

mod head_wait;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::{body::Incoming, server::conn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};

use bytes::Bytes;

use head_wait::{first_bytes, take_home, HeadLimits, Home, HEAD_TIMEOUT};

use crate::{
    body::{Body, BoxError},
    detect::Protocol,
    drain::Drain,
    prefixed::PrefixedIo,
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

/// Serves HTTP/1.x (upgrades allowed) on `io`. Between requests, a connection silent for a
/// second rests without hyper's state (see [`head_wait`]) until its next head arrives.
pub async fn http1<IO, S, B>(io: IO, drain: &Drain, service: S) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    let limits = HeadLimits::default();
    let home: Home<PrefixedIo<IO>> = Home::default();
    let mut io = PrefixedIo::unread(io);
    // The idle timeout counts from the last response, which a rested connection is past by
    // `limits.rest` already.
    let mut idle = limits.idle;
    loop {
        let (unread, mut inner) = io.into_parts();
        let first = if unread.is_empty() {
            let first = tokio::select! {
                first = tokio::time::timeout(idle, first_bytes(&mut inner)) => first,
                () = drain.started() => return Ok(()),
            };
            // Silent for the idle timeout, closed, or broken while idle: nothing to answer.
            let Ok(Ok(Some(first))) = first else {
                return Ok(());
            };
            first
        } else {
            unread
        };
        let (watched, timer) =
            head_wait::watch(PrefixedIo::new(first, inner), home.clone(), limits);
        // Boxed, so a resting connection's task does not keep room for it.
        let mut conn = Box::pin(
            conn::http1::Builder::new()
                .timer(timer)
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(
                    TokioIo::new(watched),
                    TowerToHyperService::new(service.clone()),
                )
                .with_upgrades(),
        );
        let done = tokio::select! {
            done = conn.as_mut() => done,
            () = drain.started() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        // hyper's connection hands the socket home as it goes.
        drop(conn);
        match take_home(&home) {
            Some(rested) if done.is_ok() => {
                io = rested;
                idle = limits.idle.saturating_sub(limits.rest);
            }
            _ => return done,
        }
    }
}

/// Serves HTTP/2 on `io`; a drain sends GOAWAY and lets the open streams finish.
pub async fn http2<IO, S, B>(io: IO, drain: &Drain, service: S) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    // Boxed, so the task of a connection that is not HTTP/2 does not keep room for it.
    let mut conn = Box::pin(
        conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_SETTINGS.stream_window)
            .initial_connection_window_size(H2_SETTINGS.connection_window)
            .max_frame_size(H2_SETTINGS.max_frame_size)
            .max_concurrent_streams(H2_SETTINGS.max_concurrent_streams)
            .max_header_list_size(H2_SETTINGS.max_header_list_size)
            .keep_alive_interval(H2_SETTINGS.keep_alive_interval)
            .keep_alive_timeout(H2_SETTINGS.keep_alive_timeout)
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service)),
    );
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
