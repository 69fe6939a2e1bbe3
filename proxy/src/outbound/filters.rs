//! What a route does to a request before it is sent, or instead of sending it: a CORS
//! preflight's answer, fault injection (a delay, an abort), a redirect, header changes and
//! rewrites. The decisions are
//! `remora_api::route`'s; this applies them to the request's head.

use http::{header, request::Parts, HeaderMap, HeaderValue, Response, Uri};
use remora_api::route::{Fault, MatchedPrefix, Redirect, Route};

use crate::{
    body::{empty, Body},
    metrics::{Flag, RequestRecord},
    respond::RequestError,
};

/// Delays the request and/or aborts it, each for its share of requests.
pub async fn inject_fault(fault: &Fault, record: &RequestRecord) -> Result<(), RequestError> {
    if let Some((delay, percent)) = fault.delay {
        if percent.hit(rand::random()) {
            record.flag(Flag::DelayInjected);
            tokio::time::sleep(delay).await;
        }
    }
    match fault.abort {
        Some((abort, percent)) if percent.hit(rand::random()) => {
            Err(RequestError::FaultAbort(abort))
        }
        _ => Ok(()),
    }
}

/// The answer to a CORS preflight, with `headers`.
pub fn preflight(headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.headers_mut() = headers;
    response
}

/// The redirect answered instead of the request.
pub fn redirect(redirect: &Redirect, parts: &Parts, matched: MatchedPrefix<'_>) -> Response<Body> {
    let location = redirect.location(
        parts.uri.scheme_str().unwrap_or("http"),
        authority(parts).unwrap_or_default(),
        parts.uri.path(),
        parts.uri.query(),
        matched,
    );
    let mut response = Response::new(empty());
    *response.status_mut() = redirect.status;
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The request's authority: the URI's (HTTP/2, absolute form), else `Host`.
fn authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The route's request header changes and rewrites (path, authority).
pub fn rewrite_request(
    route: &Route,
    matched: MatchedPrefix<'_>,
    parts: &mut Parts,
) -> Result<(), RequestError> {
    route.request_headers.apply(&mut parts.headers);
    let Some(rewrite) = &route.rewrite else {
        return Ok(());
    };
    if let Some(authority) = &rewrite.authority {
        parts.headers.insert(header::HOST, authority.clone());
        if parts.uri.authority().is_some() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = authority.to_str().ok().and_then(|a| a.parse().ok());
            parts.uri = Uri::from_parts(uri)
                .map_err(|_| RequestError::InvalidAuthority(format!("{authority:?}")))?;
        }
    }
    if let Some(path) = rewrite.path(parts.uri.path(), parts.uri.query(), matched) {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(
            path.parse()
                .map_err(|_| RequestError::InvalidAuthority(path.clone()))?,
        );
        parts.uri = Uri::from_parts(uri).map_err(|_| RequestError::InvalidAuthority(path))?;
    }
    Ok(())
}
