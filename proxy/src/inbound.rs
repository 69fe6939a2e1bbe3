//! Inbound: connections to the app, redirected to 15006.
//!
//! Mesh mTLS (told apart by ALPN) is terminated and the peer's SPIFFE identity read from its
//! certificate; plaintext and the app's own TLS are accepted as they are (PeerAuthentication
//! PERMISSIVE, Istio's default). HTTP requests get Envoy's `x-forwarded-client-cert` treatment
//! (SANITIZE_SET: whatever the caller sent is dropped, ours is set for mesh peers). Everything
//! reaches the app from 127.0.0.6 so it is not captured again.

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderName, HeaderValue};
use remora_api::SpiffeId;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    app::{intended_destination, ConnectionError, Proxy},
    detect::{detect, Protocol},
    http1::{self, Connect, ForwardError, Upstream},
    metrics::{Reporter, Security},
    prefixed::PrefixedIo,
    tls, transport,
};

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream) -> Result<(), ConnectionError> {
    let app = intended_destination(&tcp)?;
    let detected = detect(tcp, proxy.detect_timeout).await?;
    if detected.protocol != Protocol::Tls {
        return to_app(&proxy, app, detected.protocol, detected.io, None).await;
    }
    let (mesh, io) = tls::offers_mesh_alpn(detected.io, proxy.detect_timeout).await?;
    if !mesh {
        // The app's own TLS: not ours to open.
        return to_app(&proxy, app, Protocol::Tls, io, None).await;
    }
    let (tls, peer) = proxy.tls.accept(io).await?;
    let inner = detect(tls, proxy.detect_timeout).await?;
    to_app(&proxy, app, inner.protocol, inner.io, Some(peer)).await
}

/// Hands a connection to the app at `app`, as HTTP when it is HTTP/1, spliced otherwise.
async fn to_app<S>(
    proxy: &Arc<Proxy>,
    app: SocketAddr,
    protocol: Protocol,
    io: PrefixedIo<S>,
    peer: Option<SpiffeId>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let security = match peer {
        Some(_) => Security::mutual_tls,
        None => Security::none,
    };
    let metrics = proxy.metrics.clone();
    if protocol == Protocol::Http1 {
        let xfcc = peer.map(|peer| forwarded_client_cert(&proxy.id, &peer));
        let upstream = Arc::new(Upstream::new(AppConnector(app)));
        http1::serve(io, move |mut req| {
            let upstream = upstream.clone();
            let metrics = metrics.clone();
            let headers = req.headers_mut();
            headers.remove(XFCC);
            if let Some(xfcc) = &xfcc {
                headers.insert(XFCC, xfcc.clone());
            }
            async move {
                let response = upstream.forward(req).await;
                metrics.request(Reporter::destination, security, response.status());
                response
            }
        })
        .await?;
        return Ok(());
    }
    let upstream = transport::connect_to_app(app).await?;
    metrics.tcp_opened(Reporter::destination, security);
    let result = transport::splice(io, upstream).await;
    let spliced = result.as_ref().copied().unwrap_or_default();
    metrics.tcp_closed(
        Reporter::destination,
        security,
        spliced.received,
        spliced.sent,
    );
    result?;
    Ok(())
}

/// Envoy's `x-forwarded-client-cert` for a verified mesh peer: who we are, who called.
fn forwarded_client_cert(own: &SpiffeId, peer: &SpiffeId) -> HeaderValue {
    HeaderValue::try_from(format!("By={own};URI={peer}"))
        .expect("SPIFFE ids are validated to contain only header-safe characters")
}

/// Dials the app from 127.0.0.6.
struct AppConnector(SocketAddr);

impl Connect for AppConnector {
    type Io = TcpStream;

    async fn connect(&self) -> Result<TcpStream, ForwardError> {
        transport::connect_to_app(self.0)
            .await
            .map_err(|e| ForwardError::Connect(format!("app at {}: {e}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
