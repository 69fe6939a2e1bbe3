//! How an HTTP/1 connection waits for its request heads: 10 s from a head's first byte
//! (Envoy's `request_headers_timeout` role), an hour of silence between requests (its
//! `idle_timeout`), and, after a second of silence, without hyper's state.
//!
//! hyper's own header read timeout starts when it begins waiting for a head, so it also runs
//! while a keep-alive connection sits idle between requests: set to the 10 s a slow client
//! deserves, it would close every pooled connection after 10 s of quiet. So the clock here
//! starts at the first byte that arrives after a head was begun. Two halves share one cell per
//! connection: [`Watched`], around the connection, notes when bytes arrive; [`HeadTimer`], the
//! timer hyper is given (and uses for nothing but the head timeout), starts a fresh head each
//! time hyper arms it.
//!
//! A hyper connection holds an 8 KiB read and an 8 KiB write buffer from its first read until it
//! ends, twice what an idle connection should cost. So a connection that has waited
//! [`HeadLimits::rest`] for a head with nothing arriving *rests*: [`Watched`] reports the end of
//! the stream to hyper (which, between requests, ends the connection quietly and without
//! shutting the socket down, since [`Watched`] ignores that then), hands the socket back through
//! its [`Home`], and [`first_bytes`] waits for the next head on a small stack buffer before a new
//! hyper connection is built for it. A busy connection never rests, so this costs nothing per
//! request. The one thing rest can cut short is a pipelined head whose first bytes came with the
//! previous request and whose rest never came: it is closed after [`HeadLimits::rest`].

use std::{
    future::{poll_fn, Future},
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::rt::{Sleep, Timer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// How long a client has to finish a request head once its first byte arrived.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may wait for its next request with nothing arriving.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a connection waits for a head's first byte before it rests.
pub const REST_AFTER: Duration = Duration::from_secs(1);

/// The deadlines a connection's heads are held to.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub head: Duration,
    pub idle: Duration,
    pub rest: Duration,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
            rest: REST_AFTER,
        }
    }
}

/// What the two halves share: when the current head's first byte arrived (nanoseconds since
/// `base`, plus one; zero while none has), and whether the connection is due to rest.
#[derive(Debug)]
struct Cell {
    base: Instant,
    first_byte: AtomicU64,
    rest_due: AtomicBool,
}

impl Cell {
    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos - 1)),
        }
    }

    fn note_bytes(&self) {
        if self.first_byte.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.first_byte.store(nanos + 1, Ordering::Relaxed);
            self.rest_due.store(false, Ordering::Relaxed);
        }
    }

    fn new_head(&self) {
        self.first_byte.store(0, Ordering::Relaxed);
        self.rest_due.store(false, Ordering::Relaxed);
    }
}

/// Where a resting connection's socket goes back to when hyper lets go of it.
pub type Home<IO> = Arc<Mutex<Option<IO>>>;

/// Takes back the socket a rested connection left at `home`.
pub fn take_home<IO>(home: &Home<IO>) -> Option<IO> {
    home.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// `io`, watched for arriving bytes and returned to `home` when hyper drops it, and the timer
/// hyper holds its heads to.
pub fn watch<IO>(io: IO, home: Home<IO>, limits: HeadLimits) -> (Watched<IO>, HeadTimer) {
    let cell = Arc::new(Cell {
        base: Instant::now(),
        first_byte: AtomicU64::new(0),
        rest_due: AtomicBool::new(false),
    });
    let timer = HeadTimer {
        cell: cell.clone(),
        limits,
    };
    let watched = Watched {
        io: Some(io),
        home,
        cell,
        rested: false,
    };
    (watched, timer)
}

/// The most one read hands hyper. hyper doubles its read buffer (8 KiB, 16, 32, ...) each time
/// a read fills it, and a buffer still holding part of a body cannot be reused, so a request
/// sending 32 KiB at once left buffers of 16, 32 and 32 KiB behind, each a large allocation
/// of its own, whose record jemalloc keeps for good: a burst of such requests left RSS higher
/// for good. Read through a buffer on the stack, at most this much at a time, hyper's buffer
/// stays at 8 KiB: one copy of what was read, and nothing zeroed.
const READ_MAX: usize = 8 * 1024 - 1;

/// A connection that notes when bytes arrive and ends its stream when it is due to rest.
#[derive(Debug)]
pub struct Watched<IO> {
    /// `None` only once dropped.
    io: Option<IO>,
    home: Home<IO>,
    cell: Arc<Cell>,
    /// The end of the stream was reported to rest: the socket is still open.
    rested: bool,
}

impl<IO> Watched<IO> {
    fn io(&mut self) -> io::Result<Pin<&mut IO>>
    where
        IO: Unpin,
    {
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<IO> Drop for Watched<IO> {
    fn drop(&mut self) {
        if self.rested {
            *self.home.lock().unwrap_or_else(PoisonError::into_inner) = self.io.take();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rested {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = if buf.remaining() > READ_MAX {
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_MAX];
            let mut capped = ReadBuf::uninit(&mut stack);
            let polled = self.io()?.poll_read(cx, &mut capped);
            buf.put_slice(capped.filled());
            polled
        } else {
            self.io()?.poll_read(cx, buf)
        };
        match polled {
            Poll::Pending if self.cell.rest_due.load(Ordering::Relaxed) => {
                self.rested = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(read) => {
                read?;
                if buf.filled().len() > before {
                    self.cell.note_bytes();
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(IO::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rested {
            // hyper closes the connection it was told had ended; the socket stays open.
            return Poll::Ready(Ok(()));
        }
        self.io()?.poll_shutdown(cx)
    }
}

/// The first bytes of the next head on `io`, read without a buffer held across the wait;
/// `None` once the peer has closed.
pub async fn first_bytes<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Option<Bytes>> {
    poll_fn(|cx| {
        let mut small = [0; 1024];
        let mut buf = ReadBuf::new(&mut small);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        Poll::Ready(Ok((!read.is_empty()).then(|| Bytes::copy_from_slice(read))))
    })
    .await
}

/// hyper's timer for one connection. hyper arms it (with `sleep_until`, then `reset`) each
/// time it starts reading a head, so arming it starts a fresh head: the deadline hyper asks
/// for is replaced by [`HeadLimits`]'.
#[derive(Clone, Debug)]
pub struct HeadTimer {
    cell: Arc<Cell>,
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
                self.cell.new_head();
                deadline.started = Instant::now();
            }
            None => *sleep = self.head(),
        }
    }
}

impl HeadTimer {
    fn head(&self) -> Pin<Box<dyn Sleep>> {
        self.cell.new_head();
        let started = Instant::now();
        Box::pin(HeadDeadline {
            cell: self.cell.clone(),
            limits: self.limits,
            started,
            sleep: Box::pin(tokio::time::sleep_until(started + self.limits.rest)),
        })
    }
}

/// Fires once the head begun at `started` is late: `limits.head` after its first byte, or
/// `limits.idle` after `started` while none has arrived. On the way, with no byte
/// `limits.rest` after `started`, it marks the connection due to rest and wakes it.
struct HeadDeadline {
    cell: Arc<Cell>,
    limits: HeadLimits,
    started: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadDeadline {
    fn deadline(&self) -> Instant {
        match self.cell.first_byte() {
            Some(at) => at.max(self.started) + self.limits.head,
            None if self.cell.rest_due.load(Ordering::Relaxed) => self.started + self.limits.idle,
            None => self.started + self.limits.rest,
        }
    }
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.deadline();
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            ready!(self.sleep.as_mut().poll(cx));
            if self.cell.first_byte().is_some() || self.cell.rest_due.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            // Silent for `limits.rest`: the connection reads the end of its stream next.
            self.cell.rest_due.store(true, Ordering::Relaxed);
            cx.waker().wake_by_ref();
        }
    }
}

impl Sleep for HeadDeadline {}

#[cfg(test)]
mod tests;
