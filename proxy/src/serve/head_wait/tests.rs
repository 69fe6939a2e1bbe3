//! Head deadlines and rest through hyper's HTTP/1 server, on a paused clock: when a connection
//! is closed is read off the clock, which only moves to the next timer.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    time::Instant,
};

use super::{HEAD_TIMEOUT, IDLE_TIMEOUT, REST_AFTER};
use crate::{
    body::{self, Body},
    drain::Drain,
    serve,
};

const REQUEST: &[u8] = b"GET /get HTTP/1.1\r\nhost: app\r\n\r\n";

/// Answers every request with an empty 200 (a request with `Upgrade: echo` switches to echoing
/// what comes after), counting the hyper connections it serves: each takes a clone, and so does
/// each request.
#[derive(Debug)]
struct App {
    clones: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Clone for App {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::Relaxed);
        Self {
            clones: self.clones.clone(),
            calls: self.calls.clone(),
        }
    }
}

impl App {
    fn hyper_connections(&self) -> usize {
        self.clones.load(Ordering::Relaxed) - self.calls.load(Ordering::Relaxed)
    }
}

impl tower::Service<Request<Incoming>> for App {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut response = Response::new(body::empty());
        if request.headers().contains_key(http::header::UPGRADE) {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                }
            });
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("echo"),
            );
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
        }
        std::future::ready(Ok(response))
    }
}

/// A connection to the app's HTTP/1 server, and (a clone of) the app, which counts.
fn connect_counted(drain: Drain) -> (DuplexStream, App) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let app = App {
        clones: Arc::new(AtomicUsize::new(0)),
        calls: Arc::new(AtomicUsize::new(0)),
    };
    let counted = App {
        clones: app.clones.clone(),
        calls: app.calls.clone(),
    };
    tokio::spawn(async move {
        let _ = serve::http1(server, &drain, app).await;
    });
    (client, counted)
}

/// A connection to the app's HTTP/1 server.
fn connect() -> DuplexStream {
    connect_counted(Drain::default()).0
}

/// Reads one response head.
async fn response(client: &mut DuplexStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        assert_eq!(
            client.read(&mut byte).await.expect("read"),
            1,
            "closed early"
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends a request and reads its answer, a 200.
async fn answered(client: &mut DuplexStream) {
    client.write_all(REQUEST).await.expect("write");
    assert!(response(client).await.starts_with("HTTP/1.1 200"));
}

/// How long from now until the server closes the connection (what it sent meanwhile is
/// skipped).
async fn closed_after(client: &mut DuplexStream) -> Duration {
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = client.read_to_end(&mut sink).await;
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_partial_head_is_closed_ten_seconds_after_its_first_byte() {
    let mut client = connect();
    client.write_all(b"GET /get?x HT").await.expect("write");
    assert_eq!(closed_after(&mut client).await, HEAD_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_head_trickled_in_is_held_to_its_first_byte() {
    let mut client = connect();
    let start = Instant::now();
    for byte in b"GET /get?x HTTP/1.1\r\n" {
        client.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let rest = closed_after(&mut client).await;
    assert_eq!(start.elapsed() - rest, Duration::from_millis(400 * 21));
    assert_eq!(start.elapsed(), HEAD_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_kept_until_the_idle_timeout() {
    let mut client = connect();
    answered(&mut client).await;
    // Well past the head timeout, the pooled connection still serves.
    tokio::time::sleep(HEAD_TIMEOUT * 6).await;
    answered(&mut client).await;
    assert_eq!(closed_after(&mut client).await, IDLE_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn the_next_head_gets_its_own_ten_seconds_from_its_first_byte() {
    let mut client = connect();
    answered(&mut client).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    client
        .write_all(b"GET /get HTTP/1.1\r\nho")
        .await
        .expect("write");
    assert_eq!(closed_after(&mut client).await, HEAD_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_waits_for_the_idle_timeout() {
    let mut client = connect();
    assert_eq!(closed_after(&mut client).await, IDLE_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_connection_rests_after_a_second_without_a_head_and_serves_on() {
    let (mut client, app) = connect_counted(Drain::default());
    answered(&mut client).await;
    // Requests closer together than the rest share one hyper connection.
    tokio::time::sleep(REST_AFTER - Duration::from_millis(1)).await;
    answered(&mut client).await;
    assert_eq!(app.hyper_connections(), 1);
    // A second of silence: hyper's connection is let go; the next head gets a new one.
    tokio::time::sleep(REST_AFTER + Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(app.hyper_connections(), 1);
    answered(&mut client).await;
    assert_eq!(app.hyper_connections(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_head_begun_after_a_rest_has_ten_seconds() {
    let mut client = connect();
    answered(&mut client).await;
    tokio::time::sleep(REST_AFTER * 5).await;
    client.write_all(b"GET /get HT").await.expect("write");
    assert_eq!(closed_after(&mut client).await, HEAD_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_all_answered() {
    let mut client = connect();
    client
        .write_all(&[REQUEST, REQUEST, REQUEST].concat())
        .await
        .expect("write");
    for _ in 0..3 {
        assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_head_left_unfinished_is_closed_when_the_connection_rests() {
    let mut client = connect();
    client
        .write_all(&[REQUEST, b"GET /get HT"].concat())
        .await
        .expect("write");
    assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
    assert_eq!(closed_after(&mut client).await, REST_AFTER);
}

#[tokio::test(start_paused = true)]
async fn a_rested_connection_upgrades() {
    let mut client = connect();
    answered(&mut client).await;
    tokio::time::sleep(REST_AFTER * 2).await;
    client
        .write_all(
            b"GET /echo HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .expect("write");
    assert!(response(&mut client).await.starts_with("HTTP/1.1 101"));
    // Well past the rest and the head timeout, the upgraded stream is the app's.
    tokio::time::sleep(HEAD_TIMEOUT * 2).await;
    client.write_all(b"ping").await.expect("write");
    let mut echoed = [0; 4];
    client.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"ping");
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_a_resting_connection_at_once() {
    let drain = Drain::default();
    let (mut client, _) = connect_counted(drain.clone());
    answered(&mut client).await;
    tokio::time::sleep(REST_AFTER * 2).await;
    let start = Instant::now();
    drain.start();
    assert_eq!(
        closed_after(&mut client).await + start.elapsed(),
        Duration::ZERO
    );
}

#[tokio::test]
async fn reads_hand_hyper_less_than_its_first_buffer_so_it_never_grows() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client
        .write_all(&[b'x'; 20_000])
        .await
        .expect("write a body");
    let (mut watched, _timer) = super::watch(server, super::Home::default(), Default::default());
    // As hyper reads: into a buffer larger than its first 8 KiB once it has grown.
    let mut buffer = vec![0; 64 * 1024];
    let mut reads = Vec::new();
    while reads.iter().sum::<usize>() < 20_000 {
        reads.push(watched.read(&mut buffer).await.expect("read"));
    }
    assert_eq!(reads, [8191, 8191, 3618]);
    assert!(buffer[..3618].iter().all(|b| *b == b'x'));
    // A smaller buffer is read into directly, as much as it takes.
    client
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut small = [0; 4];
    assert_eq!(watched.read(&mut small).await.expect("read"), 4);
    assert_eq!(&small, b"GET ");
}
