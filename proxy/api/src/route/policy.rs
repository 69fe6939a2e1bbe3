//! The per-request policies of a route (timeout, retries, fault injection, mirror shares) and
//! the per-backend policy of a DestinationRule (load balancing, connection-pool limits,
//! outlier detection, TLS), compiled once per snapshot. The decisions that need chance take the
//! random number as an argument, so they stay pure and testable.

use std::{path::PathBuf, sync::Arc, time::Duration};

use http::StatusCode;

use crate::proto::config as proto;

/// A share of requests, in millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent(u32);

impl Percent {
    pub const ALL: Percent = Percent(1_000_000);

    pub fn compile(percent: f64) -> Result<Self, String> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("{percent} is not a percentage between 0 and 100"));
        }
        Ok(Percent((percent * 10_000.0).round() as u32))
    }

    /// The share as a percentage.
    pub fn as_percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Whether a request drawing `random` falls in the share.
    pub fn hit(self, random: u32) -> bool {
        random % 1_000_000 < self.0
    }
}

/// Envoy's `retry_on` conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum On {
    ServerError = 1,
    GatewayError = 1 << 1,
    Reset = 1 << 2,
    ConnectFailure = 1 << 3,
    RefusedStream = 1 << 4,
    Retriable4xx = 1 << 5,
    RetriableStatusCodes = 1 << 6,
    Cancelled = 1 << 7,
    DeadlineExceeded = 1 << 8,
    Internal = 1 << 9,
    ResourceExhausted = 1 << 10,
    Unavailable = 1 << 11,
}

impl On {
    const ALL: [On; 12] = [
        On::ServerError,
        On::GatewayError,
        On::Reset,
        On::ConnectFailure,
        On::RefusedStream,
        On::Retriable4xx,
        On::RetriableStatusCodes,
        On::Cancelled,
        On::DeadlineExceeded,
        On::Internal,
        On::ResourceExhausted,
        On::Unavailable,
    ];

    fn name(self) -> &'static str {
        match self {
            On::ServerError => "5xx",
            On::GatewayError => "gateway-error",
            On::Reset => "reset",
            On::ConnectFailure => "connect-failure",
            On::RefusedStream => "refused-stream",
            On::Retriable4xx => "retriable-4xx",
            On::RetriableStatusCodes => "retriable-status-codes",
            On::Cancelled => "cancelled",
            On::DeadlineExceeded => "deadline-exceeded",
            On::Internal => "internal",
            On::ResourceExhausted => "resource-exhausted",
            On::Unavailable => "unavailable",
        }
    }

    fn parse(name: &str) -> Option<On> {
        On::ALL.into_iter().find(|on| on.name() == name)
    }
}

/// How one try ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// An answer: its status and, for gRPC, the `grpc-status` its headers carry.
    Answered { status: u16, grpc: Option<u32> },
    /// No connection to the endpoint.
    ConnectFailure,
    /// The peer refused the stream before reading it (HTTP/2 `REFUSED_STREAM`).
    RefusedStream,
    /// The connection or stream broke before an answer.
    Reset,
    /// The try's own time limit (`perTryTimeout`) ran out.
    TimedOut,
}

/// Istio's retry policy for a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    on: u16,
    codes: Vec<u16>,
    /// The first backoff; each later one may be twice as long, up to ten times this.
    pub backoff: Duration,
}

/// Envoy's first backoff interval when none is set.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

impl Default for RetryPolicy {
    /// Istio's default for routes that set none: 2 retries on connect-failure,
    /// refused-stream, unavailable, cancelled and retriable-status-codes (with no codes listed,
    /// so no answered status is retried).
    fn default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: On::ConnectFailure as u16
                | On::RefusedStream as u16
                | On::Unavailable as u16
                | On::Cancelled as u16
                | On::RetriableStatusCodes as u16,
            codes: Vec::new(),
            backoff: DEFAULT_BACKOFF,
        }
    }
}

impl RetryPolicy {
    pub(crate) fn compile(source: Option<&proto::Retry>) -> Result<Self, Vec<String>> {
        let Some(source) = source else {
            return Ok(Self::default());
        };
        let mut problems = Vec::new();
        let mut on = 0;
        for (i, name) in source.retry_on.iter().enumerate() {
            match On::parse(name.trim()) {
                Some(condition) => on |= condition as u16,
                None => problems.push(format!("retryOn[{i}]: {name:?} is not a retry condition")),
            }
        }
        let codes = source
            .codes
            .iter()
            .enumerate()
            .filter_map(|(i, code)| {
                u16::try_from(*code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .or_else(|| {
                        problems.push(format!("codes[{i}]: {code} is not an HTTP status"));
                        None
                    })
            })
            .collect::<Vec<_>>();
        if !codes.is_empty() {
            on |= On::RetriableStatusCodes as u16;
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            attempts: source.attempts,
            per_try_timeout: millis(source.per_try_timeout_ms),
            on,
            codes,
            backoff: millis(source.backoff_ms).unwrap_or(DEFAULT_BACKOFF),
        })
    }

    /// The `retry_on` conditions, as Envoy names them.
    pub fn conditions(&self) -> Vec<&'static str> {
        On::ALL
            .into_iter()
            .filter(|on| self.has(*on))
            .map(On::name)
            .collect()
    }

    /// The statuses retried under `retriable-status-codes`.
    pub fn codes(&self) -> &[u16] {
        &self.codes
    }

    fn has(&self, condition: On) -> bool {
        self.on & condition as u16 != 0
    }

    /// Whether a try that ended as `attempt` is retried (attempts and budget aside).
    pub fn retries(&self, attempt: Attempt) -> bool {
        let broken = self.has(On::ServerError) || self.has(On::Reset);
        match attempt {
            Attempt::ConnectFailure => broken || self.has(On::ConnectFailure),
            Attempt::RefusedStream => broken || self.has(On::RefusedStream),
            Attempt::Reset => broken,
            Attempt::TimedOut => broken || self.has(On::GatewayError),
            Attempt::Answered { status, grpc } => {
                (self.has(On::ServerError) && status >= 500)
                    || (self.has(On::GatewayError) && matches!(status, 502..=504))
                    || (self.has(On::Retriable4xx) && status == 409)
                    || (self.has(On::RetriableStatusCodes) && self.codes.contains(&status))
                    || grpc.is_some_and(|code| self.retries_grpc(code))
            }
        }
    }

    fn retries_grpc(&self, code: u32) -> bool {
        match code {
            1 => self.has(On::Cancelled),
            4 => self.has(On::DeadlineExceeded),
            8 => self.has(On::ResourceExhausted),
            13 => self.has(On::Internal),
            14 => self.has(On::Unavailable),
            _ => false,
        }
    }

    /// The pause before retry number `retry` (1-based): Envoy's fully jittered exponential
    /// backoff, `random` in `[0, base · 2^(retry-1))`, capped at ten times the base.
    pub fn backoff(&self, retry: u32, random: u64) -> Duration {
        let base = self.backoff.as_micros().max(1) as u64;
        let ceiling = base
            .saturating_mul(1u64 << retry.saturating_sub(1).min(20))
            .min(base * 10);
        Duration::from_micros(random % ceiling)
    }
}

/// Fault injection: a delay, an abort, or both, each for a share of requests.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Fault {
    pub delay: Option<(Duration, Percent)>,
    pub abort: Option<(Abort, Percent)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// A gRPC status code (with HTTP 200).
    Grpc(u32),
}

impl Fault {
    pub(crate) fn compile(source: &proto::Fault) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut percent = |field: &str, value: f64| {
            Percent::compile(value)
                .map_err(|e| problems.push(format!("{field}: {e}")))
                .unwrap_or(Percent(0))
        };
        let delay =
            millis(source.delay_ms).map(|d| (d, percent("delayPercent", source.delay_percent)));
        let abort_percent = percent("abortPercent", source.abort_percent);
        let abort = if !source.abort_grpc_status.is_empty() {
            match grpc_code(&source.abort_grpc_status) {
                Some(code) => Some((Abort::Grpc(code), abort_percent)),
                None => {
                    problems.push(format!(
                        "abortGrpcStatus: {:?} is not a gRPC status",
                        source.abort_grpc_status
                    ));
                    None
                }
            }
        } else if source.abort_status != 0 {
            match u16::try_from(source.abort_status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                Some(status) => Some((Abort::Http(status), abort_percent)),
                None => {
                    problems.push(format!(
                        "abortStatus: {} is not an HTTP status",
                        source.abort_status
                    ));
                    None
                }
            }
        } else {
            None
        };
        if problems.is_empty() {
            Ok(Self { delay, abort })
        } else {
            Err(problems)
        }
    }
}

/// gRPC status names as Istio's `grpcStatus` takes them, or their numbers.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC status code `text` names (`UNAVAILABLE`) or is (`14`).
pub fn grpc_code(text: &str) -> Option<u32> {
    text.parse::<u32>()
        .ok()
        .filter(|code| *code < 17)
        .or_else(|| {
            GRPC_CODES
                .iter()
                .position(|name| *name == text)
                .map(|i| i as u32)
        })
}

pub(crate) fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// `DestinationRule` `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Power of two choices over a peak-EWMA latency estimate (what Linkerd does).
    #[default]
    PeakEwma,
    RoundRobin,
    LeastRequest,
    Random,
    /// No choice: each request goes to the address its connection was sent to (Envoy's
    /// `ORIGINAL_DST`), in the clear, as kube-proxy then forwards it.
    Passthrough,
}

/// How the client sidecar reaches a backend's endpoints (`tls.mode`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Mesh mTLS to endpoints with a sidecar, clear text to the others.
    #[default]
    IstioMutual,
    /// Clear text, even to sidecars.
    Disable,
    /// `SIMPLE` or `MUTUAL`: the sidecar opens TLS of its own to every endpoint, as set.
    Originate(Arc<Origination>),
}

/// TLS the client sidecar originates (`SIMPLE`, or `MUTUAL` with a client certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Origination {
    /// PEM roots; `None`: the system's.
    pub ca_certificates: Option<PathBuf>,
    /// `MUTUAL`: the chain and key presented.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// The server name sent and verified; `None`: the backend's host name.
    pub sni: Option<String>,
    /// Names the server's certificate may carry instead of the server name.
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
}

impl Origination {
    fn compile(mode: &str, tls: Option<&proto::OriginateTls>, problems: &mut Vec<String>) -> Self {
        let tls = tls.cloned().unwrap_or_default();
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        let client_certificate = match (mode, path(&tls.client_certificate), path(&tls.private_key))
        {
            ("MUTUAL", Some(cert), Some(key)) => Some((cert, key)),
            ("MUTUAL", _, _) => {
                problems.push("tls: MUTUAL needs clientCertificate and privateKey".to_owned());
                None
            }
            (_, None, None) => None,
            _ => {
                problems
                    .push("tls: clientCertificate and privateKey are only for MUTUAL".to_owned());
                None
            }
        };
        Self {
            ca_certificates: path(&tls.ca_certificates),
            client_certificate,
            sni: (!tls.sni.is_empty()).then_some(tls.sni),
            subject_alt_names: tls.subject_alt_names,
            insecure_skip_verify: tls.insecure_skip_verify,
        }
    }
}

/// `connectionPool` limits; `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    /// Requests one upstream connection carries before the next one is opened.
    pub max_requests_per_connection: Option<u32>,
}

/// `outlierDetection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// A backend's DestinationRule policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    pub load_balancer: LoadBalancer,
    pub pool: PoolLimits,
    pub outlier: Option<Outlier>,
    pub tls: TlsMode,
    /// `namespace/name` of the DestinationRule, empty without one.
    pub source: String,
}

impl DestinationPolicy {
    pub(crate) fn compile(source: Option<&proto::TrafficPolicy>) -> Result<Self, Vec<String>> {
        let Some(source) = source else {
            return Ok(Self::default());
        };
        let mut problems = Vec::new();
        let load_balancer = match source.load_balancer.as_str() {
            "" | "UNSPECIFIED" => LoadBalancer::PeakEwma,
            "ROUND_ROBIN" => LoadBalancer::RoundRobin,
            "LEAST_REQUEST" | "LEAST_CONN" => LoadBalancer::LeastRequest,
            "RANDOM" => LoadBalancer::Random,
            "PASSTHROUGH" => LoadBalancer::Passthrough,
            other => {
                problems.push(format!("loadBalancer: {other:?} is not a load balancer"));
                LoadBalancer::PeakEwma
            }
        };
        let tls = match source.tls_mode.as_str() {
            "" | "ISTIO_MUTUAL" => TlsMode::IstioMutual,
            "DISABLE" => TlsMode::Disable,
            mode @ ("SIMPLE" | "MUTUAL") => TlsMode::Originate(Arc::new(Origination::compile(
                mode,
                source.tls.as_ref(),
                &mut problems,
            ))),
            other => {
                problems.push(format!(
                    "tlsMode: {other:?} is not supported by the sidecar"
                ));
                TlsMode::IstioMutual
            }
        };
        if load_balancer == LoadBalancer::Passthrough && matches!(tls, TlsMode::Originate(_)) {
            problems.push(
                "loadBalancer: PASSTHROUGH with tls SIMPLE or MUTUAL is not supported yet"
                    .to_owned(),
            );
        }
        let limit = |n: u32| (n > 0).then_some(n);
        let pool = source
            .connection_pool
            .as_ref()
            .map(|p| PoolLimits {
                max_connections: limit(p.max_connections),
                max_pending: limit(p.http1_max_pending_requests),
                max_requests: limit(p.http2_max_requests),
                max_retries: limit(p.max_retries),
                max_requests_per_connection: limit(p.max_requests_per_connection),
            })
            .unwrap_or_default();
        let outlier = source.outlier_detection.as_ref().map(|o| Outlier {
            consecutive_5xx: limit(o.consecutive_5xx_errors),
            consecutive_gateway: limit(o.consecutive_gateway_errors),
            // Envoy's defaults: 10 s interval, 30 s base ejection, 10% ejected at most.
            interval: millis(o.interval_ms).unwrap_or(Duration::from_secs(10)),
            base_ejection: millis(o.base_ejection_time_ms).unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: if o.max_ejection_percent == 0 {
                10
            } else {
                o.max_ejection_percent.min(100)
            },
        });
        if problems.is_empty() {
            Ok(Self {
                load_balancer,
                pool,
                outlier,
                tls,
                source: source.policy.clone(),
            })
        } else {
            Err(problems)
        }
    }
}
