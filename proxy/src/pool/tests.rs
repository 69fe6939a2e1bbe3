//! The pool against a real HTTP/2 server over in-memory pipes: one dial for a burst, a new
//! connection (and a retried request) when the old one breaks, idle connections reaped.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use http::{Request, Response, StatusCode};
use tokio::{io::DuplexStream, sync::Notify};

use super::*;
use crate::{body, drain::Drain, serve};

/// Dials by spawning an HTTP/2 server on the far end of a pipe; counts dials and can kill
/// every connection it made.
#[derive(Clone, Default)]
struct PipeDialer {
    dials: Arc<AtomicUsize>,
    kill: Arc<Notify>,
}

impl Dial for PipeDialer {
    type Io = DuplexStream;

    async fn dial(&self) -> Result<DuplexStream, PoolError> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (near, far) = tokio::io::duplex(64 * 1024);
        let kill = self.kill.clone();
        tokio::spawn(async move {
            let drain = Drain::default();
            let service = tower::service_fn(|_req| async {
                // A little latency, so concurrent requests overlap.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, std::convert::Infallible>(Response::new(body::empty()))
            });
            let server = serve::http2(far, &drain, service);
            tokio::select! {
                _ = server => {}
                () = kill.notified() => {}
            }
        });
        Ok(near)
    }
}

fn get() -> Request<Body> {
    Request::builder()
        .uri("http://app.test/")
        .version(http::Version::HTTP_2)
        .body(body::empty())
        .expect("request")
}

#[tokio::test]
async fn a_burst_of_requests_shares_one_connection() {
    let pool = H2Pool::new(Duration::from_secs(60));
    let dialer = PipeDialer::default();
    let requests = (0..50).map(|_| {
        let pool = pool.clone();
        let dialer = dialer.clone();
        tokio::spawn(async move { pool.send(&"app", &dialer, get()).await })
    });
    for request in requests {
        let response = request.await.expect("join").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 1);
}

/// Sends `burst` requests at once to `pool`'s `"app"`, then one more: how many dials it took.
async fn dials_for_a_burst_and_one_more(burst: u32) -> usize {
    let pool = H2Pool::new(Duration::from_secs(60));
    let dialer = PipeDialer::default();
    let requests: Vec<_> = (0..burst)
        .map(|_| {
            let pool = pool.clone();
            let dialer = dialer.clone();
            tokio::spawn(async move { pool.send(&"app", &dialer, get()).await })
        })
        .collect();
    for request in requests {
        let response = request.await.expect("join").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let after = pool.send(&"app", &dialer, get()).await.expect("after");
    assert_eq!(after.status(), StatusCode::OK);
    dialer.dials.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_connection_a_burst_filled_is_retired_once_the_burst_is_over() {
    assert_eq!(dials_for_a_burst_and_one_more(BURST_STREAMS).await, 1);
    assert_eq!(dials_for_a_burst_and_one_more(BURST_STREAMS + 44).await, 2);
}

#[tokio::test]
async fn a_connection_carries_at_most_its_limit_of_requests() {
    for (limit, requests, dials) in [(0, 7, 1), (1, 3, 3), (3, 7, 3), (3, 6, 2)] {
        let pool = H2Pool::new(Duration::from_secs(60));
        let dialer = PipeDialer::default();
        let handle = pool.handle(&"app", limit);
        for _ in 0..requests {
            let response = handle.send(&dialer, get()).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(
            dialer.dials.load(Ordering::SeqCst),
            dials,
            "{requests} requests, at most {limit} per connection"
        );
    }
}

#[tokio::test]
async fn a_broken_connection_is_replaced() {
    let pool = H2Pool::new(Duration::from_secs(60));
    let dialer = PipeDialer::default();
    pool.send(&"app", &dialer, get()).await.expect("first");
    dialer.kill.notify_waiters();
    // Give the client side a moment to see the connection close.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = pool
        .send(&"app", &dialer, get())
        .await
        .expect("after the break");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn keys_get_their_own_connections_and_idle_ones_are_reaped() {
    let pool = H2Pool::new(Duration::from_millis(200));
    let dialer = PipeDialer::default();
    pool.send(&"a", &dialer, get()).await.expect("a");
    pool.send(&"b", &dialer, get()).await.expect("b");
    pool.send(&"a", &dialer, get()).await.expect("a again");
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pool.send(&"a", &dialer, get())
        .await
        .expect("a after idling");
    assert_eq!(
        dialer.dials.load(Ordering::SeqCst),
        3,
        "idle connection was reused"
    );
}

/// Dials that always fail, slowly, counting attempts.
#[derive(Clone, Default)]
struct DeadPeer {
    dials: Arc<AtomicUsize>,
}

impl Dial for DeadPeer {
    type Io = DuplexStream;

    async fn dial(&self) -> Result<DuplexStream, PoolError> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        Err(PoolError::Dial {
            addr: ([198, 18, 0, 9], 15008).into(),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_to_a_dead_peer_waits_for_one_dial_not_one_each() {
    let pool = H2Pool::new(Duration::from_secs(60));
    let dead = DeadPeer::default();
    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let pool = pool.clone();
            let dead = dead.clone();
            tokio::spawn(async move { pool.send(&"dead", &dead, get()).await })
        })
        .collect();
    for request in requests {
        assert!(request.await.expect("join").is_err());
    }
    assert_eq!(dead.dials.load(Ordering::SeqCst), 1);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test]
async fn handles_share_one_connection_even_across_reaping() {
    let pool = H2Pool::new(Duration::from_millis(200));
    let dialer = PipeDialer::default();
    let first = pool.handle(&"a", 0);
    first.send(&dialer, get()).await.expect("first");
    // Idle long enough to be reaped: the connection closes, but the key stays while held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = pool.handle(&"a", 0);
    second.send(&dialer, get()).await.expect("second");
    first.send(&dialer, get()).await.expect("first again");
    pool.send(&"a", &dialer, get()).await.expect("by key");
    assert_eq!(
        dialer.dials.load(Ordering::SeqCst),
        2,
        "one dial, one re-dial after reaping"
    );
}
