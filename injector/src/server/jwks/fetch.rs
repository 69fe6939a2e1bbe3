//! One HTTP(S) GET of a JWKS, with the system's trusted roots for HTTPS, bounded in time and
//! size.

use std::{sync::Arc, time::Duration};

use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// A JWKS is a few KiB; anything far larger is not one.
const MAX_BODY: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not an http:// or https:// URL with a host")]
    Url(String),
    #[error("{0}: timed out")]
    Timeout(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{0}: status {1}")]
    Status(String, http::StatusCode),
    #[error("{0}: not a JSON Web Key Set: {1}")]
    NotJwks(String, String),
}

/// GETs `url` and returns its body as text.
pub async fn fetch(url: &str) -> Result<String, FetchError> {
    tokio::time::timeout(TIMEOUT, get(url))
        .await
        .map_err(|_| FetchError::Timeout(url.to_owned()))?
}

async fn get(url: &str) -> Result<String, FetchError> {
    let bad_url = || FetchError::Url(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad_url())?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad_url()),
    };
    let host = uri.host().ok_or_else(bad_url)?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let io_error = |e| FetchError::Io(url.to_owned(), e);
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(io_error)?;
    let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(url.to_owned(), e.to_string()))?;
    if https {
        let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| bad_url())?;
        let tls = tls_connector()
            .map_err(|e| FetchError::Http(url.to_owned(), e.to_string()))?
            .connect(name, tcp)
            .await
            .map_err(io_error)?;
        send(url, tls, request).await
    } else {
        send(url, tcp, request).await
    }
}

async fn send<IO>(url: &str, io: IO, request: Request<Empty<Bytes>>) -> Result<String, FetchError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |e: &dyn std::fmt::Display| FetchError::Http(url.to_owned(), e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_error(&e))?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_error(&e))?;
    if !response.status().is_success() {
        return Err(FetchError::Status(url.to_owned(), response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| http_error(&e))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| http_error(&e))
}

/// TLS with the system's trusted roots (read per fetch: fetches are minutes apart, and a
/// root added to the system is picked up).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's trusted roots");
    }
    roots.add_parsable_certificates(found.certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
