//! The one place a failed request becomes a response, and every request is recorded.
//!
//! A connection's per-request [`Stages`] fail with a typed [`RequestError`]; [`respond`]
//! wraps them into the service `serve` runs: it starts a [`RequestRecord`] per request (which
//! the stages tell what happened: the upstream that answered, response flags), turns an error
//! into what Envoy would answer ([`response`]: status, body, and for gRPC callers a
//! trailers-only `grpc-status`, with Envoy's response flag recorded) and hands the record to
//! the response body, which completes it when the caller has the last byte. A new failure (a
//! denial, an unroutable request, a timeout) is a new variant here, nowhere else.

use std::{
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use remora_api::route::Abort;

use crate::{
    body::{empty, local_response, Body},
    metrics::{Flag, RecordedBody, Recorder, RequestRecord},
    overload::RequestGate,
    serve::HttpService,
};

/// A request's answer still to come, boxed: for a path whose future differs in size by branch,
/// so the largest branch is not every request's.
pub type BoxedAnswer<'a> =
    Pin<Box<dyn Future<Output = Result<Response<Body>, RequestError>> + Send + 'a>>;

/// The per-request stages of a connection: answer `req`, telling `record` what happened.
pub trait Stages: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        req: Request<Incoming>,
        record: &'a RequestRecord,
    ) -> impl Future<Output = Result<Response<Body>, RequestError>> + Send + 'a;
}

/// The service `serve` runs for one connection: `stages` answer each request `gate` lets in,
/// failures become Envoy's answers, and each request is recorded by `recorder` (under the
/// series the stages name, if they do).
pub fn respond<S: Stages>(
    stages: Arc<S>,
    recorder: Recorder,
    gate: RequestGate,
) -> impl HttpService<RecordedBody> {
    tower::service_fn(move |mut req: Request<Incoming>| {
        let stages = stages.clone();
        let gate = gate.clone();
        let record = recorder.start(&mut req);
        async move {
            let answer = match gate.admit() {
                Some(_waiting) => stages.call(req, &record).await,
                None => Err(RequestError::Overloaded),
            };
            let (response, details) = match answer {
                Ok(response) => (response, "via_upstream"),
                Err(error) => {
                    if let Some(flag) = error.flag() {
                        record.flag(flag);
                    }
                    (response(&error, record.grpc()), error.details())
                }
            };
            Ok::<_, Infallible>(record.respond(response, details))
        }
    })
}

/// Why a request got no answer from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// An app asked its sidecar to open a tunnel: Remora is not the app's forward proxy.
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
    /// A `Host` (or URI authority) that cannot name an HTTP/2 `:authority`.
    #[error("invalid authority {0:?}")]
    InvalidAuthority(String),
    /// A tunnelled request without the app port it is for.
    #[error("missing remora-dst-port")]
    MissingDstPort,
    /// A tunnelled request or `CONNECT` for one of the sidecar's own ports.
    #[error("port {0} is the sidecar's own")]
    ProxyPort(u16),
    /// A `CONNECT` for an address other than this pod's.
    #[error("CONNECT target must be {0}:<port>")]
    ConnectTarget(IpAddr),
    /// A Service with no ready endpoint.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// Routes are attached to the destination and none matches the request.
    #[error("route not found")]
    NoRoute,
    /// The route's backend cannot be resolved (a missing Service or subset), or it has no
    /// backend with weight: answered with `status` (500 under Gateway API, 503 under Istio).
    #[error("{reason}")]
    NoBackend { status: StatusCode, reason: String },
    /// The route's `timeout` (or the last try's `perTryTimeout`) ran out.
    #[error("upstream request timeout")]
    Timeout,
    /// Fault injection's abort.
    #[error("fault filter abort")]
    FaultAbort(Abort),
    /// The backend's `connectionPool` is full, and so is its queue.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    /// A destination outside the mesh registry under `REGISTRY_ONLY` (Istio's
    /// `BlackHoleCluster`).
    #[error("{0} is not in the mesh registry and outboundTrafficPolicy is REGISTRY_ONLY")]
    Blackhole(SocketAddr),
    /// Refused by an AuthorizationPolicy (Envoy's RBAC filter).
    #[error("RBAC: access denied")]
    Denied,
    /// A JWT that does not verify against the workload's RequestAuthentication.
    #[error("Jwt verification fails")]
    JwtInvalid,
    /// A caller without mesh mTLS on a port whose PeerAuthentication is STRICT; the connection
    /// is closed before a byte reaches the app.
    #[error("port {0} takes mesh mTLS only (PeerAuthentication STRICT)")]
    MtlsRequired(u16),
    /// A path that cannot be normalized (an encoded NUL).
    #[error("{0}")]
    InvalidPath(#[from] remora_api::path::PathError),
    /// The listener has as many requests waiting for a response as it takes (Envoy's overload
    /// manager refusing).
    #[error("envoy overloaded")]
    Overloaded,
    /// The upstream (a peer sidecar, an endpoint, or the app) could not be reached, or reset
    /// the stream before answering.
    #[error("{upstream}: {source}")]
    Unavailable {
        upstream: SocketAddr,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl RequestError {
    pub fn unavailable(
        upstream: SocketAddr,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            upstream,
            source: source.into(),
        }
    }

    /// The HTTP status Envoy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidAuthority(_) | Self::MissingDstPort | Self::ConnectTarget(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::ProxyPort(_) | Self::Denied | Self::MtlsRequired(_) => StatusCode::FORBIDDEN,
            Self::JwtInvalid => StatusCode::UNAUTHORIZED,
            Self::InvalidPath(_) => StatusCode::BAD_REQUEST,
            Self::Blackhole(_) => StatusCode::BAD_GATEWAY,
            Self::NoHealthyUpstream
            | Self::Unavailable { .. }
            | Self::Overflow
            | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoBackend { status, .. } => *status,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::FaultAbort(Abort::Http(status)) => *status,
            Self::FaultAbort(Abort::Grpc(_)) => StatusCode::OK,
        }
    }

    /// Envoy's response flag (`%RESPONSE_FLAGS%`): UH no healthy upstream, UF upstream
    /// connection failure, NR no route, NC no cluster, UT upstream timeout, FI fault abort,
    /// UO overflow; none for a request refused as malformed or by policy.
    pub fn flag(&self) -> Option<Flag> {
        match self {
            Self::NoHealthyUpstream => Some(Flag::NoHealthyUpstream),
            Self::Unavailable { .. } => Some(Flag::UpstreamConnectFailure),
            Self::Blackhole(_) | Self::NoRoute => Some(Flag::NoRoute),
            Self::NoBackend { .. } => Some(Flag::NoCluster),
            Self::Timeout => Some(Flag::UpstreamTimeout),
            Self::FaultAbort(_) => Some(Flag::FaultInjected),
            Self::Overflow => Some(Flag::UpstreamOverflow),
            Self::Overloaded => Some(Flag::OverloadManager),
            Self::ConnectNotSupported
            | Self::InvalidAuthority(_)
            | Self::MissingDstPort
            | Self::ProxyPort(_)
            | Self::ConnectTarget(_)
            | Self::Denied
            | Self::JwtInvalid
            | Self::MtlsRequired(_)
            | Self::InvalidPath(_) => None,
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this answer.
    pub fn details(&self) -> &'static str {
        match self {
            Self::ConnectNotSupported
            | Self::InvalidAuthority(_)
            | Self::MissingDstPort
            | Self::ProxyPort(_)
            | Self::ConnectTarget(_) => "bad_request",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::NoRoute | Self::Blackhole(_) => "route_not_found",
            Self::NoBackend { .. } => "cluster_not_found",
            Self::Timeout => "response_timeout",
            Self::FaultAbort(_) => "fault_filter_abort",
            Self::Overflow => "upstream_reset_before_response_started{overflow}",
            Self::Overloaded => "overload_manager",
            Self::Denied | Self::MtlsRequired(_) => "rbac_access_denied",
            Self::JwtInvalid => "jwt_authn_access_denied",
            Self::InvalidPath(_) => "path_normalization_failed",
            Self::Unavailable { .. } => {
                "upstream_reset_before_response_started{connection_failure}"
            }
        }
    }

    /// The gRPC status a gRPC caller gets instead of an HTTP error: UNAVAILABLE (retryable)
    /// when the server cannot be reached, PERMISSION_DENIED and UNAUTHENTICATED for policy
    /// refusals, as Envoy's RBAC and JWT filters answer gRPC.
    pub fn grpc_status(&self) -> Option<&'static str> {
        match self {
            Self::NoHealthyUpstream
            | Self::Unavailable { .. }
            | Self::Overflow
            | Self::Overloaded => Some("14"),
            Self::Denied | Self::MtlsRequired(_) => Some("7"),
            Self::JwtInvalid => Some("16"),
            Self::FaultAbort(Abort::Grpc(code)) => GRPC_CODES.get(*code as usize).copied(),
            // Envoy's local replies to gRPC callers map the HTTP status.
            Self::NoRoute => Some("12"),
            Self::Timeout => Some("14"),
            Self::NoBackend { status, .. } | Self::FaultAbort(Abort::Http(status)) => {
                Some(match status.as_u16() {
                    400 => "13",
                    401 => "16",
                    403 => "7",
                    404 => "12",
                    429 | 502..=504 => "14",
                    _ => "2",
                })
            }
            _ => None,
        }
    }

    /// The response body, Envoy's words where Envoy has them.
    fn body(&self) -> String {
        match self {
            Self::Unavailable { source, .. } => {
                format!("upstream connect error or disconnect/reset before headers: {source}")
            }
            Self::NoHealthyUpstream => "no healthy upstream".to_owned(),
            Self::NoRoute => String::new(),
            Self::Denied
            | Self::JwtInvalid
            | Self::Timeout
            | Self::FaultAbort(_)
            | Self::Overflow
            | Self::Overloaded => self.to_string(),
            other => format!("{other}\n"),
        }
    }
}

/// gRPC status codes as `grpc-status` writes them.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// What gRPC's `grpc-message` percent-encodes: controls, non-ASCII (always) and `%` itself.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The answer to a request that failed with `error`; `grpc` when the caller speaks gRPC.
pub fn response(error: &RequestError, grpc: bool) -> Response<Body> {
    match error {
        RequestError::Unavailable { upstream, source } => {
            tracing::info!(error = %source, %upstream, "request failed upstream");
        }
        other => tracing::debug!(error = %other, "request refused"),
    }
    let body = error.body();
    let mut response = match error.grpc_status().filter(|_| grpc) {
        Some(status) => grpc_trailers_only(status, &body),
        None => local_response(error.status(), body),
    };
    if let RequestError::Overloaded = error {
        response
            .headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    response
}

/// A trailers-only gRPC response (status in the headers), which gRPC clients understand.
fn grpc_trailers_only(status: &'static str, message: &str) -> Response<Body> {
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(status));
    // grpc-message is percent-encoded (gRPC over HTTP/2 spec), so it is always a valid value.
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::try_from(encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(response: Response<Body>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[test]
    fn an_overloaded_answer_says_so() {
        let answer = response(&RequestError::Overloaded, false);
        assert_eq!(answer.headers()["x-envoy-overloaded"], "true");
        let grpc = response(&RequestError::Overloaded, true);
        assert_eq!(grpc.headers()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn every_error_has_envoys_answer() {
        let upstream: SocketAddr = "198.18.0.12:15008".parse().expect("addr");
        let refused = || RequestError::unavailable(upstream, "connection refused");
        let cases: Vec<(RequestError, u16, &str, &str)> = vec![
            (
                RequestError::ConnectNotSupported,
                405,
                "CONNECT is not supported\n",
                "-",
            ),
            (
                RequestError::InvalidAuthority("a b".into()),
                400,
                "invalid authority \"a b\"\n",
                "-",
            ),
            (
                RequestError::MissingDstPort,
                400,
                "missing remora-dst-port\n",
                "-",
            ),
            (
                RequestError::ProxyPort(15006),
                403,
                "port 15006 is the sidecar's own\n",
                "-",
            ),
            (
                RequestError::ConnectTarget([198, 18, 0, 12].into()),
                400,
                "CONNECT target must be 198.18.0.12:<port>\n",
                "-",
            ),
            (
                RequestError::NoHealthyUpstream,
                503,
                "no healthy upstream",
                "UH",
            ),
            (RequestError::Overloaded, 503, "envoy overloaded", "OM"),
            (
                RequestError::Blackhole("10.0.0.1:443".parse().expect("addr")),
                502,
                "10.0.0.1:443 is not in the mesh registry and outboundTrafficPolicy is REGISTRY_ONLY\n",
                "NR",
            ),
            (
                refused(),
                503,
                "upstream connect error or disconnect/reset before headers: connection refused",
                "UF",
            ),
        ];
        for (error, status, body, flag) in cases {
            let printed = error.flag().map_or_else(
                || "-".to_owned(),
                |f| crate::metrics::Flags::from(f).to_string(),
            );
            assert_eq!(printed, flag, "{error}");
            let response = response(&error, false);
            assert_eq!(response.status().as_u16(), status, "{error}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
            assert_eq!(text(response).await, body);
        }
    }

    #[test]
    fn grpc_callers_get_unavailable_only_for_upstream_failures() {
        let upstream: SocketAddr = "198.18.0.12:15008".parse().expect("addr");
        let error = RequestError::unavailable(upstream, "connection refused\n100%");
        let answer = response(&error, true);
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers();
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
        assert!(headers["grpc-message"]
            .to_str()
            .expect("ascii")
            .ends_with("connection refused%0A100%25"));
        assert_eq!(
            response(&RequestError::NoHealthyUpstream, true).headers()["grpc-status"],
            "14"
        );
        // A malformed request is an HTTP error whatever the caller speaks.
        let refused = response(&RequestError::MissingDstPort, true);
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(!refused.headers().contains_key("grpc-status"));
    }
}
