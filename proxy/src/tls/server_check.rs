//! Checks of a server the sidecar opens TLS to on an app's behalf (not a mesh peer): any
//! certificate at all (`insecureSkipVerify`, and the kubelet's own way with HTTPS probes), or a
//! valid chain for any one of a list of names (`subjectAltNames`). The handshake's signatures
//! are always checked.

use std::sync::Arc;

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

/// The server checks `insecureSkipVerify` and `subjectAltNames` ask for (the handshake's
/// signatures always checked): any certificate, or a valid chain for any one of `names`.
#[derive(Debug)]
pub struct ServerCheck {
    /// `None`: any certificate is taken.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    names: Vec<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCheck {
    /// Any certificate.
    pub fn any(provider: Arc<CryptoProvider>) -> Self {
        Self {
            webpki: None,
            names: Vec::new(),
            provider,
        }
    }

    /// A chain `webpki` accepts for any one of `names`.
    pub fn any_of(
        webpki: Arc<WebPkiServerVerifier>,
        names: Vec<ServerName<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            webpki: Some(webpki),
            names,
            provider,
        }
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        let mut last = rustls::Error::General("no subjectAltNames".to_owned());
        for name in &self.names {
            match webpki.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
                Ok(verified) => return Ok(verified),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
