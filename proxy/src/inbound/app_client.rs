//! Forwarding requests to the local app, over pooled connections from 127.0.0.6: HTTP/1.x over
//! hyper's pooling client (one request per connection at a time), HTTP/2 over one multiplexed
//! connection per app port.

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{header, uri::PathAndQuery, HeaderValue, Request, Response, Uri, Version};
use http_body_util::Either;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpStream;

use crate::{
    body::{upstream_unavailable, Body},
    headers,
    pool::{Dial, H2Pool, PoolError},
    transport,
};

/// How long an unused connection to the app stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct AppClient {
    http1: Client<AppConnector, Body>,
    http2: Arc<H2Pool<SocketAddr>>,
}

impl AppClient {
    pub fn new() -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(AppConnector);
        Self {
            http1,
            http2: H2Pool::new(IDLE_TIMEOUT),
        }
    }

    /// Sends `req` to the app at `app`, as HTTP/1.x when `version` says so, else HTTP/2.
    /// `protocol` is the request's Istio `request_protocol`, which shapes a local error reply.
    pub async fn forward(
        &self,
        app: SocketAddr,
        version: Option<Version>,
        protocol: &'static str,
        mut req: Request<Body>,
    ) -> Response<Body> {
        headers::strip_hop_by_hop(req.headers_mut());
        let grpc = protocol == "grpc";
        let result = match version {
            Some(version) => {
                // The app reads the authority from Host; the URI only tells the pool where to go
                // (it writes the request line in origin form).
                if !req.headers().contains_key(header::HOST) {
                    if let Some(host) = req
                        .uri()
                        .authority()
                        .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
                    {
                        req.headers_mut().insert(header::HOST, host);
                    }
                }
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(app.to_string())
                    .path_and_query(req.uri().path_and_query().map_or("/", PathAndQuery::as_str))
                    .build();
                match uri {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(error) => return unavailable(app, grpc, &error),
                }
                *req.version_mut() = version;
                self.http1.request(req).await.map_err(|e| e.to_string())
            }
            None => {
                *req.version_mut() = Version::HTTP_2;
                self.http2
                    .send(&app, &AppDialer(app), req)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(mut response) => {
                headers::strip_hop_by_hop(response.headers_mut());
                response.map(Either::Left)
            }
            Err(error) => unavailable(app, grpc, &error),
        }
    }
}

/// Envoy's answer when the app cannot be reached.
pub fn unavailable(app: SocketAddr, grpc: bool, error: &dyn std::fmt::Display) -> Response<Body> {
    tracing::info!(%error, %app, "request to the app failed");
    upstream_unavailable(grpc, error)
}

/// Connects hyper's HTTP/1 pool to the app named by the URI's authority.
#[derive(Clone, Copy)]
struct AppConnector;

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let app: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("not an app address: {uri}")))?;
            Ok(TokioIo::new(transport::connect_to_app(app).await?))
        })
    }
}

struct AppDialer(SocketAddr);

impl Dial for AppDialer {
    type Io = TcpStream;

    async fn dial(&self) -> Result<TcpStream, PoolError> {
        transport::connect_to_app(self.0)
            .await
            .map_err(|e| PoolError::Dial(format!("app at {}: {e}", self.0)))
    }
}
