//! Per-request and per-connection records: made by a connection's [`Recorder`] (its series,
//! resolved once, and its access log, if any), told by the request path what happened (the
//! upstream that answered, response flags, the route), and counted (and logged) when the
//! exchange is over. A request is over when its response's last byte is
//! sent, so [`RecordedBody`] carries the record along with the response body: it counts the
//! bytes, reads a gRPC status from the trailers, and records on the end of the stream or,
//! when the caller goes away first, on drop (`DC`, response code 0 if nothing was sent).
//! A request's record also holds its trace ([`crate::trace`]): started with the record (which
//! gives a request without an `x-request-id` one first), reported with it.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU16, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;

use super::{
    flags::{Flag, Flags},
    istio::{Outcome, Series, TcpCells},
};
use crate::{
    access_log::{Downstream, Entry, Log},
    body::{Body, BoxError},
    trace::{context, Described, Ended, SideTracer, Trace},
};

/// What one side records right now, from the snapshot in use: whether its metrics are on,
/// its access log, the request headers labels take values from, and its tracing. Replaced
/// whole on every config push, so long-lived connections (a peer's pooled tunnel) follow it.
#[derive(Clone)]
pub struct SideState {
    pub metrics: bool,
    pub log: Option<Log>,
    /// `None`: no label takes a request's value.
    pub request_tags: Option<Arc<[String]>>,
    /// `None`: the side does not trace.
    pub tracing: Option<Arc<SideTracer>>,
}

impl Default for SideState {
    fn default() -> Self {
        Self {
            metrics: true,
            log: None,
            request_tags: None,
            tracing: None,
        }
    }
}

/// What a connection's requests and streams are recorded with: the series they count under,
/// resolved once per connection, and its side's state as it is when each starts.
#[derive(Clone)]
pub struct Recorder {
    pub series: Arc<Series>,
    pub downstream: Downstream,
    pub side: Arc<ArcSwap<SideState>>,
}

impl Recorder {
    /// A recorder that counts under `series` and writes no log.
    pub fn counting(series: Arc<Series>) -> Self {
        Self {
            series,
            downstream: Downstream::default(),
            side: Arc::default(),
        }
    }

    /// The record of a request whose head just arrived (given an `x-request-id` if it has
    /// none, and its trace context when the side traces).
    pub fn start<B>(&self, req: &mut Request<B>) -> RequestRecord {
        context::ensure_request_id(req.headers_mut(), rand::random);
        let side = self.side.load();
        let trace = side.tracing.as_ref().map(|tracing| tracing.start(req));
        let log = side.log.as_ref().map(|log| {
            let entry = log.logger.request(req, &self.downstream);
            Box::new((log.clone(), entry))
        });
        let tags = side.request_tags.as_ref().map(|names| {
            let values = names
                .iter()
                .map(|name| (name.clone(), request_value(req, name)))
                .collect();
            Box::new(values)
        });
        // A server span, too, is described by the series the request ends up counted under.
        let keep = side.metrics || trace.as_ref().is_some_and(Trace::has_span);
        let counted = Counted {
            series: keep.then(|| self.series.clone()),
            counts: side.metrics,
            port: self.downstream.local.map_or(0, |a| a.port()),
        };
        RequestRecord::start(counted, req, log, tags, trace)
    }

    /// The record of a TCP stream opened now.
    pub fn tcp(&self) -> TcpRecord {
        self.tcp_ending(Flags::NONE)
    }

    /// Records a TCP connection that never reached an upstream, for the reason `flag` says
    /// (none: the upstream would not take it), opened and closed at once.
    pub fn tcp_failed(&self, flag: Option<Flag>) {
        let flags = flag.map_or(Flags::NONE, Flags::from);
        drop(self.tcp_ending(flags));
    }

    fn tcp_ending(&self, flags: Flags) -> TcpRecord {
        let side = self.side.load();
        let log = side.log.as_ref().map(|log| {
            let mut entry = log.logger.connection(&self.downstream);
            entry.flags = flags;
            Box::new((log.clone(), entry))
        });
        TcpRecord::open(side.metrics.then_some(&*self.series), log, flags)
    }

    /// This connection's recorder, counting under `series` instead (the upstream it reached).
    pub fn counting_as(&self, series: Arc<Series>) -> Self {
        Self {
            series,
            downstream: self.downstream.clone(),
            side: self.side.clone(),
        }
    }
}

/// Request header `name` (`:authority`, `:method` for the request's own) as text.
fn request_value<B>(req: &Request<B>, name: &str) -> Option<String> {
    match name {
        ":method" => Some(req.method().as_str().to_owned()),
        ":authority" => req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| header_text(req.headers(), "host")),
        ":path" => req.uri().path_and_query().map(|pq| pq.as_str().to_owned()),
        name => header_text(req.headers(), name),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A record's access log entry, when the connection logs.
type Logged = Option<Box<(Log, Entry)>>;

/// The values of the request headers labels are taken from, by header name.
type Tags = Option<Box<Vec<(String, Option<String>)>>>;

/// Istio's `request_protocol` of an HTTP request: gRPC or not.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The size of a header block as HTTP/1 writes it (`name: value\r\n`).
fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

fn declared_length(headers: &HeaderMap) -> u64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// How a request is counted, from its connection's recorder.
struct Counted {
    /// `None` when its side neither records metrics nor reports a span of the request.
    series: Option<Arc<Series>>,
    counts: bool,
    /// The port the connection was addressed to.
    port: u16,
}

/// One request's record, from its head to the end of its response.
pub struct RequestRecord {
    /// The series it counts under: the connection's, until the request path names the
    /// upstream that answered (or the app port a tunnelled request named); `None` when its
    /// side neither records metrics nor reports a server span.
    series: Mutex<Option<Arc<Series>>>,
    /// Whether it is counted (its side records metrics).
    counts: bool,
    /// The port its connection was addressed to.
    port: AtomicU16,
    tags: Tags,
    flags: AtomicU16,
    start: Instant,
    grpc: bool,
    request_bytes: u64,
    code: u16,
    grpc_status: Option<u8>,
    response_bytes: u64,
    ended: bool,
    /// Its access log entry (the upstream and route written as the stages learn them).
    log: Mutex<Logged>,
    trace: Option<Trace>,
}

impl RequestRecord {
    /// A request whose head just arrived on a connection, counted as `counted` says.
    fn start<B>(
        counted: Counted,
        req: &Request<B>,
        log: Logged,
        tags: Tags,
        trace: Option<Trace>,
    ) -> Self {
        let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
        let head = req.method().as_str().len() + target;
        Self {
            series: Mutex::new(counted.series),
            counts: counted.counts,
            port: AtomicU16::new(counted.port),
            tags,
            flags: AtomicU16::new(0),
            start: Instant::now(),
            grpc: is_grpc(req.headers()),
            request_bytes: head as u64
                + header_bytes(req.headers())
                + declared_length(req.headers()),
            code: 0,
            grpc_status: None,
            response_bytes: 0,
            ended: false,
            log: Mutex::new(log),
            trace,
        }
    }

    /// The request's trace, when its side traces: each try to an upstream is a span of it.
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// The endpoint that answers (the last try's), as cluster `cluster`.
    pub fn upstream(&self, address: SocketAddr, cluster: Option<&Arc<str>>) {
        if let Some(logged) = self.log.lock().as_mut() {
            logged.1.upstream_host = Some(address);
            logged.1.upstream_cluster = cluster.cloned();
        }
    }

    /// The route that took the request.
    pub fn route(&self, name: impl Fn() -> String) {
        if let Some(logged) = self.log.lock().as_mut() {
            logged.1.route = Some(name());
        }
        if let Some(trace) = &self.trace {
            trace.route(name);
        }
    }

    pub fn grpc(&self) -> bool {
        self.grpc
    }

    /// A tunnelled request for app `port`, counted under that port's `series`.
    pub fn serves(&self, series: &Arc<Series>, port: u16) {
        self.port.store(port, Relaxed);
        self.counted_as(series);
    }

    /// Counts the request under `series` instead: the upstream that answered (the last
    /// try's), or the app port a tunnelled request named.
    pub fn counted_as(&self, series: &Arc<Series>) {
        if let Some(current) = self.series.lock().as_mut() {
            if !Arc::ptr_eq(current, series) {
                *current = series.clone();
            }
        }
    }

    /// Raises one of Envoy's response flags.
    pub fn flag(&self, flag: Flag) {
        self.flags.fetch_or(flag as u16, Relaxed);
    }

    /// The response the caller gets (`details`: Envoy's response code details), whose body
    /// `RecordedBody` goes on to count.
    pub fn respond(
        mut self,
        response: Response<Body>,
        details: &'static str,
    ) -> Response<RecordedBody> {
        self.code = response.status().as_u16();
        self.grpc_status = grpc_status(response.headers());
        self.response_bytes = header_bytes(response.headers());
        if let Some((log, entry)) = self.log.get_mut().as_deref_mut() {
            entry.details = Some(details);
            log.logger.response(entry, response.headers());
        }
        let (parts, body) = response.into_parts();
        if body.is_end_stream() {
            self.ended = true;
        }
        Response::from_parts(
            parts,
            RecordedBody {
                body,
                record: Some(self),
            },
        )
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let mut flags = Flags::from_bits(self.flags.load(Relaxed));
        if !self.ended {
            flags = flags.with(Flag::DownstreamTerminated);
        }
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (request_bytes, response_bytes) = (self.request_bytes, self.response_bytes);
        if let Some(trace) = &mut self.trace {
            let series = self.series.get_mut();
            let port = *self.port.get_mut();
            trace.end(
                &Ended {
                    code: self.code,
                    flags: &flags,
                    grpc_status: self.grpc_status,
                },
                || {
                    let labels = series.as_ref().map(|s| s.labels());
                    let known = |principal: &Arc<str>| {
                        (&**principal != super::labels::UNKNOWN).then(|| principal.clone())
                    };
                    Described {
                        source: labels.and_then(|l| known(&l.source.principal)),
                        destination: labels.and_then(|l| known(&l.destination.principal)),
                        service: labels.map(|l| l.service.host.clone()),
                        port,
                    }
                },
            );
        }
        if let Some(series) = self.series.get_mut().as_ref().filter(|_| self.counts) {
            let outcome = Outcome {
                grpc: self.grpc,
                code: self.code,
                grpc_status: self.grpc_status,
                flags,
                tags: self.tags.take().map_or(0, |values| series.tags(*values)),
            };
            series.request(outcome, |cells| {
                cells.count.fetch_add(1, Relaxed);
                cells.duration_ms.observe(millis);
                cells.request_bytes.observe(request_bytes);
                cells.response_bytes.observe(response_bytes);
            });
        }
        if let Some(logged) = self.log.get_mut().take() {
            let (log, mut entry) = *logged;
            if log.filter.keeps(self.code) {
                entry.code = self.code;
                entry.flags = flags;
                entry.received = request_bytes;
                entry.sent = response_bytes;
                entry.duration_ms = millis;
                log.logger.log(entry);
            }
        }
    }
}

/// A response body that completes its request's record when it ends.
pub struct RecordedBody {
    body: Body,
    record: Option<RequestRecord>,
}

impl RecordedBody {
    /// A body outside any request's record (a tunnel `CONNECT`'s answer, a status page).
    pub fn unrecorded(body: Body) -> Self {
        Self { body, record: None }
    }
}

impl From<Body> for RecordedBody {
    fn from(body: Body) -> Self {
        Self::unrecorded(body)
    }
}

impl http_body::Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(record) = &mut this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        record.response_bytes += header_bytes(trailers);
                        if let Some(status) = grpc_status(trailers) {
                            record.grpc_status = Some(status);
                        }
                    }
                    if this.body.is_end_stream() {
                        record.ended = true;
                        this.record = None;
                    }
                }
                Poll::Ready(None) => {
                    record.ended = true;
                    this.record = None;
                }
                Poll::Ready(Some(Err(_))) => {
                    record.ended = true;
                    record.flag(Flag::UpstreamTerminated);
                    this.record = None;
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One TCP connection's record: counted as opened when made, as closed (with its byte counts)
/// when dropped.
pub struct TcpRecord {
    cells: Option<Arc<TcpCells>>,
    received: u64,
    sent: u64,
    start: Instant,
    log: Logged,
}

impl TcpRecord {
    fn open(series: Option<&Series>, log: Logged, flags: Flags) -> Self {
        let cells = series.map(|series| series.tcp(flags));
        if let Some(cells) = &cells {
            cells.opened.fetch_add(1, Relaxed);
        }
        Self {
            cells,
            received: 0,
            sent: 0,
            start: Instant::now(),
            log,
        }
    }

    /// The endpoint the stream goes to, as cluster `cluster`.
    pub fn upstream(&mut self, address: SocketAddr, cluster: Option<&Arc<str>>) {
        if let Some((_, entry)) = self.log.as_deref_mut() {
            entry.upstream_host = Some(address);
            entry.upstream_cluster = cluster.cloned();
        }
    }

    /// The counters its bytes are added to as they pass, when its side records metrics.
    pub fn cells(&self) -> Option<Arc<TcpCells>> {
        self.cells.clone()
    }

    /// Bytes received from and sent to the caller in all (for its access log entry; the
    /// counters have them already).
    pub fn bytes(&mut self, received: u64, sent: u64) {
        self.received = received;
        self.sent = sent;
    }
}

impl Drop for TcpRecord {
    fn drop(&mut self) {
        if let Some(cells) = &self.cells {
            cells.closed.fetch_add(1, Relaxed);
        }
        if let Some(logged) = self.log.take() {
            let (log, mut entry) = *logged;
            if log.filter.keeps_connection() {
                entry.received = self.received;
                entry.sent = self.sent;
                entry.duration_ms =
                    u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
                log.logger.log(entry);
            }
        }
    }
}
