//! A rule's `retries`: attempts, per-try timeout, backoff and `retryOn` conditions, Istio's
//! defaults written out, and conditions the sidecar does not implement yet rejected by name.

use remora_api::proto::config as proto;

use crate::config::routing::istio::{
    checks::{ranged, Problems},
    duration::millis,
    spec::RetrySpec,
};

/// Istio's retry conditions when `retryOn` is unset (`retriable-status-codes` with no codes).
pub(in crate::config::routing::istio) const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// The `retryOn` conditions the sidecar implements.
const RETRY_ON: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Conditions Envoy (and so Istio) takes that the sidecar does not implement yet.
const RETRY_ON_UNSUPPORTED: [&str; 4] = [
    "reset-before-request",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
];

pub(super) fn retry(spec: RetrySpec, path: &str, p: &mut Problems) -> proto::Retry {
    let at = |field: &str| format!("{path}.{field}");
    let attempts = ranged(
        spec.attempts.unwrap_or(0),
        0..=i64::from(i32::MAX),
        &at("attempts"),
        p,
    )
    .unwrap_or(0);
    let retry_on = spec.retry_on.filter(|r| !r.is_empty());
    if attempts == 0
        && (spec.per_try_timeout.is_some()
            || retry_on.is_some()
            || spec.retry_remote_localities.is_some())
    {
        p.add(
            path,
            "perTryTimeout, retryOn and retryRemoteLocalities need attempts (0 disables retries)",
        );
    }
    if spec.retry_ignore_previous_hosts.is_some() {
        p.unsupported(&at("retryIgnorePreviousHosts"));
    }
    let per_try_timeout_ms = spec
        .per_try_timeout
        .map_or(0, |timeout| millis(timeout, &at("perTryTimeout"), p));
    let backoff_ms = spec
        .backoff
        .map_or(0, |backoff| millis(backoff, &at("backoff"), p));
    let (conditions, codes) = match retry_on {
        None => (DEFAULT_RETRY_ON.map(str::to_owned).to_vec(), Vec::new()),
        Some(text) => retry_conditions(&text, &at("retryOn"), p),
    };
    if attempts == 0 {
        return proto::Retry::default();
    }
    proto::Retry {
        attempts,
        per_try_timeout_ms,
        retry_on: conditions,
        codes,
        backoff_ms,
        remote_localities: spec.retry_remote_localities.unwrap_or(false),
    }
}

/// `retryOn` split as Istio splits it: HTTP statuses are codes (and imply
/// `retriable-status-codes`), the rest Envoy's conditions. Like Istio's validation, no space is
/// allowed around the commas.
fn retry_conditions(text: &str, path: &str, p: &mut Problems) -> (Vec<String>, Vec<u32>) {
    let mut conditions: Vec<String> = Vec::new();
    let mut codes = Vec::new();
    for part in text.split(',') {
        if let Some(code) = part.parse::<u32>().ok().filter(|c| is_http_status(*c)) {
            codes.push(code);
        } else if RETRY_ON.contains(&part) {
            conditions.push(part.to_owned());
        } else if RETRY_ON_UNSUPPORTED.contains(&part) {
            p.add(path, format!("{part:?} is not supported yet"));
        } else {
            p.add(
                path,
                format!("{part:?} is neither a retry condition nor an HTTP status"),
            );
        }
    }
    if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
        conditions.push("retriable-status-codes".to_owned());
    }
    (conditions, codes)
}

/// The statuses Go's `http.StatusText` names, which Istio takes as retriable codes.
fn is_http_status(code: u32) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}
