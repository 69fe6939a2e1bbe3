//! The outbound HTTP service: every request of an app connection is routed on its own, by the
//! newest routes of the Service port it was sent to. The stages, each in its own module and
//! each deciding with a pure function of `remora_api::route`:
//!
//! route (select; 404 when routes are attached and none matches) → CORS (a preflight answered
//! here) → fault injection → redirect
//! → request filters and rewrites ([`filters`]) → route timeout → mirrors ([`mirror`]) →
//! weighted split (once per request, as Envoy does) → tries within that backend ([`retry`]:
//! connection-pool admission, an endpoint from its balancer, preferring untried ones, the
//! try's timeout) → the endpoint's tunnel channel (or a direct connection to an endpoint
//! without a sidecar). The caller gets its own HTTP version back, whatever the hop in between
//! spoke.

use std::{
    future::{self, Future},
    net::SocketAddr,
    sync::Arc,
};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use remora_api::{
    route::{BackendKey, CorsAction, DestinationPolicy, RouteId, RouteKind, Target},
    Endpoint, ServiceKey,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    access_log::Downstream,
    body::Body,
    detect::Protocol,
    headers,
    listen::ConnectionError,
    metrics::RequestRecord,
    prefixed::PrefixedIo,
    respond::{respond, BoxedAnswer, RequestError, Stages},
    serve,
};

use super::{
    balance::{Original, Upstream},
    filters, mirror,
    retry::{self, RequestBody},
    routes::Resolved,
    send::{send, upgrade_to},
    Backend, Outbound,
};

/// Serves one app connection's requests.
pub(super) async fn serve<IO>(
    outbound: Arc<Outbound>,
    backend: Backend,
    original: Original,
    protocol: Protocol,
    io: PrefixedIo<IO>,
    downstream: Downstream,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = outbound.drain.clone();
    let recorder = backend.recorder(&outbound, downstream);
    let requests = outbound.requests.clone();
    let target = Arc::new(Destination {
        outbound,
        backend,
        original,
    });
    serve::http(protocol, io, &drain, respond(target, recorder, requests)).await?;
    Ok(())
}

impl Stages for Destination {
    fn call<'a>(
        &'a self,
        req: Request<Incoming>,
        record: &'a RequestRecord,
    ) -> impl Future<Output = Result<Response<Body>, RequestError>> + Send + 'a {
        self.forward(req, record)
    }
}

/// The access log's name for the route `id` names: `default` for a port's own, else
/// `<name>.<namespace>.<rule>` of the object it came from.
fn route_name(id: &RouteId) -> String {
    match id.kind {
        RouteKind::Default => "default".to_owned(),
        _ => format!("{}.{}.{}", id.name, id.namespace, id.rule),
    }
}

/// One app connection's destination.
struct Destination {
    outbound: Arc<Outbound>,
    backend: Backend,
    original: Original,
}

impl Destination {
    /// Not an `async fn`: the path (routed, fixed, a host outside the registry) is chosen here
    /// and its boxed future, one allocation per request, is the request's, with no wrapper
    /// keeping a second copy of the request.
    fn forward<'a>(&'a self, req: Request<Incoming>, record: &'a RequestRecord) -> BoxedAnswer<'a> {
        if req.method() == Method::CONNECT {
            // An app asking this hop to open a tunnel: Remora is not the app's forward proxy.
            return Box::pin(future::ready(Err(RequestError::ConnectNotSupported)));
        }
        match &self.backend {
            Backend::Routed(routes) => Box::pin(self.routed(routes.load(), req, record)),
            Backend::Fixed(upstream) => {
                let upstream = upstream.clone();
                upstream.answers(record, &self.outbound.metrics, &self.outbound.config);
                if headers::is_upgrade(&req) {
                    return Box::pin(async move {
                        upgrade_to(&self.outbound, &upstream, req, record.trace()).await
                    });
                }
                let (parts, body) = req.into_parts();
                let req = Request::from_parts(parts, body.into());
                Box::pin(async move { send(&self.outbound, &upstream, req, record.trace()).await })
            }
            Backend::Blackhole(dst) => Box::pin(self.by_host(*dst, req, record)),
        }
    }

    /// A request on a connection to an address outside the registry: a ServiceEntry host
    /// without addresses is found by the request's `Host` (on the port dialled); anything else
    /// is refused (`REGISTRY_ONLY`).
    async fn by_host(
        &self,
        dst: SocketAddr,
        req: Request<Incoming>,
        record: &RequestRecord,
    ) -> Result<Response<Body>, RequestError> {
        let host = req
            .uri()
            .host()
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
            })
            .map(str::to_ascii_lowercase);
        let port = host.and_then(|host| {
            self.outbound
                .config
                .load()
                .service(&ServiceKey {
                    hostname: host.into(),
                    port: dst.port(),
                })
                .cloned()
        });
        match port {
            None => Err(RequestError::Blackhole(dst)),
            Some(port) if port.passthrough => {
                let endpoint = Endpoint {
                    address: dst,
                    identity: None,
                    workload: None,
                };
                let backend = BackendKey {
                    service: port.key.clone(),
                    subset: None,
                };
                let upstream = Upstream::new(
                    &self.outbound.tunnel,
                    endpoint,
                    Some(&backend),
                    &DestinationPolicy::default(),
                    None,
                );
                upstream.answers(record, &self.outbound.metrics, &self.outbound.config);
                let (parts, body) = req.into_parts();
                send(
                    &self.outbound,
                    &upstream,
                    Request::from_parts(parts, body.into()),
                    record.trace(),
                )
                .await
            }
            Some(port) => {
                let routes = self.outbound.routes.get(
                    &port,
                    &self.outbound.config,
                    &self.outbound.tunnel,
                    &self.outbound.balancers,
                );
                self.routed(routes.load(), req, record).await
            }
        }
    }

    async fn routed(
        &self,
        resolved: Arc<Resolved>,
        req: Request<Incoming>,
        record: &RequestRecord,
    ) -> Result<Response<Body>, RequestError> {
        let (mut parts, body) = req.into_parts();
        let selected = resolved
            .port
            .routes
            .select(&parts.method, &parts.uri, &parts.headers)
            .ok_or(RequestError::NoRoute)?;
        let route = selected.route;
        record.route(|| route_name(&route.id));
        let cors = match route
            .cors
            .as_ref()
            .map(|c| c.action(&parts.method, &parts.headers))
        {
            Some(CorsAction::Preflight(headers)) => return Ok(filters::preflight(headers)),
            Some(CorsAction::Respond(headers)) => Some(headers),
            Some(CorsAction::None) | None => None,
        };
        if let Some(fault) = &route.fault {
            filters::inject_fault(fault, record).await?;
        }
        if let Some(redirect) = &route.redirect {
            return Ok(filters::redirect(
                redirect,
                &parts,
                selected.matched_prefix(),
            ));
        }
        filters::rewrite_request(route, selected.matched_prefix(), &mut parts)?;
        let share = route
            .split(rand::random())
            .map_err(|e| RequestError::NoBackend {
                status: e.status,
                reason: e.reason,
            })?;
        let balancer = match &share.target {
            Target::Backend(index) => &resolved.balancers[*index],
            Target::Unresolved { status, reason } => {
                return Err(RequestError::NoBackend {
                    status: *status,
                    reason: reason.clone(),
                })
            }
        };
        share.request_headers.apply(&mut parts.headers);
        if headers::is_upgrade_head(parts.version, &parts.headers) {
            let upstream = balancer
                .pick(&[], &self.original)
                .map_err(retry::no_upstream)?;
            upstream.answers(record, &self.outbound.metrics, &self.outbound.config);
            let req = Request::from_parts(parts, body);
            let response =
                Box::pin(upgrade_to(&self.outbound, &upstream, req, record.trace())).await?;
            return Ok(response);
        }
        let (body, first) = RequestBody::new(body);
        mirror::spawn(
            &self.outbound,
            route,
            &resolved,
            &parts,
            &body,
            &self.original,
            record.trace(),
        );
        let tries = retry::tries(
            &self.outbound,
            balancer,
            &self.original,
            &route.retry,
            retry::Outgoing { parts, body, first },
            record,
        );
        let mut response = match route.timeout {
            Some(limit) => tokio::time::timeout(limit, tries)
                .await
                .map_err(|_| RequestError::Timeout)??,
            None => tries.await?,
        };
        share.response_headers.apply(response.headers_mut());
        route.response_headers.apply(response.headers_mut());
        if let Some(cors) = cors {
            response.headers_mut().extend(cors);
        }
        Ok(response)
    }
}
