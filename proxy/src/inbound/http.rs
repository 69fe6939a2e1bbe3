//! The only HTTP service in front of the app. Each request passes the per-request policy hook,
//! is sanitised (the tunnel protocol's headers removed, `x-forwarded-client-cert` set Envoy's
//! SANITIZE_SET way: whatever the caller claimed is dropped, ours is set for a mesh peer) and
//! goes to the app over the pooled app client, or, for an upgrade, over its own connection.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    body::Body,
    detect::Protocol,
    headers,
    listen::ConnectionError,
    metrics::{RecordedBody, RequestRecord, Series},
    overload::Listener,
    prefixed::PrefixedIo,
    respond::{respond, RequestError, Stages},
    serve, tunnel, upgrade,
};

use super::{authorize, tcp, Inbound, InboundConn, PeerTls};

/// Serves `conn` as HTTP, request by request.
pub(super) async fn serve<IO>(
    inbound: Arc<Inbound>,
    conn: InboundConn,
    io: PrefixedIo<IO>,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = conn.protocol;
    let drain = inbound.drain.clone();
    let service = AppHandler::new(inbound, conn).service();
    serve::http(protocol, io, &drain, service).await?;
    Ok(())
}

/// Forwards the requests of one [`InboundConn`] to its app port.
pub(super) struct AppHandler {
    inbound: Arc<Inbound>,
    conn: InboundConn,
    /// Set on every request (or removed from it when the caller is no mesh peer).
    xfcc: Option<HeaderValue>,
    /// The access log's name for the app port (`inbound|<port>||`).
    cluster: Arc<str>,
}

impl AppHandler {
    pub(super) fn new(inbound: Arc<Inbound>, conn: InboundConn) -> Arc<Self> {
        Arc::new(Self {
            xfcc: inbound.forwarded_client_cert(&conn),
            cluster: Arc::from(format!("inbound|{}||", conn.app.port())),
            inbound,
            conn,
        })
    }

    /// The service `serve` runs: this handler, answered and recorded by [`respond`].
    pub(super) fn service(self: Arc<Self>) -> impl serve::HttpService<RecordedBody> {
        let recorder = self.conn.recorder().clone();
        let door = match self.conn.tls {
            PeerTls::Tunnel(_) => Listener::Tunnel,
            _ => Listener::Inbound,
        };
        let requests = self.inbound.requests(door);
        respond(self, recorder, requests)
    }

    /// What its requests are counted under.
    pub(super) fn series(&self) -> &Arc<Series> {
        &self.conn.recorder().series
    }

    pub(super) async fn forward(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, RequestError> {
        self.authorize(&mut req)?;
        let version = self.app_version(&req);
        tunnel::strip_mesh(req.headers_mut());
        headers::set_forwarded_client_cert(req.headers_mut(), self.xfcc.as_ref());
        let app = self.conn.app;
        if headers::is_upgrade(&req) {
            let tcp = tcp::connect(&self.inbound, &self.conn).await?;
            return upgrade::forward(TokioIo::new(tcp), &self.inbound.drain, req)
                .await
                .map_err(|e| RequestError::unavailable(app, e));
        }
        let response = self
            .inbound
            .app
            .forward(app, version, req.map(Body::Incoming))
            .await?;
        Ok(response.map(Body::Incoming))
    }

    /// The per-request policy hook: every request to the app passes here once, against the
    /// snapshot in use when it arrives (path normalization, RequestAuthentication,
    /// AuthorizationPolicy).
    fn authorize(&self, req: &mut Request<Incoming>) -> Result<(), RequestError> {
        let snapshot = self.inbound.config.load();
        authorize::request(&snapshot, &self.inbound.metrics, &self.conn, req)
    }

    /// The HTTP version to speak to the app: what the calling app spoke, which through the
    /// tunnel is carried in `remora-orig-proto` (absent: HTTP/2); `None` means HTTP/2.
    fn app_version(&self, req: &Request<Incoming>) -> Option<Version> {
        let tunnelled_request =
            matches!(self.conn.tls, PeerTls::Tunnel(_)) && self.conn.protocol == Protocol::Http2;
        match req.version() {
            Version::HTTP_2 if tunnelled_request => tunnel::orig_proto(req.headers()),
            Version::HTTP_2 => None,
            version => Some(version),
        }
    }
}

impl Stages for AppHandler {
    async fn call(
        &self,
        req: Request<Incoming>,
        record: &RequestRecord,
    ) -> Result<Response<Body>, RequestError> {
        record.upstream(self.conn.app, Some(&self.cluster));
        self.forward(req).await
    }
}
