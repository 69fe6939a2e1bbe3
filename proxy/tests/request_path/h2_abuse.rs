//! HTTP/2 as an attacker speaks it, frame by frame, to the capture door (h2c with prior
//! knowledge, served with the same settings as the tunnel): each abuse the sidecar held against
//! when first tried, kept so it keeps holding. Each ends in the sidecar's GOAWAY with the error
//! code RFC 9113 (or, for floods, h2's `ENHANCE_YOUR_CALM`) calls for, or, for a flood of
//! frames that ask for answers nobody reads, in the sidecar no longer reading; and costs the
//! app next to nothing.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame's length");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// `GET /get` for `httpbin`, HPACK-encoded from the static table (nothing indexed).
const GET: &[u8] = b"\x82\x86\x84\x01\x07httpbin";

/// An app that counts the connections it accepts and answers nothing.
async fn accepting_app() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let address = listener.local_addr().expect("app address");
    let accepted = Arc::new(Seen::default());
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.requests.fetch_add(1, Ordering::SeqCst);
            count.arrived.notify_waiters();
            held.push(tcp);
        }
    });
    (address, accepted)
}

/// Sends the preface, an empty SETTINGS, then `frames` to the capture door for `app`, stopping
/// when the sidecar stops reading; returns the error code of the GOAWAY it answered with.
async fn goaway_after(mesh: &Mesh, app: SocketAddr, frames: Vec<Vec<u8>>) -> Option<u32> {
    let io = mesh.dial_inbound(app);
    let (mut read, mut write) = tokio::io::split(io);
    let sent = async move {
        let _ = write.write_all(PREFACE).await;
        let _ = write.write_all(&frame(SETTINGS, 0, 0, &[])).await;
        for frame in frames {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
        // Hold the connection open: the verdict is the sidecar's.
        std::future::pending::<()>().await;
    };
    let answered = async move {
        loop {
            let mut header = [0u8; 9];
            read.read_exact(&mut header).await.ok()?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            read.read_exact(&mut payload).await.ok()?;
            if header[3] == GOAWAY {
                let code = payload.get(4..8)?;
                return Some(u32::from_be_bytes(code.try_into().ok()?));
            }
        }
    };
    tokio::select! {
        () = sent => None,
        code = answered => code,
    }
}

/// Rapid reset against an app port declared `protocol`: 2,000 streams, each reset right after
/// its HEADERS, are cut off with `ENHANCE_YOUR_CALM` and open no connection to the app, while a
/// stream that is not reset, on a fresh connection, does reach it (so none is not for nothing).
async fn rapid_reset_opens_nothing_at_the_app(protocol: &str) {
    let (app, accepted) = accepting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.declare_own_port(app.port(), protocol);
    let frames = (0..2000u32)
        .flat_map(|i| {
            let stream = 2 * i + 1;
            [
                frame(HEADERS, END_STREAM | END_HEADERS, stream, GET),
                frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()),
            ]
        })
        .collect();
    assert_eq!(
        goaway_after(&mesh, app, frames).await,
        Some(ENHANCE_YOUR_CALM)
    );
    assert_eq!(
        accepted.count(),
        0,
        "{protocol}: app connections for reset streams"
    );
    let io = mesh.dial_inbound(app);
    let (_read, mut write) = tokio::io::split(io);
    let mut request = PREFACE.to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, GET));
    write.write_all(&request).await.expect("a request");
    accepted.until(1).await;
}

#[tokio::test]
async fn rapid_reset_to_an_http2_app_opens_nothing_at_the_app() {
    // One stream let through would open the pooled connection to the app.
    rapid_reset_opens_nothing_at_the_app("http2").await;
}

#[tokio::test]
async fn rapid_reset_to_an_http1_app_opens_nothing_at_the_app() {
    // Each stream let through would open a connection of its own.
    rapid_reset_opens_nothing_at_the_app("http").await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let (app, _) = accepting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.declare_own_port(app.port(), "http2");
    // A header block that never ends: a literal header, then continuation after continuation.
    let mut frames = vec![frame(HEADERS, END_STREAM, 1, GET)];
    let block = [b'\x40', 0x7f, 0x00]
        .iter()
        .copied()
        .chain([b'a'; 127])
        .collect::<Vec<_>>();
    frames.extend((0..10_000).map(|_| frame(CONTINUATION, 0, 1, &block)));
    let code = goaway_after(&mesh, app, frames).await;
    assert!(
        matches!(
            code,
            Some(ENHANCE_YOUR_CALM | COMPRESSION_ERROR | PROTOCOL_ERROR)
        ),
        "{code:?}"
    );
}

/// Whether the sidecar stops taking `frames` from a caller that never reads what it answers
/// (on a paused clock: the write only gives up once nothing else can move).
async fn stops_reading(mesh: &Mesh, app: SocketAddr, frames: Vec<Vec<u8>>) -> bool {
    let io = mesh.dial_inbound(app);
    let (_unread, mut write) = tokio::io::split(io);
    let mut flood = PREFACE.to_vec();
    flood.extend(frames.concat());
    let written = tokio::time::timeout(Duration::from_secs(10), write.write_all(&flood));
    written.await.is_err()
}

#[tokio::test(start_paused = true)]
async fn a_control_frame_flood_that_reads_no_answer_is_not_taken() {
    let (app, _) = accepting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.declare_own_port(app.port(), "http2");
    // Each SETTINGS and PING asks for an answer: 3 MB of them, none of the answers read.
    let setting = [0x00, 0x03, 0x00, 0x00, 0x00, 0x64];
    let settings = (0..100_000)
        .map(|_| frame(SETTINGS, 0, 0, &setting))
        .collect();
    assert!(stops_reading(&mesh, app, settings).await);
    let pings = (0..100_000).map(|_| frame(PING, 0, 0, &[7; 8])).collect();
    assert!(stops_reading(&mesh, app, pings).await);
}

#[tokio::test]
async fn bad_window_updates_are_protocol_errors() {
    let (app, _) = accepting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.declare_own_port(app.port(), "http2");
    let zero = vec![frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes())];
    assert_eq!(goaway_after(&mesh, app, zero).await, Some(PROTOCOL_ERROR));
    let most = 0x7fff_ffffu32.to_be_bytes();
    let overflow = vec![
        frame(WINDOW_UPDATE, 0, 0, &most),
        frame(WINDOW_UPDATE, 0, 0, &most),
    ];
    assert_eq!(
        goaway_after(&mesh, app, overflow).await,
        Some(FLOW_CONTROL_ERROR)
    );
}

#[tokio::test]
async fn an_hpack_table_size_bomb_ends_the_connection() {
    let (app, accepted) = accepting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.declare_own_port(app.port(), "http2");
    // A dynamic table size update to 65,536 bytes, far above the 4,096 the sidecar allows.
    let mut block = vec![0x3f, 0xe1, 0xff, 0x03];
    block.extend(GET);
    let frames = vec![
        frame(HEADERS, END_STREAM | END_HEADERS, 1, &block),
        frame(DATA, END_STREAM, 1, b""),
    ];
    // RFC 9113 names COMPRESSION_ERROR; h2 reports a table size over the limit as a
    // PROTOCOL_ERROR. Either way the connection ends before a request is made of it.
    let code = goaway_after(&mesh, app, frames).await;
    assert!(
        matches!(code, Some(COMPRESSION_ERROR | PROTOCOL_ERROR)),
        "{code:?}"
    );
    assert_eq!(accepted.count(), 0);
}
