//! Sidecar-to-sidecar mutual TLS (and, in [`ServerCheck`], how servers outside the mesh are
//! checked when the sidecar opens TLS to them).
//!
//! Both sides present workload certificates and verify the peer's chain against the mesh roots.
//! Workload certificates carry no DNS names, only a SPIFFE URI SAN, so the client side cannot use
//! webpki's name check: it verifies the chain, and the caller then compares the peer's SPIFFE
//! identity with the one its snapshot expects at that address before sending a byte of app data.
//!
//! Mesh TLS is told apart from an app's own TLS by ALPN: ours is `remora`; inbound also accepts
//! Istio's `istio*` protocols so Envoy sidecars can call Remora sidecars during a migration.

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::BytesMut;

use remora_api::{CertificateIdError, SpiffeId};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{Acceptor, ParsedCertificate, WebPkiClientVerifier},
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::{
    identity::{provider, Identity},
    prefixed::PrefixedIo,
};

mod server_check;

pub use server_check::ServerCheck;

/// Our ALPN for sidecar-to-sidecar connections.
pub const MESH_ALPN: &[u8] = b"remora";

/// Istio's ALPN for Envoy's in-band metadata exchange.
const ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";

/// ALPNs an inbound connection may offer to be treated as mesh mTLS: ours, then Istio's.
const INBOUND_MESH_ALPNS: [&[u8]; 6] = [
    MESH_ALPN,
    ISTIO_PEER_EXCHANGE,
    b"istio-http/1.1",
    b"istio-http/1.0",
    b"istio-h2",
    b"istio",
];

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an ALPN protocol marks mesh mTLS rather than an app's own TLS.
pub fn is_mesh_alpn(protocol: &[u8]) -> bool {
    INBOUND_MESH_ALPNS.contains(&protocol)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("building TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("building client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate: {0}")]
    PeerIdentity(#[from] CertificateIdError),
    #[error("peer is {found}, expected {expected}")]
    UnexpectedPeer { expected: SpiffeId, found: SpiffeId },
}

/// Client and server TLS configs for one workload identity.
#[derive(Clone)]
pub struct MeshTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

pub type ClientStream = client::TlsStream<TcpStream>;
pub type ServerStream<IO> = server::TlsStream<PrefixedIo<IO>>;

impl MeshTls {
    pub fn new(identity: &Identity) -> Result<Self, TlsError> {
        let provider = provider();
        let roots = Arc::new(identity.roots.clone());

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(identity.cert.clone());
        // Recognised for detection, but never chosen: it would make an Envoy caller send its
        // metadata-exchange preamble, which would reach the app. Envoy also offers `istio`.
        server.alpn_protocols = INBOUND_MESH_ALPNS
            .iter()
            .filter(|p| **p != ISTIO_PEER_EXCHANGE)
            .map(|p| p.to_vec())
            .collect();

        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier { roots, provider }))
            .with_client_cert_resolver(identity.cert.clone());
        client.alpn_protocols = vec![MESH_ALPN.to_vec()];

        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Opens mesh mTLS over `tcp` to the sidecar at `ip`, which must prove it is `expected`.
    pub async fn connect<IO>(
        &self,
        io: IO,
        ip: IpAddr,
        expected: &SpiffeId,
    ) -> Result<client::TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = self.connector.connect(ServerName::IpAddress(ip.into()), io);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TlsError::Handshake(std::io::ErrorKind::TimedOut.into()))?
            .map_err(TlsError::Handshake)?;
        let found = peer_identity(tls.get_ref().1.peer_certificates())?;
        if &found != expected {
            return Err(TlsError::UnexpectedPeer {
                expected: expected.clone(),
                found,
            });
        }
        Ok(tls)
    }

    /// Terminates mesh mTLS and returns the verified peer identity.
    pub async fn accept<IO>(
        &self,
        io: PrefixedIo<IO>,
    ) -> Result<(ServerStream<IO>, SpiffeId), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io))
            .await
            .map_err(|_| TlsError::Handshake(std::io::ErrorKind::TimedOut.into()))?
            .map_err(TlsError::Handshake)?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates())?;
        Ok((tls, peer))
    }
}

fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, TlsError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    Ok(SpiffeId::from_certificate(leaf)?)
}

/// Verifies a server's chain against the mesh roots without a DNS name check; the SPIFFE
/// identity is compared by [`MeshTls::connect`] once the handshake is done.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server name (SNI) a caller's TLS asked for, once the handshake is done.
pub fn server_name<IO>(stream: &ServerStream<IO>) -> Option<Arc<str>> {
    stream.get_ref().1.server_name().map(Arc::from)
}

/// What a ClientHello says, read before any TLS is terminated.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// It asks for mesh mTLS by ALPN.
    pub mesh: bool,
    /// The server name (SNI) it asks for.
    pub server_name: Option<String>,
}

/// Reads the rest of a TLS ClientHello (whose first bytes detection already read) and tells
/// what it asks for: `None` when it cannot be parsed or is not complete in time. The bytes
/// stay in front of the stream either way, so mesh TLS can be terminated from the start and an
/// app's own TLS passed through untouched.
pub async fn client_hello<S: AsyncRead + Unpin>(
    io: PrefixedIo<S>,
    timeout: Duration,
) -> std::io::Result<(Option<ClientHello>, PrefixedIo<S>)> {
    let (prefix, mut inner) = io.into_parts();
    let mut buf = BytesMut::from(prefix);
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    let hello = loop {
        let mut unread = &buf[fed..];
        while !unread.is_empty() {
            acceptor.read_tls(&mut unread)?;
        }
        fed = buf.len();
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                break Some(ClientHello {
                    mesh: hello
                        .alpn()
                        .is_some_and(|mut protocols| protocols.any(is_mesh_alpn)),
                    server_name: hello.server_name().map(str::to_owned),
                });
            }
            Err(_) => break None,
            Ok(None) => {}
        }
        match tokio::time::timeout_at(deadline, inner.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break None,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((hello, PrefixedIo::new(buf.freeze(), inner)))
}

/// Whether a ClientHello asks for mesh mTLS by ALPN ([`client_hello`]).
pub async fn offers_mesh_alpn<S: AsyncRead + Unpin>(
    io: PrefixedIo<S>,
    timeout: Duration,
) -> std::io::Result<(bool, PrefixedIo<S>)> {
    let (hello, io) = client_hello(io, timeout).await?;
    Ok((hello.is_some_and(|hello| hello.mesh), io))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The first flight of a real rustls client offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::IpAddress(IpAddr::from([198, 18, 0, 10]).into()),
        )
        .expect("client connection");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("client hello");
        hello
    }

    #[tokio::test]
    async fn mesh_alpn_is_recognised_in_a_real_client_hello() {
        let cases: &[(&[&[u8]], bool)] = &[
            (&[b"remora"], true),
            (&[b"istio-peer-exchange", b"istio"], true),
            (&[b"istio-http/1.1"], true),
            (&[b"h2", b"http/1.1"], false),
            (&[], false),
        ];
        for (alpn, mesh) in cases {
            let hello = client_hello(alpn);
            // Deliver the hello in two pieces, so more than one read is needed.
            let (mut far, near) = tokio::io::duplex(64 * 1024);
            let (head, tail) = hello.split_at(3);
            far.write_all(head).await.expect("write");
            let writer = {
                let tail = tail.to_vec();
                tokio::spawn(async move { far.write_all(&tail).await.map(|()| far) })
            };
            let io = PrefixedIo::new(bytes::Bytes::new(), near);
            let (found, io) = offers_mesh_alpn(io, Duration::from_secs(5))
                .await
                .expect("read hello");
            assert_eq!(found, *mesh, "{alpn:?}");
            let (prefix, _) = io.into_parts();
            assert_eq!(
                prefix.as_ref(),
                hello.as_slice(),
                "hello kept for the next reader"
            );
            drop(writer);
        }
    }
}
