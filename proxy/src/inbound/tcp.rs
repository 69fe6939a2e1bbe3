//! The only byte path to the app: a connection that is not HTTP (opaque TCP, the app's own
//! TLS, a tunnelled `CONNECT`) is spliced to its app port, recorded as one of Istio's TCP
//! connections, and closed if a new snapshot's policies no longer let it in.

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};

use crate::{
    http_client::Connect, listen::ConnectionError, prefixed::PrefixedIo, respond::RequestError,
    transport,
};

use super::{Inbound, InboundConn};

/// Connects `conn` to its app port and splices the two until both sides are done.
pub(super) async fn serve<IO>(
    inbound: &Inbound,
    conn: &InboundConn,
    io: PrefixedIo<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let app = connect(inbound, conn).await?;
    splice(inbound, conn, io, app).await
}

/// Opens `conn`'s connection to the app; the tunnel answers its caller only once this worked.
pub(super) async fn connect(
    inbound: &Inbound,
    conn: &InboundConn,
) -> Result<TcpStream, RequestError> {
    inbound
        .app
        .connector()
        .connect(conn.app)
        .await
        .map_err(|e| RequestError::unavailable(conn.app, e))
}

/// Splices the caller's `io` with the `app` connection [`connect`] opened.
pub(super) async fn splice<IO>(
    inbound: &Inbound,
    conn: &InboundConn,
    io: PrefixedIo<IO>,
    app: TcpStream,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut record = conn.recorder().tcp();
    record.upstream(conn.app, None);
    let mut changes = inbound.config.changes();
    tokio::select! {
        spliced = transport::splice_recorded(record, io, app) => spliced?,
        () = denied_by_a_new_policy(inbound, conn, &mut changes) => {
            tracing::info!(
                client = %conn.client,
                app = %conn.app,
                "closing a connection the policies in use no longer allow"
            );
        }
    }
    Ok(())
}

/// Completes when a new snapshot no longer lets `conn` in (never, if config stops changing).
async fn denied_by_a_new_policy(
    inbound: &Inbound,
    conn: &InboundConn,
    changes: &mut watch::Receiver<()>,
) {
    while changes.changed().await.is_ok() {
        if !inbound.still_allowed(conn) {
            return;
        }
    }
    std::future::pending().await
}
