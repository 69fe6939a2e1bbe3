//! A pool of multiplexed HTTP/2 connections, one per key (a peer sidecar, or an HTTP/2 upstream
//! such as a local app port).
//!
//! Many concurrent requests to the same key share one connection: the first caller dials while
//! the others wait for it, so a burst opens exactly one connection. A connection that breaks is
//! replaced on next use, and a request that was not yet sent on it is retried on the new one
//! (always safe: the peer never saw it). Connections unused for the idle timeout are dropped;
//! streams still open on them finish first. A key may limit the requests one connection carries
//! (DestinationRule `maxRequestsPerConnection`): the connection that reached it takes no new
//! request, finishes the ones it has, and the next request dials its successor.
//!
//! A connection that a burst filled with more than [`BURST_STREAMS`] requests at once is retired
//! the same way once the burst is over (none left waiting for its response): h2 keeps the
//! stream store a burst grew (about 3 MiB after 2,000 streams) for the connection's life, and a
//! successor starts small again. Steady traffic below that never redials.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http2, TrySendError},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

use crate::{body::Body, tunnel::H2_SETTINGS};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to {addr}: {source}")]
    Dial {
        addr: std::net::SocketAddr,
        #[source]
        source: DialError,
    },
    /// A dial for the same key failed a moment ago; callers queued behind it share its reason.
    #[error("connecting: {0} (a moment ago)")]
    RecentDialFailure(Arc<str>),
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
}

/// Why a dial failed: the TCP connect, or (to a peer sidecar) the mTLS handshake.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Opens the transport for one pooled connection.
pub trait Dial: Send + Sync {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn dial(&self) -> impl Future<Output = Result<Self::Io, PoolError>> + Send;
}

impl<D: Dial> Dial for &D {
    type Io = D::Io;
    fn dial(&self) -> impl Future<Output = Result<Self::Io, PoolError>> + Send {
        (**self).dial()
    }
}

pub struct H2Pool<K> {
    entries: Mutex<HashMap<K, Arc<Entry>>>,
    clock: Clock,
    idle_timeout: Duration,
}

/// Milliseconds since the pool started, for cheap last-use stamps.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One key's connection. Requests take the sender from `live` under a short synchronous lock;
/// only dialing takes the async `dialing` lock, so a burst waits for one dial instead of each
/// opening its own connection.
struct Entry {
    live: Mutex<Option<Conn>>,
    /// Held while dialing; remembers the last failed dial.
    dialing: tokio::sync::Mutex<Option<Failure>>,
    /// Numbers connections, so a caller can say which one it saw break.
    generations: AtomicU64,
    last_used_ms: AtomicU64,
    /// Requests one connection may carry; 0: no limit.
    max_requests: u32,
    /// Requests the live connection has been given, when there is a limit.
    taken: AtomicU32,
}

#[derive(Clone)]
struct Conn {
    generation: u64,
    sender: http2::SendRequest<Body>,
    load: Arc<Load>,
}

/// Requests waiting for their response on one connection: now, and at most since it was dialed.
#[derive(Default)]
struct Load {
    waiting: AtomicU32,
    peak: AtomicU32,
}

/// Requests at once on a connection above which it is retired once they are done.
const BURST_STREAMS: u32 = 256;

/// One request waiting for its response on `conn`; when the last of a burst is done, the
/// connection is retired (see the module docs).
struct Waiting<'a> {
    entry: &'a Entry,
    generation: u64,
    load: &'a Load,
}

impl<'a> Waiting<'a> {
    fn on(entry: &'a Entry, generation: u64, load: &'a Load) -> Self {
        let waiting = load.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        if waiting > BURST_STREAMS {
            load.peak.fetch_max(waiting, Ordering::Relaxed);
        }
        Self {
            entry,
            generation,
            load,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let was = self.load.waiting.fetch_sub(1, Ordering::Relaxed);
        if was == 1 && self.load.peak.load(Ordering::Relaxed) > BURST_STREAMS {
            let mut live = self.entry.live.lock();
            if live
                .as_ref()
                .is_some_and(|c| c.generation == self.generation)
            {
                tracing::debug!(
                    generation = self.generation,
                    "retiring a connection a burst grew"
                );
                *live = None;
            }
        }
    }
}

/// The outcome of the last dial, when it failed: callers that queued behind it fail at once with
/// the same reason instead of each waiting out their own connect timeout.
struct Failure {
    at: Instant,
    reason: Arc<str>,
}

/// How long a failed dial answers for its key before the next caller tries again.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// A caller's hold on one key's connection, kept for as long as it sends there (e.g. for the
/// life of an app connection), so each request skips the pool's map.
pub struct PoolHandle {
    entry: Arc<Entry>,
    clock: Clock,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> H2Pool<K> {
    /// A pool whose idle connections are reaped by a background task that ends with the pool.
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            clock: Clock(Instant::now()),
            idle_timeout,
        });
        tokio::spawn(reap(Arc::downgrade(&pool), idle_timeout));
        pool
    }

    /// Sends `req` on the connection for `key`, dialing with `dial` when there is none.
    pub async fn send<D: Dial>(
        &self,
        key: &K,
        dial: &D,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PoolError> {
        let entry = self.entry(key, 0);
        send(&entry, self.clock.now_ms(), dial, req).await
    }

    /// A handle on `key`'s connection, for a caller that will send there repeatedly; a
    /// connection carries at most `max_requests` requests (0: any number). A key's limit is
    /// the one it was first asked for: callers with different limits use different keys.
    pub fn handle(self: &Arc<Self>, key: &K, max_requests: u32) -> PoolHandle {
        PoolHandle {
            entry: self.entry(key, max_requests),
            clock: self.clock,
        }
    }

    fn entry(&self, key: &K, max_requests: u32) -> Arc<Entry> {
        let mut entries = self.entries.lock();
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            Arc::new(Entry {
                live: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(None),
                generations: AtomicU64::new(0),
                last_used_ms: AtomicU64::new(0),
                max_requests,
                taken: AtomicU32::new(0),
            })
        });
        entry
            .last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
        entry.clone()
    }

    /// Closes connections unused for the idle timeout (streams still open on them finish
    /// first) and forgets keys nobody holds a handle on.
    fn reap_idle(&self) {
        let now = self.clock.now_ms();
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.entries.lock().retain(|_, entry| {
            if now.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed)) < idle {
                return true;
            }
            entry.live.lock().take();
            Arc::strong_count(entry) > 1
        });
    }
}

impl PoolHandle {
    /// Not an `async fn`: the future is [`send`]'s own, so a request's future does not carry
    /// a second copy of the request in a wrapper.
    pub fn send<'a, D: Dial + 'a>(
        &'a self,
        dial: D,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, PoolError>> + Send + 'a {
        send(&self.entry, self.clock.now_ms(), dial, req)
    }
}

/// Sends `req` on `entry`'s connection. Written as a block, not an `async fn`, so the request
/// is held once (an `async fn` keeps its argument and a moved copy), and the rare resend on a
/// broken connection is boxed: this future is part of every request's.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold the request twice"
)]
fn send<'a, D: Dial + 'a>(
    entry: &'a Entry,
    now_ms: u64,
    dial: D,
    req: Request<Body>,
) -> impl Future<Output = Result<Response<Incoming>, PoolError>> + Send + 'a {
    async move {
        entry.last_used_ms.store(now_ms, Ordering::Relaxed);
        let mut conn = checkout(entry, &dial, None).await?;
        let waiting = Waiting::on(entry, conn.generation, &conn.load);
        let failed = match conn.sender.try_send_request(req).await {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        drop(waiting);
        Box::pin(resend(entry, &dial, conn.generation, failed)).await
    }
}

/// `failed`'s request again, on a new connection: the `broken` one failed before the request
/// left, so the peer never saw it.
async fn resend<D: Dial>(
    entry: &Entry,
    dial: &D,
    broken: u64,
    mut failed: TrySendError<Request<Body>>,
) -> Result<Response<Incoming>, PoolError> {
    let Some(req) = failed.take_message() else {
        return Err(failed.into_error().into());
    };
    tracing::debug!(error = %failed.error(), "retrying an unsent request");
    let mut conn = checkout(entry, dial, Some(broken)).await?;
    let _waiting = Waiting::on(entry, conn.generation, &conn.load);
    Ok(conn.sender.send_request(req).await?)
}

/// The live connection of `entry` for one more request, unless it is closed, is the `broken`
/// generation a caller just saw fail, or has carried all the requests it may.
fn reusable(entry: &Entry, broken: Option<u64>) -> Option<Conn> {
    let live = entry.live.lock();
    let conn = live
        .as_ref()
        .filter(|c| !c.sender.is_closed() && Some(c.generation) != broken)?;
    if entry.max_requests > 0 && entry.taken.fetch_add(1, Ordering::Relaxed) >= entry.max_requests {
        return None;
    }
    Some(conn.clone())
}

/// A ready connection for `entry`, dialing if there is none worth using.
async fn checkout<D: Dial>(
    entry: &Entry,
    dial: &D,
    broken: Option<u64>,
) -> Result<Conn, PoolError> {
    if let Some(conn) = reusable(entry, broken) {
        return Ok(conn);
    }
    // Boxed: dialing (a TLS handshake) is a large future, and inline it would be carried, and
    // copied, by every request's future although almost every request finds a connection.
    Box::pin(dial_new(entry, dial, broken)).await
}

/// Dials `entry`'s next connection, unless someone else did while this caller waited.
async fn dial_new<D: Dial>(
    entry: &Entry,
    dial: &D,
    broken: Option<u64>,
) -> Result<Conn, PoolError> {
    let mut failure = entry.dialing.lock().await;
    // Someone else may have dialed while this caller waited for the lock.
    if let Some(conn) = reusable(entry, broken) {
        return Ok(conn);
    }
    if let Some(recent) = failure.as_ref().filter(|f| f.at.elapsed() < FAILURE_HOLD) {
        return Err(PoolError::RecentDialFailure(recent.reason.clone()));
    }
    let generation = entry.generations.fetch_add(1, Ordering::Relaxed);
    let dialed = match dial.dial().await {
        Ok(io) => handshake(io).await,
        Err(error) => Err(error),
    };
    match dialed {
        Ok(sender) => {
            *failure = None;
            let conn = Conn {
                generation,
                sender,
                load: Arc::default(),
            };
            let mut live = entry.live.lock();
            // This caller's request is the new connection's first.
            entry.taken.store(1, Ordering::Relaxed);
            *live = Some(conn.clone());
            Ok(conn)
        }
        Err(error) => {
            *failure = Some(Failure {
                at: Instant::now(),
                reason: error.to_string().into(),
            });
            Err(error)
        }
    }
}

async fn reap<K: Hash + Eq + Clone + Send + Sync + 'static>(
    pool: Weak<H2Pool<K>>,
    idle_timeout: Duration,
) {
    let mut tick = tokio::time::interval(idle_timeout / 2);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.reap_idle(),
            None => return,
        }
    }
}

async fn handshake<IO>(io: IO) -> Result<http2::SendRequest<Body>, PoolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_SETTINGS.stream_window)
        .initial_connection_window_size(H2_SETTINGS.connection_window)
        .max_frame_size(H2_SETTINGS.max_frame_size)
        .max_header_list_size(H2_SETTINGS.max_header_list_size)
        .keep_alive_interval(H2_SETTINGS.keep_alive_interval)
        .keep_alive_timeout(H2_SETTINGS.keep_alive_timeout)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(PoolError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "pooled HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests;
