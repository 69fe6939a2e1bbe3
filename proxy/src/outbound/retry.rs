//! The tries of one request within the backend its route chose: a place in the backend's
//! connection pool, an endpoint from its balancer (a retry prefers one not tried yet), the
//! try's own time limit, and whether the answer is retried ([`RetryPolicy::retries`], pure).
//! Each try carries `x-envoy-attempt-count`. Retries wait a jittered backoff and draw on the
//! backend's retry budget (20% of its requests plus 10 a second, tower's `TpsBudget`), so a
//! failing backend is not hit by a storm; a body that cannot be sent again is not retried.

use std::{error::Error as StdError, future::Future, net::SocketAddr, sync::Arc};

use http::{request::Parts, HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use remora_api::route::{Attempt, RetryPolicy};
use tower::retry::budget::Budget;

use crate::{
    body::{Body, Recording},
    metrics::{Flag, RequestRecord},
    pool::PoolError,
    respond::RequestError,
};

use super::{
    balance::{Balancer, NoUpstream, Original},
    send::{copy_head, send},
    Outbound,
};

/// Envoy's header naming the try a request is.
const ATTEMPT_COUNT: http::HeaderName = http::HeaderName::from_static("x-envoy-attempt-count");

/// `x-envoy-attempt-count` values, built once: no formatting per try.
const ATTEMPTS: [HeaderValue; 10] = [
    HeaderValue::from_static("1"),
    HeaderValue::from_static("2"),
    HeaderValue::from_static("3"),
    HeaderValue::from_static("4"),
    HeaderValue::from_static("5"),
    HeaderValue::from_static("6"),
    HeaderValue::from_static("7"),
    HeaderValue::from_static("8"),
    HeaderValue::from_static("9"),
    HeaderValue::from_static("10"),
];

fn attempt_count(attempt: u32) -> HeaderValue {
    ATTEMPTS
        .get(attempt as usize - 1)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(attempt))
}

/// A request body, sendable more than once when it is empty or small enough to record.
#[derive(Clone)]
pub enum RequestBody {
    Empty,
    Recorded(Recording),
}

impl RequestBody {
    /// `body`, recorded as it is sent unless it is empty; returns the first try's body too.
    pub fn new(body: Incoming) -> (Self, Body) {
        if body.is_end_stream() {
            return (RequestBody::Empty, crate::body::empty());
        }
        let (recording, first) = Recording::new(body);
        (RequestBody::Recorded(recording), Body::Replay(first))
    }

    /// The body for another try, if it can be sent again.
    fn again(&self) -> Option<Body> {
        match self {
            RequestBody::Empty => Some(crate::body::empty()),
            RequestBody::Recorded(recording) => recording.replay().map(Body::Replay),
        }
    }
}

/// A request as its tries send it: the head, the first try's body, and the body to send again.
pub struct Outgoing {
    pub parts: Parts,
    pub body: RequestBody,
    pub first: Body,
}

/// The answer to a request that could not get an endpoint.
pub fn no_upstream(reason: NoUpstream) -> RequestError {
    match reason {
        NoUpstream::Empty => RequestError::NoHealthyUpstream,
        NoUpstream::Overflow => RequestError::Overflow,
    }
}

/// Sends the request (`parts`, `first` body, replayed from `body`) to `balancer`'s endpoints
/// until an answer is not retried, or tries run out.
///
/// A block rather than an `async fn`, so the request is taken apart before it is held: an
/// `async fn` would keep the whole `Outgoing` besides its parts, in every request's future.
pub fn tries<'a>(
    outbound: &'a Outbound,
    balancer: &'a Arc<Balancer>,
    original: &'a Original,
    policy: &'a RetryPolicy,
    request: Outgoing,
    record: &'a RequestRecord,
) -> impl Future<Output = Result<Response<Body>, RequestError>> + Send + 'a {
    let Outgoing {
        mut parts,
        body,
        first,
    } = request;
    async move {
        let pool = balancer.policy();
        balancer.budget.deposit();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut next_body = Some(first);
        let mut attempt: u32 = 1;
        let mut _slot = None;
        loop {
            let last = attempt > policy.attempts;
            let admitted = balancer.admit(&pool.pool).await.map_err(no_upstream)?;
            let upstream = balancer.pick(&tried, original).map_err(no_upstream)?;
            upstream.answers(record, &outbound.metrics, &outbound.config);
            let Some(try_body) = next_body.take() else {
                return Err(RequestError::NoHealthyUpstream);
            };
            let head = if last {
                std::mem::replace(&mut parts, copy_head_empty())
            } else {
                copy_head(&parts)
            };
            let req = numbered(head, try_body, attempt);
            let in_flight = upstream.start(balancer.timed());
            // Boxed: kept inline, the try's future (the tunnel's and the pool's, 0.9 KiB) would
            // be carried by the tries', and the routing future's, on every request, retried
            // or not.
            let try_once = Box::pin(send(outbound, &upstream, req, record.trace()));
            let result = match policy.per_try_timeout {
                Some(limit) => tokio::time::timeout(limit, try_once)
                    .await
                    .unwrap_or(Err(RequestError::Timeout)),
                None => try_once.await,
            };
            drop(in_flight);
            drop(admitted);
            let outcome = attempt_of(&result);
            balancer.report(&upstream, outcome);
            if !policy.retries(outcome) {
                return result;
            }
            // From here the try failed in a way the policy retries: a way not to is Envoy's URX.
            let exceeded = |result| {
                record.flag(Flag::RetryLimitExceeded);
                result
            };
            if last {
                return exceeded(result);
            }
            let Some(again) = body.again() else {
                return result;
            };
            if !balancer.budget.withdraw() {
                tracing::debug!(endpoint = %upstream.endpoint.address, "retry budget exhausted");
                return exceeded(result);
            }
            let Some(slot) = balancer.retry_slot(&pool.pool) else {
                return exceeded(result);
            };
            _slot = Some(slot);
            outbound.metrics.retry();
            tracing::debug!(endpoint = %upstream.endpoint.address, ?outcome, attempt, "retrying");
            next_body = Some(again);
            tried.push(upstream.endpoint.address);
            tokio::time::sleep(policy.backoff(attempt, rand::random())).await;
            attempt += 1;
        }
    }
}

/// Try `attempt`'s request, numbered in `x-envoy-attempt-count`. Built outside the tries'
/// future: a request borrowed there would be kept in it after it is sent.
fn numbered(head: Parts, body: Body, attempt: u32) -> Request<Body> {
    let mut req = Request::from_parts(head, body);
    req.headers_mut()
        .insert(ATTEMPT_COUNT, attempt_count(attempt));
    req
}

/// A placeholder head, for when the last try takes the real one.
fn copy_head_empty() -> Parts {
    Request::new(()).into_parts().0
}

/// How a try ended, as retry policies and outlier detection see it.
fn attempt_of(result: &Result<Response<Body>, RequestError>) -> Attempt {
    match result {
        Ok(response) => Attempt::Answered {
            status: response.status().as_u16(),
            grpc: response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        Err(RequestError::Timeout) => Attempt::TimedOut,
        Err(RequestError::Unavailable { source, .. }) => failure_of(source.as_ref()),
        Err(_) => Attempt::Reset,
    }
}

/// Whether an upstream failure happened before the request left (no connection), was refused
/// by the peer before it read it, or broke after.
fn failure_of(error: &(dyn StdError + 'static)) -> Attempt {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(pool) = error.downcast_ref::<PoolError>() {
            if matches!(
                pool,
                PoolError::Dial { .. } | PoolError::RecentDialFailure(_) | PoolError::Handshake(_)
            ) {
                return Attempt::ConnectFailure;
            }
        }
        if error
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
        {
            return Attempt::ConnectFailure;
        }
        if error
            .downcast_ref::<h2::Error>()
            .is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return Attempt::RefusedStream;
        }
        cause = error.source();
    }
    Attempt::Reset
}
