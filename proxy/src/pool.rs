//! A pool of multiplexed HTTP/2 connections, one per key (a peer sidecar, or a local app port).
//!
//! Many concurrent requests to the same key share one connection: the first caller dials while
//! the others wait for it, so a burst opens exactly one connection. A connection that breaks is
//! replaced on next use, and a request that was not yet sent on it is retried on the new one
//! (always safe: the peer never saw it). Connections unused for the idle timeout are dropped;
//! streams still open on them finish first.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

use crate::body::Body;

/// HTTP/2 settings for sidecar connections. Windows far above the 64 KiB default let one
/// connection carry many streams at full speed; the frame size keeps per-frame overhead low.
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// Streams one peer may have open at once (tunnels hold theirs for their lifetime).
    pub max_concurrent_streams: u32,
    /// Envoy's default limit, so requests that work app to app also work through the mesh.
    pub max_header_list_size: u32,
    /// Pings find a dead peer on an idle connection; no answer within the timeout closes it.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

pub const H2_SETTINGS: H2Settings = H2Settings {
    stream_window: 2 * 1024 * 1024,
    // 32 stalled readers' worth before one slow stream can hold up its neighbours.
    connection_window: 64 * 1024 * 1024,
    max_frame_size: 64 * 1024,
    max_concurrent_streams: 4096,
    max_header_list_size: 60 * 1024,
    keep_alive_interval: Duration::from_secs(20),
    keep_alive_timeout: Duration::from_secs(20),
};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting: {0}")]
    Dial(String),
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
}

/// Opens the transport for one pooled connection.
pub trait Dial: Send + Sync {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn dial(&self) -> impl Future<Output = Result<Self::Io, PoolError>> + Send;
}

pub struct H2Pool<K> {
    entries: Mutex<HashMap<K, Arc<Entry>>>,
    started: Instant,
    idle_timeout: Duration,
}

/// One key's connection. The async lock is held only while dialing (so concurrent callers wait
/// for the one connection instead of opening their own) and while cloning the sender.
struct Entry {
    conn: tokio::sync::Mutex<Slot>,
    last_used_ms: AtomicU64,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    failure: Option<Failure>,
}

struct Conn {
    generation: u64,
    sender: http2::SendRequest<Body>,
}

/// The outcome of the last dial, when it failed: callers that queued behind it fail at once with
/// the same reason instead of each waiting out their own connect timeout.
struct Failure {
    at: Instant,
    reason: String,
}

/// How long a failed dial answers for its key before the next caller tries again.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

impl<K: Hash + Eq + Clone + Send + Sync + 'static> H2Pool<K> {
    /// A pool whose idle connections are reaped by a background task that ends with the pool.
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            started: Instant::now(),
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
        let entry = self.entry(key);
        let (generation, mut sender) = self.checkout(&entry, dial, None).await?;
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(mut failed) => match failed.take_message() {
                // The connection broke before the request left: retry once on a new one.
                Some(req) => {
                    tracing::debug!(error = %failed.error(), "retrying an unsent request");
                    let (_, mut sender) = self.checkout(&entry, dial, Some(generation)).await?;
                    Ok(sender.send_request(req).await?)
                }
                None => Err(failed.into_error().into()),
            },
        }
    }

    fn entry(&self, key: &K) -> Arc<Entry> {
        let mut entries = self.entries.lock();
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            Arc::new(Entry {
                conn: tokio::sync::Mutex::new(Slot::default()),
                last_used_ms: AtomicU64::new(0),
            })
        });
        entry.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        entry.clone()
    }

    /// A ready sender for `entry`, dialing if its connection is missing or closed, or is the
    /// `broken` generation a caller just saw fail.
    async fn checkout<D: Dial>(
        &self,
        entry: &Entry,
        dial: &D,
        broken: Option<u64>,
    ) -> Result<(u64, http2::SendRequest<Body>), PoolError> {
        let mut slot = entry.conn.lock().await;
        let reusable = slot
            .conn
            .as_ref()
            .filter(|c| !c.sender.is_closed() && Some(c.generation) != broken);
        if let Some(conn) = reusable {
            return Ok((conn.generation, conn.sender.clone()));
        }
        if let Some(failure) = slot
            .failure
            .as_ref()
            .filter(|f| f.at.elapsed() < FAILURE_HOLD)
        {
            return Err(PoolError::Dial(failure.reason.clone()));
        }
        let generation = slot.conn.as_ref().map_or(0, |c| c.generation + 1);
        let dialed = match dial.dial().await {
            Ok(io) => handshake(io).await,
            Err(error) => Err(error),
        };
        match dialed {
            Ok(sender) => {
                slot.failure = None;
                slot.conn = Some(Conn {
                    generation,
                    sender: sender.clone(),
                });
                Ok((generation, sender))
            }
            Err(error) => {
                slot.failure = Some(Failure {
                    at: Instant::now(),
                    reason: error.to_string(),
                });
                Err(error)
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops connections unused for the idle timeout.
    fn reap_idle(&self) {
        let now = self.now_ms();
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.entries
            .lock()
            .retain(|_, e| now.saturating_sub(e.last_used_ms.load(Ordering::Relaxed)) < idle);
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
