//! Mirroring (`mirror`/`mirrors`, `RequestMirror`): a copy of the request to another backend,
//! for the route's share of requests. Fire-and-forget: the copy keeps the request's Host, its
//! answer is discarded, and neither its failure nor its slowness ever reaches the caller. A
//! request with a body is copied once the primary try has read it (bodies over the recording
//! limit are not copied). Each copy is a span of the request's trace.

use std::{sync::Arc, time::Duration};

use http::{request::Parts, Request};
use remora_api::route::Route;

use crate::trace::Trace;

use super::{
    balance::Original,
    retry::RequestBody,
    routes::Resolved,
    send::{copy_head, send},
    Outbound,
};

/// How long a mirrored request may take before it is given up.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the copies `route` makes of the request (`parts`, `body`).
pub fn spawn(
    outbound: &Arc<Outbound>,
    route: &Route,
    resolved: &Resolved,
    parts: &Parts,
    body: &RequestBody,
    original: &Original,
    trace: Option<&Trace>,
) {
    for mirror in &route.mirrors {
        let Some(index) = mirror.backend else {
            continue;
        };
        if !mirror.percent.hit(rand::random()) {
            continue;
        }
        let Ok(upstream) = resolved.balancers[index].pick(&[], original) else {
            continue;
        };
        let head = copy_head(parts);
        let body = body.clone();
        let outbound = outbound.clone();
        let trace = trace.map(Trace::for_mirror);
        tokio::spawn(async move {
            let body = match body {
                RequestBody::Empty => crate::body::empty(),
                RequestBody::Recorded(recording) => match recording.complete().await {
                    Some(body) => body,
                    None => return outbound.metrics.mirror("skipped"),
                },
            };
            let request = send(
                &outbound,
                &upstream,
                Request::from_parts(head, body),
                trace.as_ref(),
            );
            let result = match tokio::time::timeout(MIRROR_TIMEOUT, request).await {
                Ok(Ok(_)) => "sent",
                Ok(Err(error)) => {
                    tracing::debug!(%error, "mirrored request failed");
                    "failed"
                }
                Err(_) => {
                    tracing::debug!("mirrored request timed out");
                    "failed"
                }
            };
            outbound.metrics.mirror(result);
        });
    }
}
