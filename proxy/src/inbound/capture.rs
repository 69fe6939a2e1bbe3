//! The capture port 15006: everything dialled to the pod that did not come through the tunnel.
//!
//! The first bytes say what the caller speaks. TLS offering a mesh ALPN is an Istio sidecar's
//! mTLS: it is terminated here and the peer's SPIFFE identity read from its certificate; other
//! TLS is the app's own and passes through unopened; anything else is plaintext. All are
//! accepted (PeerAuthentication PERMISSIVE, Istio's default) unless the connection hook says
//! otherwise.

use std::sync::Arc;

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
    let detected = detect(io, inbound.detect_timeout).await?;
    inbound
        .metrics
        .connection("inbound", detected.protocol.name());
    if detected.protocol != Protocol::Tls {
        let conn = inbound.connection(client, app, PeerTls::Plaintext, detected.protocol)?;
        return serve(inbound, conn, detected.io).await;
    }
    let (mesh, io) = tls::offers_mesh_alpn(detected.io, inbound.detect_timeout).await?;
    if !mesh {
        let conn = inbound.connection(client, app, PeerTls::AppTls, Protocol::Tls)?;
        return serve(inbound, conn, io).await;
    }
    let (tls, peer) = inbound.tls.accept(io).await?;
    let inner = detect(tls, inbound.detect_timeout).await?;
    let conn = inbound.connection(client, app, PeerTls::IstioMtls(peer), inner.protocol)?;
    serve(inbound, conn, inner.io).await
}
