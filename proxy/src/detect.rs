//! Protocol detection from a connection's first bytes.
//!
//! Apps are not told about the mesh, so the sidecar learns what a connection speaks by reading
//! ahead: an HTTP/1.x request line means HTTP; a TLS record header means TLS (an app's own, or
//! mesh mTLS on the inbound side); anything else, or silence until the timeout (a protocol whose
//! server speaks first), is opaque TCP. The bytes read are handed back in a [`PrefixedIo`].

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use remora_api::protocol::Declared;

use crate::prefixed::PrefixedIo;

/// How long to wait for a client's first bytes before treating the connection as a protocol
/// whose server speaks first.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Enough for any request line we are willing to treat as HTTP, and for a TLS ClientHello.
const MAX_PEEK: usize = 16 * 1024 + 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), gRPC's usual form inside a cluster.
    Http2,
    Tls,
    Opaque,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocol {
    /// The name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Classifies the bytes read so far, or `None` when more are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let preface = buf.len().min(H2_PREFACE.len());
    if buf[..preface] == H2_PREFACE[..preface] && !buf.is_empty() {
        return (preface == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    match buf {
        [] => None,
        // A TLS handshake record: content type 22, protocol major version 3.
        [0x16] => None,
        [0x16, 0x03, ..] => Some(Protocol::Tls),
        _ => classify_http1(buf),
    }
}

/// An HTTP/1.x request line: httparse with room for no headers stops with `TooManyHeaders`
/// exactly when the request line was valid and a header follows.
fn classify_http1(buf: &[u8]) -> Option<Protocol> {
    let mut no_headers = [];
    let mut request = httparse::Request::new(&mut no_headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            Some(Protocol::Http1)
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_PEEK => None,
        Ok(httparse::Status::Partial) | Err(_) => Some(Protocol::Opaque),
    }
}

/// What was detected, and the connection with the bytes read put back.
pub struct Detected<S> {
    pub protocol: Protocol,
    pub io: PrefixedIo<S>,
}

/// Reads until the protocol is known, the peer stops sending (EOF), or `timeout` passes.
pub async fn detect<S: AsyncRead + Unpin>(
    io: S,
    timeout: Duration,
) -> std::io::Result<Detected<S>> {
    read_until(io, timeout, classify, Protocol::Opaque).await
}

/// What a connection to a port that declares `declared` is served as (Istio's protocol
/// selection): a TCP port's at once, nothing read; an HTTP port's by only as much as tells
/// HTTP/2's preface and TLS from HTTP/1, and HTTP/1 otherwise, so that a partial or malformed
/// request is the HTTP server's to hold or refuse, never bytes passed to the app; any other
/// port's by [`detect`].
pub async fn detect_declared<S: AsyncRead + Unpin>(
    io: S,
    declared: Declared,
    timeout: Duration,
) -> std::io::Result<Detected<S>> {
    match declared {
        Declared::Tcp => Ok(Detected {
            protocol: Protocol::Opaque,
            io: PrefixedIo::unread(io),
        }),
        Declared::Http => read_until(io, timeout, classify_http, Protocol::Http1).await,
        Declared::Tls | Declared::Undeclared => detect(io, timeout).await,
    }
}

/// What a connection to own port `declared` that came in on the capture port is served as:
/// as [`detect_declared`], except that where the sidecar takes mesh mTLS (`takes_mtls`: any
/// PeerAuthentication mode but DISABLE) a port declared TCP is read for a TLS record header
/// first, since an Istio sidecar's mTLS arrives on every port; anything else there is opaque.
pub async fn detect_inbound<S: AsyncRead + Unpin>(
    io: S,
    declared: Declared,
    takes_mtls: bool,
    timeout: Duration,
) -> std::io::Result<Detected<S>> {
    match declared {
        Declared::Tcp if takes_mtls => {
            read_until(io, timeout, classify_tls, Protocol::Opaque).await
        }
        declared => detect_declared(io, declared, timeout).await,
    }
}

/// On a port declared TCP: TLS, or else opaque.
fn classify_tls(buf: &[u8]) -> Option<Protocol> {
    match buf {
        [] | [0x16] => None,
        [0x16, 0x03, ..] => Some(Protocol::Tls),
        _ => Some(Protocol::Opaque),
    }
}

/// On a port declared HTTP: HTTP/2 with prior knowledge, TLS, or else HTTP/1.
fn classify_http(buf: &[u8]) -> Option<Protocol> {
    let preface = buf.len().min(H2_PREFACE.len());
    match buf {
        [] | [0x16] => None,
        [0x16, 0x03, ..] => Some(Protocol::Tls),
        _ if buf[..preface] == H2_PREFACE[..preface] => {
            (preface == H2_PREFACE.len()).then_some(Protocol::Http2)
        }
        _ => Some(Protocol::Http1),
    }
}

/// Reads until `classify` knows the protocol; `otherwise` when the peer stops sending (EOF)
/// or `timeout` passes first.
async fn read_until<S: AsyncRead + Unpin>(
    mut io: S,
    timeout: Duration,
    classify: fn(&[u8]) -> Option<Protocol>,
    otherwise: Protocol,
) -> std::io::Result<Detected<S>> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Some(protocol) = classify(&buf) {
            break protocol;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break classify(&buf).unwrap_or(otherwise),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok(Detected {
        protocol,
        io: PrefixedIo::new(buf.freeze(), io),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn assert_classifies(
        classify: fn(&[u8]) -> Option<Protocol>,
        cases: &[(&[u8], Option<Protocol>)],
    ) {
        for (bytes, expected) in cases {
            let found = classify(bytes);
            assert_eq!(found, *expected, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"", None),
            (b"GE", None),
            (b"GET /get?n=1 HTTP/1.1\r\n", None),
            (
                b"GET /get?n=1 HTTP/1.1\r\nHost: a\r\n",
                Some(Protocol::Http1),
            ),
            (b"POST / HTTP/1.0\r\n\r\n", Some(Protocol::Http1)),
            (b"\x16", None),
            (b"\x16\x03\x01\x02\x00\x01", Some(Protocol::Tls)),
            (b"hello world\n", Some(Protocol::Opaque)),
            (b"\x00\x01\x02", Some(Protocol::Opaque)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Http2)),
            (b"PRI * HTTP/1.1\r\nHost: x\r\n", Some(Protocol::Http1)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Some(Protocol::Opaque)),
        ];
        assert_classifies(classify, cases);
    }

    #[test]
    fn a_port_declared_http_sees_http_in_all_but_h2_and_tls() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"", None),
            (b"G", Some(Protocol::Http1)),
            (b"GET /get?x HT", Some(Protocol::Http1)),
            (b"hello world\n", Some(Protocol::Http1)),
            (b"\x00\x01\x02", Some(Protocol::Http1)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Some(Protocol::Http1)),
            (b"POST / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Http2)),
            (b"\x16", None),
            (b"\x16\x03\x01", Some(Protocol::Tls)),
            (b"\x16\x04", Some(Protocol::Http1)),
        ];
        assert_classifies(classify_http, cases);
    }

    #[test]
    fn a_port_declared_tcp_taking_mtls_sees_tls_or_bytes() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"", None),
            (b"\x16", None),
            (b"\x16\x03\x01", Some(Protocol::Tls)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(Protocol::Opaque)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Opaque)),
            (b"\x16\x04", Some(Protocol::Opaque)),
        ];
        assert_classifies(classify_tls, cases);
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_declared_tcp_reads_nothing_and_waits_for_nothing() {
        let (_far, near) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let detected = detect_declared(near, Declared::Tcp, Duration::from_millis(500))
            .await
            .expect("detect");
        assert_eq!(detected.protocol, Protocol::Opaque);
        assert_eq!(started.elapsed(), Duration::ZERO);
        let (prefix, _) = detected.io.into_parts();
        assert!(prefix.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_on_a_port_declared_http_is_still_http() {
        let (_far, near) = tokio::io::duplex(64);
        let detected = detect_declared(near, Declared::Http, Duration::from_millis(100))
            .await
            .expect("detect");
        assert_eq!(detected.protocol, Protocol::Http1);
    }

    #[test]
    fn an_endless_request_line_is_not_http() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_PEEK + 1, b'a');
        assert_eq!(classify(&line), Some(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_until_the_timeout_is_opaque() {
        let (_far, near) = tokio::io::duplex(64);
        let detected = detect(near, Duration::from_millis(100))
            .await
            .expect("detect");
        assert_eq!(detected.protocol, Protocol::Opaque);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_read_are_replayed() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let detected = detect(near, Duration::from_secs(1)).await.expect("detect");
        assert_eq!(detected.protocol, Protocol::Http1);
        let (prefix, _) = detected.io.into_parts();
        assert!(prefix.starts_with(b"GET / HTTP/1.1\r\n"));
    }
}
