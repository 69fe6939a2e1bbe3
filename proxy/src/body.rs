//! The one body type every proxied message uses: a peer's streaming body (with trailers, so
//! gRPC status survives), or a small one the sidecar wrote itself (see [`crate::respond`]).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub type Body = Either<Incoming, Full<Bytes>>;

pub fn empty() -> Body {
    Either::Right(Full::default())
}

/// A response written by the sidecar itself.
pub fn local_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(text.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
