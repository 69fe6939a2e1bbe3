//! Opaque outbound connections: one endpoint for the connection's life (chosen by the port's
//! VirtualService `tcp`/`tls` routes, if any), reached through a
//! `CONNECT` stream on its sidecar's tunnel (recorded as one of Istio's TCP connections), or
//! directly when it runs no sidecar (over TLS the sidecar opens, under DestinationRule `SIMPLE`
//! or `MUTUAL`). With no endpoint to go to, or one that cannot be reached, the connection is
//! closed, as Envoy does, and recorded with Envoy's response flag (`UH`, `NR`, `UF`, ...).

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    listen::ConnectionError,
    metrics::{Flag, Recorder},
    prefixed::PrefixedIo,
    respond::RequestError,
    transport,
};

use super::{
    balance::{Upstream, Way},
    Outbound,
};

pub(super) async fn forward<IO>(
    outbound: &Outbound,
    upstream: Result<Arc<Upstream>, RequestError>,
    io: PrefixedIo<IO>,
    connection: Recorder,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%error, "closing an opaque connection");
            connection.tcp_failed(error.flag());
            return Ok(());
        }
    };
    let recorder =
        connection.counting_as(upstream.series(&outbound.metrics, &outbound.config).clone());
    let opened = || {
        let mut record = recorder.tcp();
        record.upstream(upstream.endpoint.address, upstream.cluster.as_ref());
        record
    };
    match &upstream.way {
        Way::Mesh(channel) => {
            let stream = channel
                .tunnel(None)
                .await
                .map_err(connect_failed(&recorder))?;
            transport::splice_recorded(opened(), io, TokioIo::new(stream)).await?;
        }
        Way::Direct => {
            let tcp = transport::connect(upstream.endpoint.address)
                .await
                .map_err(connect_failed(&recorder))?;
            transport::splice_recorded(opened(), io, tcp).await?;
        }
        Way::Originate(originator) => {
            let tls = originator
                .connect(upstream.endpoint.address)
                .await
                .map_err(|e| connect_failed(&recorder)(std::io::Error::other(e.to_string())))?;
            transport::splice_recorded(opened(), io, tls).await?;
        }
    }
    Ok(())
}

/// Records a connection whose upstream could not be reached (`UF`), passing the error on.
fn connect_failed<E>(recorder: &Recorder) -> impl FnOnce(E) -> E + '_ {
    move |error| {
        recorder.tcp_failed(Some(Flag::UpstreamConnectFailure));
        error
    }
}
