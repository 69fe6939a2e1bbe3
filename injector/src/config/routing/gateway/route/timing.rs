//! A rule's `timeouts` and `retry`, combined as Istio's `convertHTTPRoute` combines them, in the
//! GEP-2257 durations they are written in.

use remora_api::proto::config as proto;

use super::Reader;
use crate::config::routing::gateway::{
    spec::{RetrySpec, TimeoutsSpec},
    syntax::parse_duration,
};

impl Reader<'_> {
    /// `timeouts` and `retry`, as Istio's `convertHTTPRoute` sets them: `request` is the
    /// route's timeout; `backendRequest` is each try's, or, when the rule sets no `retry` (so
    /// the mesh's default retries apply), the route's timeout in place of `request`.
    pub(super) fn timing(
        &mut self,
        rule: &str,
        timeouts: Option<TimeoutsSpec>,
        retry: Option<RetrySpec>,
    ) -> (u64, Option<proto::Retry>) {
        let mut retry = retry.map(|spec| self.retry(&format!("{rule}.retry"), spec));
        let timeouts = timeouts.unwrap_or_default();
        let request = self.duration(&format!("{rule}.timeouts.request"), timeouts.request);
        let backend = self.duration(
            &format!("{rule}.timeouts.backendRequest"),
            timeouts.backend_request,
        );
        if request != 0 && backend > request {
            self.problem(
                format!("{rule}.timeouts.backendRequest"),
                format!("{backend}ms is longer than the request timeout ({request}ms)"),
            );
        }
        let mut timeout_ms = request;
        if backend != 0 {
            match &mut retry {
                Some(retry) => retry.per_try_timeout_ms = backend,
                None => timeout_ms = backend,
            }
        }
        (timeout_ms, retry)
    }

    /// A rule's `retry`, as Istio converts it: 2 attempts unless set; retried on connection
    /// failures, refused streams, and gRPC `unavailable` and `cancelled` ("Implementations
    /// SHOULD retry on connection errors ... if a retry stanza is configured"), and on `codes`.
    fn retry(&mut self, field: &str, spec: RetrySpec) -> proto::Retry {
        let attempts = match spec.attempts {
            None => 2,
            Some(attempts) => u32::try_from(attempts)
                .ok()
                .filter(|a| *a >= 1)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{field}.attempts"),
                        format!("{attempts} is less than 1"),
                    );
                    2
                }),
        };
        let mut codes: Vec<u32> = Vec::new();
        for (k, code) in spec.codes.unwrap_or_default().into_iter().enumerate() {
            match u32::try_from(code).ok().filter(|c| (400..=599).contains(c)) {
                Some(code) if codes.contains(&code) => self.problem(
                    format!("{field}.codes[{k}]"),
                    format!("{code} is listed twice"),
                ),
                Some(code) => codes.push(code),
                None => self.problem(
                    format!("{field}.codes[{k}]"),
                    format!("{code} is not between 400 and 599"),
                ),
            }
        }
        let mut retry_on: Vec<String> = [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
        ]
        .map(str::to_owned)
        .to_vec();
        if !codes.is_empty() {
            retry_on.push("retriable-status-codes".to_owned());
        }
        proto::Retry {
            attempts,
            per_try_timeout_ms: 0,
            retry_on,
            codes,
            backoff_ms: self.duration(&format!("{field}.backoff"), spec.backoff),
            remote_localities: false,
        }
    }

    /// A Gateway API duration in milliseconds; unset is 0, as is `0s` ("no timeout").
    fn duration(&mut self, field: &str, value: Option<String>) -> u64 {
        let Some(value) = value else {
            return 0;
        };
        parse_duration(&value).unwrap_or_else(|| {
            self.problem(
                field,
                format!("{value:?} is not a duration such as 10s, 500ms or 1h30m"),
            );
            0
        })
    }
}
