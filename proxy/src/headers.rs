//! HTTP headers a proxy hop must handle whatever the mesh: hop-by-hop headers (RFC 9110),
//! upgrades, and Envoy's `x-forwarded-client-cert`. The mesh's own headers are the tunnel
//! protocol's ([`crate::tunnel`]).

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Version};
use remora_api::SpiffeId;

pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Removes the headers that describe one hop rather than the message (RFC 9110 §7.6.1),
/// including any the `Connection` header names. `te: trailers` is end-to-end in HTTP/2 (gRPC
/// servers require it) and is kept, as is `Trailer` (HTTP/1 peers only send the trailers it
/// announces).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names beats a hashed removal per candidate.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let keep_te = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if !keep_te {
        headers.remove(header::TE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    is_upgrade_head(req.version(), req.headers())
}

/// [`is_upgrade`] for a request's head.
pub fn is_upgrade_head(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Envoy's `x-forwarded-client-cert` for a verified mesh peer: who we are, who called.
pub fn forwarded_client_cert(own: &SpiffeId, peer: &SpiffeId) -> HeaderValue {
    HeaderValue::try_from(format!("By={own};URI={peer}"))
        .expect("SPIFFE ids are validated to contain only header-safe characters")
}

/// Envoy's SANITIZE_SET: drop whatever the caller claimed, then set ours for a mesh peer.
pub fn set_forwarded_client_cert(headers: &mut HeaderMap, xfcc: Option<&HeaderValue>) {
    headers.remove(XFCC);
    if let Some(xfcc) = xfcc {
        headers.insert(XFCC, xfcc.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("host", "httpbin:8000"),
            ("x-end-to-end", "kept"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-end-to-end"]);
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(
            headers.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let ws = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("request");
        assert!(is_upgrade(&ws));
        let no_connection = Request::builder()
            .header("upgrade", "websocket")
            .body(())
            .expect("request");
        assert!(!is_upgrade(&no_connection));
    }

    #[test]
    fn xfcc_names_both_sides_in_envoy_format() {
        let own = SpiffeId::new("cluster.local", "default", "httpbin").expect("id");
        let peer = SpiffeId::new("cluster.local", "default", "sleep").expect("id");
        assert_eq!(
            forwarded_client_cert(&own, &peer),
            "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
        );
    }
}
