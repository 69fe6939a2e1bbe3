//! Outbound: connections the app opens, redirected to 15001.
//!
//! Destinations in the snapshot are mesh endpoints: the connection is carried over mTLS to the
//! sidecar in front of them, which must prove the identity the snapshot names. HTTP/1 is
//! proxied request by request; anything else is spliced as opaque TCP. Destinations not in the
//! snapshot (another pod's health port, the outside world) are passed through untouched.

use std::{net::SocketAddr, sync::Arc};

use remora_api::SpiffeId;
use tokio::net::TcpStream;

use crate::{
    app::{intended_destination, ConnectionError, Proxy},
    detect::{detect, Protocol},
    http1::{self, Connect, ForwardError, Upstream},
    metrics::{Reporter, Security},
    tls::{ClientStream, MeshTls},
    transport,
};

pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream) -> Result<(), ConnectionError> {
    let dst = intended_destination(&tcp)?;
    let Some(expected) = proxy.endpoints.identity(dst).cloned() else {
        let upstream = transport::connect(dst).await?;
        let caller = crate::prefixed::PrefixedIo::new(bytes::Bytes::new(), tcp);
        transport::splice(caller, upstream).await?;
        return Ok(());
    };
    let connector = MeshConnector {
        dst,
        expected,
        tls: proxy.tls.clone(),
    };
    let detected = detect(tcp, proxy.detect_timeout).await?;
    match detected.protocol {
        Protocol::Http1 => {
            let upstream = Arc::new(Upstream::new(connector));
            let metrics = proxy.metrics.clone();
            http1::serve(detected.io, move |req| {
                let upstream = upstream.clone();
                let metrics = metrics.clone();
                async move {
                    let response = upstream.forward(req).await;
                    metrics.request(Reporter::source, Security::mutual_tls, response.status());
                    response
                }
            })
            .await?;
        }
        Protocol::Tls | Protocol::Opaque => {
            let upstream = connector.connect().await?;
            let metrics = &proxy.metrics;
            metrics.tcp_opened(Reporter::source, Security::mutual_tls);
            let result = transport::splice(detected.io, upstream).await;
            let spliced = result.as_ref().copied().unwrap_or_default();
            metrics.tcp_closed(
                Reporter::source,
                Security::mutual_tls,
                spliced.received,
                spliced.sent,
            );
            result?;
        }
    }
    Ok(())
}

/// Dials the sidecar in front of a mesh endpoint over mTLS.
struct MeshConnector {
    dst: SocketAddr,
    expected: SpiffeId,
    tls: MeshTls,
}

impl Connect for MeshConnector {
    type Io = ClientStream;

    async fn connect(&self) -> Result<ClientStream, ForwardError> {
        let tcp = transport::connect(self.dst)
            .await
            .map_err(|e| ForwardError::Connect(format!("{}: {e}", self.dst)))?;
        self.tls
            .connect(tcp, self.dst.ip(), &self.expected)
            .await
            .map_err(|e| ForwardError::Connect(format!("{}: {e}", self.dst)))
    }
}
