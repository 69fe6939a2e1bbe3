//! Per-request and per-connection records: made from a series resolved once per connection,
//! told by the request path what happened (the upstream that answered, response flags), and
//! counted when the exchange is over. A request is over when its response's last byte is
//! sent, so [`RecordedBody`] carries the record along with the response body: it counts the
//! bytes, reads a gRPC status from the trailers, and records on the end of the stream or,
//! when the caller goes away first, on drop (`DC`, response code 0 if nothing was sent).

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU16, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;

use super::{
    flags::{Flag, Flags},
    istio::{Outcome, Series, TcpCells},
};
use crate::body::{Body, BoxError};

/// Istio's `request_protocol` of an HTTP request: gRPC or not.
pub fn is_grpc(headers: &HeaderMap) -> bool {
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

/// One request's record, from its head to the end of its response.
pub struct RequestRecord {
    /// The series it counts under: the connection's, until the request path names the
    /// upstream that answered.
    series: Mutex<Arc<Series>>,
    flags: AtomicU16,
    start: Instant,
    grpc: bool,
    request_bytes: u64,
    code: u16,
    grpc_status: Option<u8>,
    response_bytes: u64,
    ended: bool,
}

impl RequestRecord {
    /// A request whose head just arrived on a connection counted under `series`.
    pub fn start<B>(series: Arc<Series>, req: &Request<B>) -> Self {
        let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
        let head = req.method().as_str().len() + target;
        Self {
            series: Mutex::new(series),
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
        }
    }

    pub fn grpc(&self) -> bool {
        self.grpc
    }

    /// Counts the request under `series` instead: the upstream that answered (the last
    /// try's), or the app port a tunnelled request named.
    pub fn counted_as(&self, series: &Arc<Series>) {
        let mut current = self.series.lock();
        if !Arc::ptr_eq(&current, series) {
            *current = series.clone();
        }
    }

    /// Raises one of Envoy's response flags.
    pub fn flag(&self, flag: Flag) {
        self.flags.fetch_or(flag as u16, Relaxed);
    }

    /// The response the caller gets, whose body `RecordedBody` goes on to count.
    pub fn respond(mut self, response: Response<Body>) -> Response<RecordedBody> {
        self.code = response.status().as_u16();
        self.grpc_status = grpc_status(response.headers());
        self.response_bytes = header_bytes(response.headers());
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
        let outcome = Outcome {
            grpc: self.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags,
        };
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (request_bytes, response_bytes) = (self.request_bytes, self.response_bytes);
        self.series.get_mut().request(outcome, |cells| {
            cells.count.fetch_add(1, Relaxed);
            cells.duration_ms.observe(millis);
            cells.request_bytes.observe(request_bytes);
            cells.response_bytes.observe(response_bytes);
        });
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
    cells: Arc<TcpCells>,
    received: u64,
    sent: u64,
}

impl TcpRecord {
    pub fn open(series: &Series) -> Self {
        let cells = series.tcp(Flags::NONE);
        cells.opened.fetch_add(1, Relaxed);
        Self {
            cells,
            received: 0,
            sent: 0,
        }
    }

    /// Bytes received from and sent to the caller.
    pub fn bytes(&mut self, received: u64, sent: u64) {
        self.received = received;
        self.sent = sent;
    }
}

impl Drop for TcpRecord {
    fn drop(&mut self) {
        self.cells.closed.fetch_add(1, Relaxed);
        self.cells.received.fetch_add(self.received, Relaxed);
        self.cells.sent.fetch_add(self.sent, Relaxed);
    }
}
