//! The capture port 15006: everything dialled to the pod that did not come through the tunnel.
//!
//! What the app port declares decides first (Istio's protocol selection): a port declared HTTP
//! is served as HTTP whatever arrives, a port declared TCP is passed through unread, and only an
//! undeclared port is sniffed. TLS offering a mesh ALPN is an Istio sidecar's mTLS, which can
//! arrive on any port: it is terminated here, the peer's SPIFFE identity read from its
//! certificate, and what it carries is served by the same declaration. Other TLS is the app's
//! own and passes through unopened (on a port declared HTTP, only as a whole ClientHello);
//! anything else is plaintext. All are accepted (PeerAuthentication PERMISSIVE, Istio's
//! default) unless the connection hook says otherwise (STRICT refuses all but mesh mTLS). On a
//! port whose mode is DISABLE nothing is terminated here: every TLS connection is the app's.

use std::sync::Arc;

use remora_api::{peer_authn::MtlsMode, protocol::Declared};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    detect::{detect_declared, detect_inbound, Protocol},
    listen::{Accepted, ConnectionError},
    tls,
};

use super::{serve, Inbound, PeerTls};

pub async fn handle<IO>(
    inbound: Arc<Inbound>,
    accepted: Accepted<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        client,
        orig_dst: app,
        io,
    } = accepted;
    let _open = inbound.metrics.open("inbound");
    let (declared, mode) = inbound.port_settings(app.port());
    // Under DISABLE the sidecar takes no mTLS on the port: even a mesh ALPN is the app's.
    let terminates = mode != MtlsMode::Disable;
    let detected = detect_inbound(io, declared, terminates, inbound.detect_timeout).await?;
    inbound
        .metrics
        .connection("inbound", detected.protocol.name());
    if detected.protocol != Protocol::Tls {
        let conn = inbound.connection(client, app, PeerTls::Plaintext, detected.protocol, None)?;
        return serve(inbound, conn, detected.io).await;
    }
    let whole_hello = declared == Declared::Http;
    let (mesh, io) = match terminates || whole_hello {
        true => {
            let (hello, io) =
                Box::pin(tls::client_hello(detected.io, inbound.detect_timeout)).await?;
            // On a port declared HTTP, TLS is the app's own only as a whole ClientHello.
            if hello.is_none() && whole_hello {
                return Err(ConnectionError::NotHttp);
            }
            (terminates && hello.is_some_and(|hello| hello.mesh), io)
        }
        false => (false, detected.io),
    };
    if !mesh {
        let conn = inbound.connection(client, app, PeerTls::AppTls, Protocol::Tls, None)?;
        return serve(inbound, conn, io).await;
    }
    // Boxed: a TLS handshake's state is several KiB, and held inline it would be part of
    // every plaintext connection's task too (10 KiB per connection instead of 3).
    Box::pin(async move {
        let (tls, peer) = inbound.tls.accept(io).await?;
        let sni = tls::server_name(&tls);
        let inner = detect_declared(tls, declared, inbound.detect_timeout).await?;
        let conn =
            inbound.connection(client, app, PeerTls::IstioMtls(peer), inner.protocol, sni)?;
        serve(inbound, conn, inner.io).await
    })
    .await
}
