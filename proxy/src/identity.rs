//! The sidecar's workload identity: the mesh trust anchors and the current certificate, which
//! can be replaced at any time (rotation) without touching the TLS configs that use it.
//!
//! The certificate comes from PEM files (tests, hand-made setups) or from the mesh CA
//! ([`ca::CaClient`]), renewed at half its lifetime by [`rotation`].

pub mod ca;
pub mod rotation;

use std::{fs, io, path::Path, sync::Arc, time::SystemTime};

use arc_swap::ArcSwap;
use remora_api::{CertificateIdError, FileIdentity, SpiffeId};
use rustls::{
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    RootCertStore, SignatureScheme,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use x509_parser::prelude::FromDer;

/// A workload identity: who this sidecar is, whom it trusts, and its current certificate.
#[derive(Debug)]
pub struct Identity {
    pub id: SpiffeId,
    pub roots: RootCertStore,
    pub cert: Arc<CurrentCert>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("{0}")]
    Certificate(#[from] CertificateIdError),
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("certificate is for {found}, but this sidecar runs as {expected}")]
    WrongIdentity { expected: SpiffeId, found: SpiffeId },
    #[error("private key: {0}")]
    Key(#[from] rustls::Error),
    #[error("certificate has already expired")]
    Expired,
}

/// A certificate chain with its key and what the sidecar reports about it.
#[derive(Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// Serial number, hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this sidecar got it.
    pub received: SystemTime,
}

impl Issued {
    /// Checks that `chain`'s leaf is for `expected` and pairs it with `key`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        expected: &SpiffeId,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or_else(|| IdentityError::Pem {
            path: "certificate chain".to_owned(),
            what: "no certificate found".to_owned(),
        })?;
        let found = SpiffeId::from_certificate(leaf)?;
        if &found != expected {
            return Err(IdentityError::WrongIdentity {
                expected: expected.clone(),
                found,
            });
        }
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|e| IdentityError::X509(e.to_string()))?;
        let validity = parsed.validity();
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        let serial = parsed.raw_serial_as_string().replace(':', "");
        let (not_before, not_after) = (time(validity.not_before), time(validity.not_after));
        if not_after <= SystemTime::now() {
            return Err(IdentityError::Expired);
        }
        let key = CertifiedKey::from_der(chain, key, &provider())?;
        Ok(Self {
            key: Arc::new(key),
            serial,
            not_before,
            not_after,
            received: SystemTime::now(),
        })
    }
}

/// The certificate both mesh TLS configs present, swapped atomically on rotation: handshakes in
/// progress finish with the old one, new ones get the new one, established connections stay.
#[derive(Debug)]
pub struct CurrentCert(ArcSwap<Issued>);

impl CurrentCert {
    pub fn new(issued: Issued) -> Self {
        Self(ArcSwap::from_pointee(issued))
    }

    pub fn get(&self) -> Arc<Issued> {
        self.0.load_full()
    }

    pub fn replace(&self, issued: Issued) {
        self.0.store(Arc::new(issued));
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Identity {
    /// Loads the PEM files and checks the leaf is for `expected`.
    pub fn load(files: &FileIdentity, expected: &SpiffeId) -> Result<Self, IdentityError> {
        let chain = read_certs(&files.cert_chain)?;
        let key_text = read(&files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| IdentityError::Pem {
            path: files.key.display().to_string(),
            what: format!("no usable private key: {e}"),
        })?;
        Ok(Self {
            id: expected.clone(),
            roots: load_roots(&files.roots)?,
            cert: Arc::new(CurrentCert::new(Issued::new(chain, key, expected)?)),
        })
    }
}

/// The crypto every TLS config of the sidecar uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors from a PEM file; at least one must be usable.
pub fn load_roots(path: &Path) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(IdentityError::Pem {
            path: path.display().to_string(),
            what: "no usable trust anchor".to_owned(),
        });
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Certificates in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let text = read(path)?;
    let certs = parse_certs(&text).map_err(|what| IdentityError::Pem {
        path: path.display().to_string(),
        what,
    })?;
    Ok(certs)
}

/// Certificates in PEM text (at least one).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate found".to_owned());
    }
    Ok(certs)
}
