//! The head deadline through hyper's HTTP/1 server, on a paused clock: when a connection is
//! closed is read off the clock, which only moves to the next timer.

use std::{convert::Infallible, time::Duration};

use http::Response;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    time::Instant,
};

use super::{HEAD_TIMEOUT, IDLE_TIMEOUT};
use crate::{body, drain::Drain, serve};

const REQUEST: &[u8] = b"GET /get HTTP/1.1\r\nhost: app\r\n\r\n";

/// A connection to an HTTP/1 server answering every request with an empty 200.
fn connect() -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service =
            tower::service_fn(|_| async { Ok::<_, Infallible>(Response::new(body::empty())) });
        let _ = serve::http1(server, &Drain::default(), service).await;
    });
    client
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
    client.write_all(REQUEST).await.expect("write");
    assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
    // Well past the head timeout, the pooled connection still serves.
    tokio::time::sleep(HEAD_TIMEOUT * 6).await;
    client.write_all(REQUEST).await.expect("write");
    assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
    assert_eq!(closed_after(&mut client).await, IDLE_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn the_next_head_gets_its_own_ten_seconds_from_its_first_byte() {
    let mut client = connect();
    client.write_all(REQUEST).await.expect("write");
    assert!(response(&mut client).await.starts_with("HTTP/1.1 200"));
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
