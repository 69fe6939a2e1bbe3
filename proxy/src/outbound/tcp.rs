//! Opaque outbound connections: one endpoint for the connection's life (chosen by the port's
//! VirtualService `tcp`/`tls` routes, if any), reached through a
//! `CONNECT` stream on its sidecar's tunnel (recorded as one of Istio's TCP connections), or
//! directly when it runs no sidecar (over TLS the sidecar opens, under DestinationRule `SIMPLE`
//! or `MUTUAL`). With no endpoint to go to, the connection is closed, as Envoy does.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    access_log::{Direction, Downstream},
    listen::ConnectionError,
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
    downstream: Downstream,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%error, "closing an opaque connection");
            return Ok(());
        }
    };
    let series = upstream.series(&outbound.metrics, &outbound.config).clone();
    let recorder = outbound
        .metrics
        .recorder(Direction::Client, series, downstream);
    let mut record = recorder.tcp();
    record.upstream(upstream.endpoint.address, upstream.cluster.as_ref());
    match &upstream.way {
        Way::Mesh(channel) => {
            let stream = channel.tunnel(None).await?;
            transport::splice_recorded(record, io, TokioIo::new(stream)).await?;
        }
        Way::Direct => {
            let tcp = transport::connect(upstream.endpoint.address).await?;
            transport::splice_recorded(record, io, tcp).await?;
        }
        Way::Originate(originator) => {
            let tls = originator
                .connect(upstream.endpoint.address)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            transport::splice_recorded(record, io, tls).await?;
        }
    }
    Ok(())
}
