//! The capture port 15006: everything dialled to the pod that did not come through the tunnel.
//!
//! The first bytes say what the caller speaks. TLS offering a mesh ALPN is an Istio sidecar's
//! mTLS: it is terminated here and the peer's SPIFFE identity read from its certificate; other
//! TLS is the app's own and passes through unopened; anything else is plaintext. All are
//! accepted (PeerAuthentication PERMISSIVE, Istio's default) unless the connection hook says
//! otherwise (STRICT refuses all but mesh mTLS). On a port whose mode is DISABLE nothing is
//! terminated here: every TLS connection is the app's.

use std::sync::Arc;

use remora_api::peer_authn::MtlsMode;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    detect::{detect, Protocol},
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
    let detected = detect(io, inbound.detect_timeout).await?;
    inbound
        .metrics
        .connection("inbound", detected.protocol.name());
    if detected.protocol != Protocol::Tls {
        let conn = inbound.connection(client, app, PeerTls::Plaintext, detected.protocol, None)?;
        return serve(inbound, conn, detected.io).await;
    }
    // Under DISABLE the sidecar takes no mTLS on the port: even a mesh ALPN is the app's.
    let terminates = inbound.mtls_mode(app.port()) != MtlsMode::Disable;
    let (mesh, io) = match terminates {
        true => tls::offers_mesh_alpn(detected.io, inbound.detect_timeout).await?,
        false => (false, detected.io),
    };
    if !mesh {
        let conn = inbound.connection(client, app, PeerTls::AppTls, Protocol::Tls, None)?;
        return serve(inbound, conn, io).await;
    }
    let (tls, peer) = inbound.tls.accept(io).await?;
    let sni = tls::server_name(&tls);
    let inner = detect(tls, inbound.detect_timeout).await?;
    let conn = inbound.connection(client, app, PeerTls::IstioMtls(peer), inner.protocol, sni)?;
    serve(inbound, conn, inner.io).await
}
