//! Forwarding HTTP requests to a plaintext upstream over pooled connections: HTTP/1.x over
//! hyper's pooling client (one request per connection at a time), HTTP/2 over one multiplexed
//! connection per upstream address. The connector decides how a connection is opened, so the
//! inbound side can dial its app from the passthrough source while the outbound side dials
//! endpoints that run no sidecar directly, or over TLS of its own (DestinationRule `SIMPLE`).

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{header, uri::PathAndQuery, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::Connection, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    body::Body,
    headers,
    pool::{Dial, H2Pool, PoolError},
    respond::RequestError,
};

/// How long an unused upstream connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a connection to an upstream address.
pub trait Connect: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Connection + Unpin + Send + 'static;
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

pub struct HttpClient<C: Connect> {
    connector: C,
    http1: Client<ByAuthority<C>, Body>,
    http2: Arc<H2Pool<SocketAddr>>,
}

impl<C: Connect> HttpClient<C> {
    pub fn with_connector(connector: C) -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(ByAuthority(connector.clone()));
        Self {
            connector,
            http1,
            http2: H2Pool::new(IDLE_TIMEOUT),
        }
    }

    /// How this client opens connections, for a stream that is not a pooled request (an
    /// upgrade, a spliced connection).
    pub fn connector(&self) -> &C {
        &self.connector
    }

    /// Sends `req` to `upstream` as HTTP/1.x when `version` says so, else as HTTP/2.
    pub async fn forward(
        &self,
        upstream: SocketAddr,
        version: Option<Version>,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, RequestError> {
        headers::strip_hop_by_hop(req.headers_mut());
        let result = match version {
            Some(version) => {
                // The upstream reads the authority from Host; the URI only tells the pool where
                // to go (it writes the request line in origin form).
                if !req.headers().contains_key(header::HOST) {
                    if let Some(host) = req
                        .uri()
                        .authority()
                        .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
                    {
                        req.headers_mut().insert(header::HOST, host);
                    }
                }
                *req.uri_mut() = Uri::builder()
                    .scheme("http")
                    .authority(upstream.to_string())
                    .path_and_query(req.uri().path_and_query().map_or("/", PathAndQuery::as_str))
                    .build()
                    .map_err(|e| RequestError::unavailable(upstream, e))?;
                *req.version_mut() = version;
                self.http1
                    .request(req)
                    .await
                    .map_err(|e| RequestError::unavailable(upstream, e))
            }
            None => {
                *req.version_mut() = Version::HTTP_2;
                let dialer = Dialer {
                    connector: &self.connector,
                    addr: upstream,
                };
                self.http2
                    .send(&upstream, &dialer, req)
                    .await
                    .map_err(|e| RequestError::unavailable(upstream, e))
            }
        };
        let mut response = result?;
        headers::strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }
}

/// Connects hyper's HTTP/1 pool to the address in the URI's authority.
#[derive(Clone)]
struct ByAuthority<C>(C);

impl<C: Connect> tower::Service<Uri> for ByAuthority<C> {
    type Response = TokioIo<C::Io>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<C::Io>>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("not an upstream address: {uri}")))?;
            Ok(TokioIo::new(connector.connect(addr).await?))
        })
    }
}

struct Dialer<'a, C> {
    connector: &'a C,
    addr: SocketAddr,
}

impl<C: Connect> Dial for Dialer<'_, C> {
    type Io = C::Io;

    async fn dial(&self) -> Result<C::Io, PoolError> {
        self.connector
            .connect(self.addr)
            .await
            .map_err(|e| PoolError::Dial {
                addr: self.addr,
                source: e.into(),
            })
    }
}
