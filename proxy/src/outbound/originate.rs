//! TLS the client sidecar originates itself (DestinationRule `tls.mode` `SIMPLE` or `MUTUAL`),
//! for a backend outside the mesh that speaks TLS while the app speaks plain HTTP or TCP to it.
//!
//! One [`Originator`] per backend and config push, shared by its endpoints: the rustls client
//! settings (roots from `caCertificates` or the system's, the `MUTUAL` key pair, the server name
//! from `sni` or the backend's host, `subjectAltNames`, `insecureSkipVerify`) are built once
//! there, never per request, along with the pooled clients (HTTP/1.1 and HTTP/2, each offering
//! its ALPN). Files that cannot be read fail that backend's requests with the reason (the
//! sidecar keeps running, and the next push tries again), as nothing can be sent safely.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use remora_api::route::Origination;
use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use rustls_pki_types::pem::PemObject;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::{
    body::Body,
    http_client::{Connect, HttpClient},
    identity::provider,
    respond::RequestError,
    tls::ServerCheck,
    transport,
};

/// How one backend's endpoints are reached over TLS of the sidecar's own.
pub struct Originator {
    /// The settings it was built from and the default server name, to reuse it across pushes.
    settings: (Arc<Origination>, Arc<str>),
    clients: Result<Clients, String>,
}

struct Clients {
    http1: HttpClient<Originate>,
    http2: HttpClient<Originate>,
    /// Offering no ALPN, for opaque bytes.
    raw: Originate,
}

impl Originator {
    /// For `settings`, sending `host` (the backend's) as the server name unless `sni` is set.
    pub fn new(settings: &Arc<Origination>, host: &Arc<str>) -> Self {
        let clients = Clients::new(settings, host).inspect_err(|reason| {
            tracing::warn!(%host, %reason, "cannot originate TLS; requests to it fail");
        });
        Self {
            settings: (settings.clone(), host.clone()),
            clients,
        }
    }

    /// Whether it was built for `settings` and `host`.
    pub fn is_for(&self, settings: &Origination, host: &str) -> bool {
        *self.settings.0 == *settings && &*self.settings.1 == host
    }

    /// One request to `upstream`, in the caller's HTTP version (HTTP/2 offered as `h2`).
    pub async fn forward(
        &self,
        upstream: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, RequestError> {
        let clients = self.clients(upstream)?;
        match req.version() {
            Version::HTTP_2 => clients.http2.forward(upstream, None, req).await,
            version => clients.http1.forward(upstream, Some(version), req).await,
        }
    }

    /// A TLS connection to `upstream` for bytes that are not pooled requests (opaque TCP, an
    /// upgrade), offering no ALPN.
    pub async fn connect(&self, upstream: SocketAddr) -> Result<OriginatedTls, RequestError> {
        self.clients(upstream)?
            .raw
            .connect(upstream)
            .await
            .map_err(|e| RequestError::unavailable(upstream, e))
    }

    fn clients(&self, upstream: SocketAddr) -> Result<&Clients, RequestError> {
        self.clients
            .as_ref()
            .map_err(|reason| RequestError::unavailable(upstream, io::Error::other(reason.clone())))
    }
}

impl Clients {
    fn new(settings: &Origination, host: &str) -> Result<Self, String> {
        let name = settings.sni.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("{name:?} is not a server name: {e}"))?;
        let config = client_config(settings)?;
        let originate = |alpn: &[&[u8]]| {
            let mut config = config.clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Originate {
                tls: TlsConnector::from(Arc::new(config)),
                server_name: server_name.clone(),
            }
        };
        Ok(Self {
            http1: HttpClient::with_connector(originate(&[b"http/1.1"])),
            http2: HttpClient::with_connector(originate(&[b"h2"])),
            raw: originate(&[]),
        })
    }
}

/// The rustls client settings `settings` describe.
pub(crate) fn client_config(settings: &Origination) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = if settings.insecure_skip_verify {
        Arc::new(ServerCheck::any(provider))
    } else {
        let mut roots = RootCertStore::empty();
        match &settings.ca_certificates {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("caCertificates {}: {e}", path.display()))?;
                roots.add_parsable_certificates(certs);
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err("no usable root certificate to verify the server with".to_owned());
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        if settings.subject_alt_names.is_empty() {
            webpki
        } else {
            let names = settings
                .subject_alt_names
                .iter()
                .map(|name| {
                    ServerName::try_from(name.clone())
                        .map_err(|e| format!("subjectAltNames {name:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            Arc::new(ServerCheck::any_of(webpki, names, provider))
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &settings.client_certificate {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("clientCertificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("privateKey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("clientCertificate and privateKey: {e}"))
        }
    }
}

/// Dials an endpoint and opens TLS to it.
#[derive(Clone)]
pub struct Originate {
    tls: TlsConnector,
    server_name: ServerName<'static>,
}

impl Connect for Originate {
    type Io = OriginatedTls;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<OriginatedTls>> + Send {
        let connector = self.tls.clone();
        let server_name = self.server_name.clone();
        async move {
            let tcp = transport::connect(addr).await?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(OriginatedTls(tls))
        }
    }
}

/// A TLS connection the sidecar opened to an endpoint.
pub struct OriginatedTls(TlsStream<TcpStream>);

impl Connection for OriginatedTls {
    fn connected(&self) -> Connected {
        let connected = self.0.get_ref().0.connected();
        if self.0.get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for OriginatedTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OriginatedTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
