//! The app's own health checks and metrics, for the status port (15020): with mTLS in front of
//! the app the kubelet's probes (rewritten by injection to `/app-health/...`) and a Prometheus
//! scrape can no longer reach it, so the sidecar performs the original probe (HTTP with its
//! headers and scheme, a TCP connect, gRPC health) and fetches the app's metrics itself, from
//! 127.0.0.6 like all inbound traffic. Here because only `inbound` reaches the app.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use remora_api::{
    app_probe::{AppProbe, Check, GrpcCheck, HttpCheck},
    proto::health::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    },
};
use rustls::{pki_types::ServerName, ClientConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::{identity::provider, tls::ServerCheck};

use super::app_client::connect_to_app;

/// How long a scrape of the app's metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of the app's metrics read.
const MAX_SCRAPE_BYTES: usize = 16 * 1024 * 1024;

/// Performs `probe` against the app at `pod_ip`: 200 when it passes, else the app's own
/// failing status (HTTP) or 500.
pub async fn probe(probe: &AppProbe, pod_ip: IpAddr) -> StatusCode {
    let Some(check) = probe.check() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let outcome = tokio::time::timeout(probe.timeout(), async {
        match check {
            Check::Http(http) => http_check(http, pod_ip).await,
            Check::Tcp(tcp) => {
                let ip = host_ip(tcp.host.as_deref(), pod_ip).await?;
                connect_to_app(SocketAddr::new(ip, tcp.port))
                    .await
                    .map(|_| StatusCode::OK)
                    .map_err(|e| e.to_string())
            }
            Check::Grpc(grpc) => grpc_check(grpc, pod_ip).await,
        }
    })
    .await;
    match outcome {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => {
            tracing::debug!(%error, "app probe failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Err(_) => {
            tracing::debug!("app probe timed out");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The app's metrics (`GET path` on `port`), or `None` when it cannot be scraped.
pub async fn scrape(port: u16, path: &str, pod_ip: IpAddr) -> Option<Bytes> {
    let fetched = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let tcp = connect_to_app(SocketAddr::new(pod_ip, port))
            .await
            .map_err(|e| e.to_string())?;
        let request = Request::get(path)
            .header(header::HOST, format!("{pod_ip}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send(tcp, request).await?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| e.to_string())
    })
    .await;
    match fetched {
        Ok(Ok(body)) => Some(body),
        Ok(Err(error)) => {
            tracing::debug!(%error, "scraping the app's metrics failed");
            None
        }
        Err(_) => None,
    }
}

/// An HTTP probe: a 2xx or 3xx answer passes (as the kubelet judges it).
async fn http_check(http: &HttpCheck, pod_ip: IpAddr) -> Result<StatusCode, String> {
    let ip = host_ip(http.host.as_deref(), pod_ip).await?;
    let authority = match &http.host {
        Some(host) => format!("{host}:{}", http.port),
        None => SocketAddr::new(ip, http.port).to_string(),
    };
    let mut request = Request::get(http.path.as_deref().unwrap_or("/"))
        .header(header::HOST, &authority)
        .header(header::USER_AGENT, "kube-probe/remora")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    for h in &http.http_headers {
        let name = HeaderName::try_from(h.name.as_str()).map_err(|e| e.to_string())?;
        let value = HeaderValue::try_from(h.value.as_str()).map_err(|e| e.to_string())?;
        request.headers_mut().insert(name, value);
    }
    let tcp = connect_to_app(SocketAddr::new(ip, http.port))
        .await
        .map_err(|e| e.to_string())?;
    let response = if http.scheme.as_deref() == Some("HTTPS") {
        // As the kubelet does: TLS without checking the app's certificate.
        let provider = provider();
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck::any(provider)))
            .with_no_client_auth();
        let name = match &http.host {
            Some(host) => ServerName::try_from(host.clone()).map_err(|e| e.to_string())?,
            None => ServerName::from(ip),
        };
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(tls, request).await?
    } else {
        send(tcp, request).await?
    };
    let status = response.status();
    Ok(if status.is_success() || status.is_redirection() {
        StatusCode::OK
    } else {
        status
    })
}

/// A gRPC health check: `SERVING` passes.
async fn grpc_check(grpc: &GrpcCheck, pod_ip: IpAddr) -> Result<StatusCode, String> {
    let address = SocketAddr::new(pod_ip, grpc.port);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| async move {
            connect_to_app(address).await.map(TokioIo::new)
        }))
        .await
        .map_err(|e| e.to_string())?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: grpc.service.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| status.to_string())?;
    if answer.into_inner().status() == ServingStatus::Serving {
        Ok(StatusCode::OK)
    } else {
        Ok(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// `GET` over one new HTTP/1.1 connection.
async fn send<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// The address a probe's `host` names (an IP, or a name resolved now), else the pod's.
async fn host_ip(host: Option<&str>, pod_ip: IpAddr) -> Result<IpAddr, String> {
    let Some(host) = host else {
        return Ok(pod_ip);
    };
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| format!("{host} does not resolve"))
}
