//! The one body type every proxied message uses: a peer's streaming body (with trailers, so
//! gRPC status survives), or a small one the sidecar wrote itself.

use std::fmt::Display;

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
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// What gRPC's `grpc-message` percent-encodes: controls, non-ASCII (always) and `%` itself.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Envoy's answer when the upstream cannot be reached: 503 with a reason, or for gRPC callers a
/// trailers-only response with `grpc-status: 14` (UNAVAILABLE), which gRPC clients understand.
pub fn upstream_unavailable(grpc: bool, error: &dyn Display) -> Response<Body> {
    let message = format!("upstream connect error or disconnect/reset before headers: {error}");
    if !grpc {
        return local_response(StatusCode::SERVICE_UNAVAILABLE, message);
    }
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    // grpc-message is percent-encoded (gRPC over HTTP/2 spec), so it is always a valid value.
    let encoded = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::try_from(encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_callers_get_grpc_unavailable() {
        let response = upstream_unavailable(true, &"connection refused\n100%");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
        assert!(headers["grpc-message"]
            .to_str()
            .expect("ascii")
            .ends_with("connection refused%0A100%25"));
        let http = upstream_unavailable(false, &"refused");
        assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
