//! The sidecar's workload identity: its certificate chain, key and the mesh trust anchors,
//! and reading the SPIFFE identity out of a certificate's URI SAN.

use std::{fs, io, path::Path};

use remora_api::{FileIdentity, SpiffeId, SpiffeIdError};
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// A loaded workload identity.
#[derive(Debug)]
pub struct Identity {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: RootCertStore,
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
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("certificate URI SAN: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("certificate has {0} SPIFFE URI SANs; a workload certificate carries exactly one")]
    ManySpiffeIds(usize),
    #[error("certificate is for {found}, but this sidecar runs as {expected}")]
    WrongIdentity { expected: SpiffeId, found: SpiffeId },
}

impl Identity {
    /// Loads the PEM files and checks the leaf is for `expected`.
    pub fn load(files: &FileIdentity, expected: &SpiffeId) -> Result<Self, IdentityError> {
        let chain = read_certs(&files.cert_chain)?;
        let leaf = chain.first().ok_or_else(|| IdentityError::Pem {
            path: files.cert_chain.display().to_string(),
            what: "no certificate found".to_owned(),
        })?;
        let id = spiffe_id_of(leaf)?;
        if &id != expected {
            return Err(IdentityError::WrongIdentity {
                expected: expected.clone(),
                found: id,
            });
        }
        let key_text = read(&files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| IdentityError::Pem {
            path: files.key.display().to_string(),
            what: format!("no usable private key: {e}"),
        })?;
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(read_certs(&files.roots)?);
        if added == 0 {
            return Err(IdentityError::Pem {
                path: files.roots.display().to_string(),
                what: "no usable trust anchor".to_owned(),
            });
        }
        Ok(Self {
            id,
            chain,
            key,
            roots,
        })
    }
}

/// The SPIFFE identity a workload certificate names in its URI SAN.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|e| IdentityError::X509(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::X509(e.to_string()))?
        .ok_or(IdentityError::NoSpiffeId)?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.count()) {
        (None, _) => Err(IdentityError::NoSpiffeId),
        (Some(uri), 0) => Ok(uri.parse()?),
        (Some(_), more) => Err(IdentityError::ManySpiffeIds(more + 1)),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            path: path.display().to_string(),
            what: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}
