//! HTTP/1 proxying for one downstream connection: requests are read with hyper, hop-by-hop
//! headers removed, and forwarded over a lazily (re)established upstream connection.

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::{
    body::Incoming, client::conn::http1 as client, server::conn::http1 as server,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// Body of a proxied response: the upstream's, or one the sidecar wrote itself.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connecting upstream: {0}")]
    Connect(String),
    #[error("upstream HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// Opens the transport to the next hop.
pub trait Connect: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(&self) -> impl Future<Output = Result<Self::Io, ForwardError>> + Send;
}

/// One upstream HTTP/1 connection, opened on first use and reopened when it closes.
pub struct Upstream<C> {
    connector: C,
    sender: tokio::sync::Mutex<Option<client::SendRequest<Incoming>>>,
}

impl<C: Connect> Upstream<C> {
    pub fn new(connector: C) -> Self {
        Self {
            connector,
            sender: tokio::sync::Mutex::new(None),
        }
    }

    async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ForwardError> {
        // An HTTP/1 server connection hands us one request at a time, so this lock is never
        // contended; it only keeps the sender between requests.
        let mut slot = self.sender.lock().await;
        let sender = match slot.take() {
            Some(sender) if !sender.is_closed() => slot.insert(sender),
            _ => slot.insert(self.handshake().await?),
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    async fn handshake(&self) -> Result<client::SendRequest<Incoming>, ForwardError> {
        let io = self.connector.connect().await?;
        let (sender, conn) = client::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Forwards `req` and returns the upstream's response, or a 503 saying why there is none
    /// (Envoy's status for an upstream that cannot be reached).
    pub async fn forward(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        strip_hop_by_hop(req.headers_mut());
        match self.send(req).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                response.map(Either::Left)
            }
            Err(error) => {
                tracing::info!(%error, "request failed upstream");
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream connect error or disconnect/reset before headers: {error}"),
                )
            }
        }
    }
}

/// A response written by the sidecar itself.
pub fn local_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Serves HTTP/1 on `io`, answering each request with `handle`.
pub async fn serve<IO, H, F>(io: IO, handle: H) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let service = service_fn(move |req| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(req).await) }
    });
    // With a timer, hyper enforces its header read timeout (30 s) against slow clients.
    server::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// Removes the headers that describe one hop rather than the message (RFC 9110 §7.6.1),
/// including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "httpbin:8000"),
            ("x-end-to-end", "kept"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                header::HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-end-to-end"]);
    }
}
