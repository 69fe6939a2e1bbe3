//! Remora's sidecar-to-sidecar protocol, in one place: both ends read it from here.
//!
//! A caller sidecar keeps one mTLS HTTP/2 connection to each peer sidecar's tunnel port
//! ([`crate::ports::TUNNEL`], Istio's HBONE port, exempt from capture). On it:
//! - an HTTP request travels as an HTTP/2 request carrying two headers the receiving sidecar
//!   removes before its app sees anything: [`DST_PORT`] (the app port it was addressed to) and
//!   [`ORIG_PROTO`] (the HTTP/1.x version the calling app spoke; absent: HTTP/2);
//! - anything else (opaque TCP, an app's own TLS, an HTTP/1.1 upgrade) travels as an HTTP/2
//!   `CONNECT <pod-ip>:<port>` stream, with [`ORIG_PROTO`] when it carries HTTP/1.x (an upgrade)
//!   so the receiver serves it as HTTP and sanitises it; without it, the bytes are opaque.
//!
//! [`client`] is the calling half; `inbound::tunnel` the receiving one.

pub mod client;

use std::{net::SocketAddr, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Version};

pub use client::{PeerChannel, TunnelClient, TunnelError};

pub const ORIG_PROTO: HeaderName = HeaderName::from_static("remora-orig-proto");
pub const DST_PORT: HeaderName = HeaderName::from_static("remora-dst-port");

/// HTTP/2 settings for the sidecar's multiplexed connections (the tunnel, and HTTP/2 to the
/// app). Windows far above the 64 KiB default let one connection carry many streams at full
/// speed; the frame size keeps per-frame overhead low.
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

/// Removes the protocol's headers, so an app can neither see nor forge them.
pub fn strip_mesh(headers: &mut HeaderMap) {
    headers.remove(ORIG_PROTO);
    headers.remove(DST_PORT);
}

pub fn orig_proto_value(version: Version) -> Option<HeaderValue> {
    match version {
        Version::HTTP_10 => Some(HeaderValue::from_static("HTTP/1.0")),
        Version::HTTP_11 => Some(HeaderValue::from_static("HTTP/1.1")),
        _ => None,
    }
}

/// The HTTP/1.x version named by [`ORIG_PROTO`], or `None` for HTTP/2 (or nonsense).
pub fn orig_proto(headers: &HeaderMap) -> Option<Version> {
    match headers.get(ORIG_PROTO)?.as_bytes() {
        b"HTTP/1.0" => Some(Version::HTTP_10),
        b"HTTP/1.1" => Some(Version::HTTP_11),
        _ => None,
    }
}

/// The destination port a peer sidecar asked for.
pub fn dst_port(headers: &HeaderMap) -> Option<u16> {
    headers.get(DST_PORT)?.to_str().ok()?.parse().ok()
}

pub fn dst_port_value(dst: SocketAddr) -> HeaderValue {
    HeaderValue::from(dst.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_headers_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert(ORIG_PROTO, orig_proto_value(Version::HTTP_10).expect("1.0"));
        headers.insert(
            DST_PORT,
            dst_port_value("198.18.0.10:8000".parse().expect("addr")),
        );
        assert_eq!(orig_proto(&headers), Some(Version::HTTP_10));
        assert_eq!(dst_port(&headers), Some(8000));
        strip_mesh(&mut headers);
        assert!(headers.is_empty());
    }
}
