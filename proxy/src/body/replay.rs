//! Request bodies that can be sent more than once: a retry sends the request again, a mirror
//! sends a copy. The body is recorded while the first try streams it (nothing waits for it to
//! be buffered), up to [`LIMIT`]; a larger body is sent once, streaming, and neither retried
//! nor mirrored, rather than held in memory or broken. A try that ends before its body was
//! read (no connection) leaves the rest in the recording, where the next try continues.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Body, BoxError};

/// The most of a body kept to send again.
pub const LIMIT: usize = 64 * 1024;

/// A body being recorded, shared by the bodies that send it.
#[derive(Clone)]
pub struct Recording {
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
}

struct Shared {
    /// What is left to read; `None` once it ended.
    source: Option<Incoming>,
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// Too large, or broken: it cannot be sent again.
    lost: bool,
    /// Bodies reading it now.
    readers: usize,
    size: SizeHint,
}

impl Recording {
    /// Starts recording `source`; the returned body is the first try's.
    pub fn new(source: Incoming) -> (Self, ReplayBody) {
        let size = source.size_hint();
        let lost = size.lower() > LIMIT as u64;
        let recording = Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(source),
                chunks: Vec::new(),
                len: 0,
                trailers: None,
                ended: false,
                lost,
                readers: 0,
                size,
            })),
            changed: Arc::new(Notify::new()),
        };
        let first = recording.reader();
        (recording, first)
    }

    fn reader(&self) -> ReplayBody {
        self.shared.lock().readers += 1;
        ReplayBody {
            recording: self.clone(),
            position: 0,
            trailers_sent: false,
            passthrough: false,
        }
    }

    /// A body for another try, or `None` when the body cannot be sent again: too large, broken,
    /// or still being read by the previous try.
    pub fn replay(&self) -> Option<ReplayBody> {
        let usable = {
            let shared = self.shared.lock();
            !shared.lost && (shared.ended || shared.readers == 0)
        };
        usable.then(|| self.reader())
    }

    /// The whole body once the tries have read it to its end, for a mirror; `None` when it is
    /// too large, broken, or abandoned before its end.
    pub async fn complete(&self) -> Option<Body> {
        loop {
            let changed = self.changed.notified();
            {
                let shared = self.shared.lock();
                if shared.lost {
                    return None;
                }
                if shared.ended {
                    let mut whole = BytesMut::with_capacity(shared.len);
                    shared
                        .chunks
                        .iter()
                        .for_each(|c| whole.extend_from_slice(c));
                    // A mirror is fire-and-forget: trailers are not copied.
                    return Some(Body::full(whole.freeze()));
                }
                if shared.readers == 0 {
                    return None;
                }
            }
            changed.await;
        }
    }
}

/// One sending of a recorded body: what was recorded first, then the rest of the source.
pub struct ReplayBody {
    recording: Recording,
    /// Chunks of the recording already sent by this body.
    position: usize,
    trailers_sent: bool,
    /// The recording gave up (too large): this body streams the source through.
    passthrough: bool,
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        self.recording.shared.lock().readers -= 1;
        self.recording.changed.notify_waiters();
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.recording.shared.lock();
        if !this.passthrough && this.position < shared.chunks.len() {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(
                shared.chunks[this.position - 1].clone(),
            ))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        let (result, changed) = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.source = None;
                this.trailers_sent = true;
                (Poll::Ready(None), true)
            }
            Poll::Ready(Some(Err(error))) => {
                shared.lost = true;
                (Poll::Ready(Some(Err(error.into()))), true)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.lost && shared.len + data.len() > LIMIT {
                        shared.lost = true;
                        shared.chunks = Vec::new();
                    }
                    if shared.lost {
                        this.passthrough = true;
                    } else {
                        shared.len += data.len();
                        shared.chunks.push(data.clone());
                        this.position += 1;
                    }
                    (Poll::Ready(Some(Ok(frame))), false)
                } else {
                    // Trailers end the body.
                    shared.trailers = frame.trailers_ref().cloned();
                    shared.ended = true;
                    shared.source = None;
                    this.trailers_sent = true;
                    (Poll::Ready(Some(Ok(frame))), true)
                }
            }
        };
        drop(shared);
        if changed {
            this.recording.changed.notify_waiters();
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.recording.shared.lock();
        shared.ended && self.position >= shared.chunks.len() && self.trailers_sent
    }

    fn size_hint(&self) -> SizeHint {
        self.recording.shared.lock().size
    }
}
