//! How long an HTTP/1 client may take over a request head: 10 s from the head's first byte
//! (Envoy's `request_headers_timeout` role), and an hour of silence between requests (its
//! `idle_timeout`).
//!
//! hyper's own header read timeout starts when it begins waiting for a head, so it also runs
//! while a keep-alive connection sits idle between requests: set to the 10 s a slow client
//! deserves, it would close every pooled connection after 10 s of quiet. So the clock here
//! starts at the first byte that arrives after a head was begun. Two halves share one cell per
//! connection: [`Watched`], around the connection, notes when bytes arrive; [`HeadTimer`], the
//! timer hyper is given (and uses for nothing but the head timeout), starts a fresh head each
//! time hyper arms it. A head whose first bytes came in with the previous request (pipelined)
//! is held to the idle timeout, the only deadline left for it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use hyper::rt::{Sleep, Timer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// How long a client has to finish a request head once its first byte arrived.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may wait for its next request with nothing arriving.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The deadlines a connection's heads are held to.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub head: Duration,
    pub idle: Duration,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// When the current head's first byte arrived: nanoseconds since `base`, plus one; zero while
/// none has.
#[derive(Debug)]
struct FirstByte {
    base: Instant,
    at: AtomicU64,
}

impl FirstByte {
    fn get(&self) -> Option<Instant> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos - 1)),
        }
    }

    fn note(&self) {
        if self.at.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.at.store(nanos + 1, Ordering::Relaxed);
        }
    }

    fn clear(&self) {
        self.at.store(0, Ordering::Relaxed);
    }
}

/// `io`, watched for arriving bytes, and the timer hyper holds its heads to.
pub fn watch<IO>(io: IO, limits: HeadLimits) -> (Watched<IO>, HeadTimer) {
    let first_byte = Arc::new(FirstByte {
        base: Instant::now(),
        at: AtomicU64::new(0),
    });
    let timer = HeadTimer {
        first_byte: first_byte.clone(),
        limits,
    };
    (Watched { io, first_byte }, timer)
}

/// A connection that notes when bytes arrive.
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    first_byte: Arc<FirstByte>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.first_byte.note();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// hyper's timer for one connection. hyper arms it (with `sleep_until`, then `reset`) each
/// time it starts reading a head, so arming it starts a fresh head: the deadline hyper asks
/// for is replaced by [`HeadLimits`]'.
#[derive(Clone, Debug)]
pub struct HeadTimer {
    first_byte: Arc<FirstByte>,
    limits: HeadLimits,
}

impl Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn Sleep>> {
        self.head()
    }

    fn sleep_until(&self, _: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        self.head()
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, _: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadDeadline>() {
            Some(mut deadline) => {
                self.first_byte.clear();
                deadline.started = Instant::now();
            }
            None => *sleep = self.head(),
        }
    }
}

impl HeadTimer {
    fn head(&self) -> Pin<Box<dyn Sleep>> {
        self.first_byte.clear();
        let started = Instant::now();
        Box::pin(HeadDeadline {
            first_byte: self.first_byte.clone(),
            limits: self.limits,
            started,
            sleep: Box::pin(tokio::time::sleep_until(started + self.limits.idle)),
        })
    }
}

/// Fires once the head begun at `started` is late: `limits.head` after its first byte, or
/// `limits.idle` after `started` while none has arrived.
struct HeadDeadline {
    first_byte: Arc<FirstByte>,
    limits: HeadLimits,
    started: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadDeadline {
    fn deadline(&self) -> Instant {
        match self.first_byte.get() {
            Some(at) => at.max(self.started) + self.limits.head,
            None => self.started + self.limits.idle,
        }
    }
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline();
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadDeadline {}

#[cfg(test)]
mod tests;
