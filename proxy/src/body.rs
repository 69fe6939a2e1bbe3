//! The one body type every proxied message uses: a peer's streaming body (with trailers, so
//! gRPC status survives), one the sidecar wrote itself (see [`crate::respond`]), or a request
//! body that can be sent again ([`replay`]) for retries and mirrors.

pub mod replay;

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

pub use replay::{Recording, ReplayBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    /// A peer's body, streamed.
    Incoming(Incoming),
    /// Written by the sidecar, or buffered.
    Full(Full<Bytes>),
    /// A request body recorded while sent, so a retry or a mirror can send it again.
    Replay(ReplayBody),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Full::new(bytes.into()))
    }
}

impl From<Incoming> for Body {
    fn from(incoming: Incoming) -> Self {
        Body::Incoming(incoming)
    }
}

pub fn empty() -> Body {
    Body::Full(Full::default())
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Body::Full(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Replay(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(body) => body.is_end_stream(),
            Body::Full(body) => body.is_end_stream(),
            Body::Replay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(body) => body.size_hint(),
            Body::Full(body) => body.size_hint(),
            Body::Replay(body) => body.size_hint(),
        }
    }
}

/// A response written by the sidecar itself.
pub fn local_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
