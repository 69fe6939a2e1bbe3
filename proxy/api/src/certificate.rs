//! Reading the SPIFFE identity out of a workload certificate's URI SAN: the sidecar does it for
//! every mesh peer, the control plane for every sidecar that subscribes.

use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::spiffe::{SpiffeId, SpiffeIdError};

#[derive(Debug, thiserror::Error)]
pub enum CertificateIdError {
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("certificate URI SAN: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("certificate has {0} SPIFFE URI SANs; a workload certificate carries exactly one")]
    ManySpiffeIds(usize),
}

impl SpiffeId {
    /// The identity a DER workload certificate names in its (single) SPIFFE URI SAN.
    pub fn from_certificate(der: &[u8]) -> Result<Self, CertificateIdError> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| CertificateIdError::X509(e.to_string()))?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| CertificateIdError::X509(e.to_string()))?
            .ok_or(CertificateIdError::NoSpiffeId)?;
        let mut uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                _ => None,
            });
        match (uris.next(), uris.count()) {
            (None, _) => Err(CertificateIdError::NoSpiffeId),
            (Some(uri), 0) => Ok(uri.parse()?),
            (Some(_), more) => Err(CertificateIdError::ManySpiffeIds(more + 1)),
        }
    }
}
