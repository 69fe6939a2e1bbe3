//! A request's trace on this hop and the spans it reports. The server side's span starts with
//! the request's head and ends when the caller has the last byte of the answer. On the client
//! side each try is a span: one whose answer was not the caller's (retried, or a mirror's) ends
//! with its answer's head, the one that answered ends with the request; a request answered
//! before any try gets a span of its own. Only sampled requests build spans.

use std::{
    borrow::Cow,
    fmt::Display,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::SystemTime,
};

use http::{HeaderMap, Request, Version};
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    KeyValue,
};
use opentelemetry_sdk::trace::SpanData;
use parking_lot::Mutex;
use rand::Rng;
use remora_api::SpiffeId;

use super::{
    context::{self, Formats, Outgoing},
    Side, SideTracer,
};

impl SideTracer {
    /// The trace of a request whose head just arrived: its sampling decided (the caller's
    /// decision is honoured even where headers are not written), and on the server side,
    /// this hop's span written as the app's parent.
    pub fn start<B>(self: &Arc<Self>, req: &mut Request<B>) -> Trace {
        let incoming = context::extract(req.headers());
        let mut rng = rand::rng();
        let sampled = self.tracing.sampled(incoming.sampled, || rng.random());
        let (trace_id, parent) = match incoming.parent {
            Some((trace_id, span_id)) => (trace_id, Some(span_id)),
            None => (rng.random::<u128>().max(1), None),
        };
        let mut trace = Trace {
            lineage: Lineage {
                side: self.clone(),
                trace_id,
                parent,
            },
            sampled,
            debug: incoming.debug,
            formats: self.formats | incoming.formats,
            shared: sampled.then(Arc::default),
            span: None,
            mirror: false,
        };
        let span_id = match self.side {
            Side::Server => {
                let span_id = new_span_id(&mut rng);
                trace.write(req.headers_mut(), span_id);
                span_id
            }
            // Each try has its own; this one names the request's span, if it needs one.
            Side::Client if sampled => new_span_id(&mut rng),
            Side::Client => return trace,
        };
        if sampled {
            trace.span = Some(Box::new(Started::of(req, span_id, self)));
        }
        trace
    }
}

/// A new span id (never zero).
fn new_span_id(rng: &mut impl Rng) -> u64 {
    rng.random::<u64>().max(1)
}

/// What every span of a request shares.
#[derive(Clone)]
struct Lineage {
    side: Arc<SideTracer>,
    trace_id: u128,
    /// The caller's span, when it sent one.
    parent: Option<u64>,
}

/// What a sampled request's spans share while it lasts.
#[derive(Default)]
struct Shared {
    /// The route that took it.
    route: OnceLock<String>,
    /// Client side: a try was made, so the request needs no span of its own.
    tried: AtomicBool,
    /// Client side: the try whose answer the caller is getting, and that answer's status.
    answering: Mutex<Option<(Attempt, u16)>>,
}

/// A request's trace on this hop.
#[derive(Clone)]
pub struct Trace {
    lineage: Lineage,
    sampled: bool,
    /// The caller asked for B3's debug sampling, which travels on.
    debug: bool,
    formats: Formats,
    /// Present when sampled.
    shared: Option<Arc<Shared>>,
    /// The request's own span (server side; client side, reported only if no try was made).
    span: Option<Box<Started>>,
    /// A mirror's copy: its tries end with their answers.
    mirror: bool,
}

/// What a span knows from its start.
#[derive(Clone)]
struct Started {
    span_id: u64,
    start: SystemTime,
    /// The request's authority, which names the span when no Service does.
    authority: Option<String>,
    attributes: Vec<KeyValue>,
    /// The other side's verified identity.
    peer: Option<Arc<str>>,
    /// The Service host and port (the span is `host:port/*`, as Envoy names it).
    service: Option<(Arc<str>, u16)>,
}

impl Started {
    fn of<B>(req: &Request<B>, span_id: u64, side: &SideTracer) -> Self {
        let headers = req.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| text("host"));
        // `maxTagLength` bounds the path, as Envoy's `max_path_tag_length` does.
        let mut path = req.uri().path();
        if let Some(limit) = side.tracing.provider.max_tag_length {
            if path.len() > limit {
                let mut end = limit;
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                path = &path[..end];
            }
        }
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_owned()),
            KeyValue::new("url.path", path.to_owned()),
            KeyValue::new("network.protocol.version", protocol(req.version())),
        ];
        if let Some(query) = req.uri().query() {
            attributes.push(KeyValue::new("url.query", query.to_owned()));
        }
        if let Some(authority) = authority {
            attributes.push(KeyValue::new("server.address", authority.to_owned()));
        }
        if let Some(agent) = text("user-agent") {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        if let Some(id) = text("x-request-id") {
            attributes.push(KeyValue::new("guid:x-request-id", id.to_owned()));
        }
        if let Some(attempt) = text("x-envoy-attempt-count")
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|&n| n > 1)
        {
            attributes.push(KeyValue::new("http.request.resend_count", attempt - 1));
        }
        for (attribute, header, fallback) in &side.headers {
            let value = text(header).unwrap_or(fallback);
            attributes.push(KeyValue::new(attribute.clone(), value.to_owned()));
        }
        Self {
            span_id,
            start: SystemTime::now(),
            authority: authority.map(str::to_owned),
            attributes,
            peer: None,
            service: None,
        }
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// How a request (or a try) ended, as its span reports it.
pub struct Ended<'a> {
    /// 0: no answer.
    pub code: u16,
    /// Envoy's response flags.
    pub flags: &'a dyn Display,
    pub grpc_status: Option<u8>,
}

/// What the request's own span says about its connection, known when it ends (a tunnelled
/// request names its app port on its way in; a client's request, its upstream).
pub struct Described {
    /// The caller's verified identity.
    pub source: Option<Arc<str>>,
    /// The identity the upstream proved (or must prove).
    pub destination: Option<Arc<str>>,
    /// The Service host it called.
    pub service: Option<Arc<str>>,
    /// The port it called (the app port, or the Service port).
    pub port: u16,
}

/// Where a try goes.
pub struct To<'a> {
    pub address: SocketAddr,
    pub identity: Option<&'a SpiffeId>,
    pub cluster: Option<&'a Arc<str>>,
    /// The Service host and port, if any.
    pub service: Option<(&'a Arc<str>, u16)>,
}

impl Trace {
    /// The route that took the request (`name` is only called when spans are reported).
    pub fn route(&self, name: impl FnOnce() -> String) {
        if let Some(shared) = &self.shared {
            shared.route.get_or_init(name);
        }
    }

    /// This trace as a mirrored copy carries it.
    pub fn for_mirror(&self) -> Trace {
        Trace {
            span: None,
            mirror: true,
            ..self.clone()
        }
    }

    fn write(&self, headers: &mut HeaderMap, span_id: u64) {
        if self.lineage.side.tracing.propagation {
            let context = Outgoing {
                trace_id: self.lineage.trace_id,
                span_id,
                parent_span_id: self.lineage.parent,
                sampled: self.sampled,
                debug: self.debug,
            };
            context::inject(headers, &context, self.formats);
        }
    }

    /// One try of the request, about to be sent as `req` to `to`: its own span id is written
    /// as the peer's parent; `Some` when the try is a span to report.
    pub fn attempt<B>(&self, req: &mut Request<B>, to: &To<'_>) -> Option<Attempt> {
        let span_id = new_span_id(&mut rand::rng());
        self.write(req.headers_mut(), span_id);
        let shared = self.shared.as_ref()?;
        if !self.mirror {
            shared.tried.store(true, Relaxed);
        }
        let mut started = Started::of(req, span_id, &self.lineage.side);
        started.peer = to.identity.map(|id| Arc::from(id.to_string()));
        started.service = to.service.map(|(host, port)| (host.clone(), port));
        Some(Attempt {
            lineage: self.lineage.clone(),
            started: Some(started),
            upstream: to.address,
            cluster: to.cluster.cloned(),
            route: shared.route.get().cloned(),
        })
    }

    /// A try got an answer with status `code`: a mirror's span ends now; another's when the
    /// caller has its answer, unless a later try answers instead (a retry), which ends it.
    pub fn answered(&self, attempt: Attempt, code: u16) {
        match &self.shared {
            Some(shared) if !self.mirror => {
                if let Some((earlier, code)) = shared.answering.lock().replace((attempt, code)) {
                    earlier.end(code, &"-", None);
                }
            }
            _ => attempt.end(code, &"-", None),
        }
    }

    /// Whether the request's own span waits to be reported when it ends.
    pub fn has_span(&self) -> bool {
        self.span.is_some()
    }

    /// Reports the request's spans as it ended: the server side's own span, on the connection
    /// `describe` tells about (named after the Service and the port the caller addressed: its
    /// `:authority`'s, else the app port, as Envoy names it); on the client side, the try that
    /// answered, or the request's own span if it never reached a try.
    pub fn end(&mut self, ended: &Ended<'_>, describe: impl FnOnce() -> Described) {
        let Some(shared) = &self.shared else {
            return;
        };
        if let Some((attempt, _)) = shared.answering.lock().take() {
            attempt.end(ended.code, ended.flags, ended.grpc_status);
        }
        let tried = shared.tried.load(Relaxed);
        let route = shared.route.get().map(String::as_str);
        let Some(mut started) = self.span.take() else {
            return;
        };
        let side = self.lineage.side.side;
        if side == Side::Client && tried {
            return;
        }
        let described = describe();
        let port = started
            .authority
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or(described.port);
        started.peer = match side {
            Side::Server => described.source,
            Side::Client => described.destination,
        };
        started.service = described.service.map(|host| (host, port));
        self.lineage.report(*started, ended, None, route);
    }
}

impl Lineage {
    fn report(
        &self,
        started: Started,
        ended: &Ended<'_>,
        upstream: Option<(SocketAddr, Option<&str>)>,
        route: Option<&str>,
    ) {
        let side = &self.side;
        let Started {
            span_id,
            start,
            authority,
            mut attributes,
            peer,
            service,
        } = started;
        let name = match (service, authority) {
            (Some((host, port)), _) => format!("{host}:{port}/*"),
            (None, Some(authority)) => format!("{authority}/*"),
            (None, None) => "unknown/*".to_owned(),
        };
        attributes.extend(side.fixed.iter().cloned());
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(ended.code),
        ));
        attributes.push(KeyValue::new("response_flags", ended.flags.to_string()));
        if let Some(status) = ended.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(status)));
        }
        if let Some(route) = route {
            attributes.push(KeyValue::new("route_name", route.to_owned()));
        }
        if let Some((address, cluster)) = upstream {
            attributes.push(KeyValue::new(
                "network.peer.address",
                address.ip().to_string(),
            ));
            attributes.push(KeyValue::new(
                "network.peer.port",
                i64::from(address.port()),
            ));
            if let Some(cluster) = cluster {
                attributes.push(KeyValue::new("upstream_cluster", cluster.to_owned()));
            }
        }
        if let Some(peer) = peer {
            attributes.push(KeyValue::new("peer.identity", peer.to_string()));
        }
        // A server failed when it answered 5xx (or not at all); a client when it got >= 400.
        let failed = ended.code == 0
            || ended.code >= 500
            || (side.side == Side::Client && ended.code >= 400);
        let status = if failed {
            Status::error(ended.code.to_string())
        } else {
            Status::Unset
        };
        side.exporter.send(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id.to_be_bytes()),
                SpanId::from_bytes(span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: self
                .parent
                .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: match side.side {
                Side::Client => SpanKind::Client,
                Side::Server => SpanKind::Server,
            },
            name: Cow::Owned(name),
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: side.scope.clone(),
        });
    }
}

/// One try's span, reported when it ends, or when it is given up (its future dropped by a
/// timeout or a caller gone) as unanswered.
pub struct Attempt {
    lineage: Lineage,
    /// Taken when reported.
    started: Option<Started>,
    upstream: SocketAddr,
    cluster: Option<Arc<str>>,
    route: Option<String>,
}

impl Attempt {
    /// The try ended with status `code` (0: none), with response `flags`.
    pub fn end(mut self, code: u16, flags: &dyn Display, grpc_status: Option<u8>) {
        self.report(code, flags, grpc_status);
    }

    fn report(&mut self, code: u16, flags: &dyn Display, grpc_status: Option<u8>) {
        if let Some(started) = self.started.take() {
            self.lineage.report(
                started,
                &Ended {
                    code,
                    flags,
                    grpc_status,
                },
                Some((self.upstream, self.cluster.as_deref())),
                self.route.as_deref(),
            );
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.report(0, &"-", None);
    }
}
