//! The mesh certificate authority: a root (or plugged-in intermediate) that signs short-lived
//! workload certificates carrying exactly one SPIFFE identity as their URI SAN.
//!
//! Files follow Istio's "plug-in CA" layout so an operator's existing CA material works:
//! `ca-cert.pem`, `ca-key.pem`, `root-cert.pem` and, for an intermediate, `cert-chain.pem`.
//! Workload certificates are written the way Istio mounts them: `cert-chain.pem`, `key.pem`,
//! `root-cert.pem`. In a cluster the same material lives in Secrets ([`cluster`]).

pub mod cluster;

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use remora_api::SpiffeId;
use time::OffsetDateTime;

/// Istio's default workload certificate lifetime.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Lifetime of a root made by [`Authority::generate`]: ten years, as Istio's self-signed root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Certificates are back-dated a little so a peer whose clock runs behind accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const ROOT_CERT: &str = "root-cert.pem";
const CERT_CHAIN: &str = "cert-chain.pem";
const WORKLOAD_KEY: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; refusing to overwrite an existing CA")]
    Exists { path: PathBuf },
    #[error("{what}: {source}")]
    Crypto {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("workload certificate lifetime {0:?} is too long to represent")]
    Ttl(Duration),
    #[error("malformed CSR: {0}")]
    Csr(String),
    #[error("the CSR asks for {asked}, but the caller is {allowed}")]
    ForeignIdentity { asked: String, allowed: SpiffeId },
    /// The API server holding the CA's Secrets could not be asked.
    #[error("Secret {secret}: {message}")]
    Api { secret: String, message: String },
}

fn crypto(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Crypto { what, source }
}

/// A signing CA loaded in memory.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate followed by its chain up to (not including) the root.
    chain_pem: String,
    roots_pem: String,
}

/// A freshly issued workload identity, PEM encoded.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    /// Leaf first, then the intermediates a verifier needs.
    pub chain_pem: String,
    pub key_pem: String,
    pub roots_pem: String,
}

impl Authority {
    /// Makes a new self-signed root CA (ECDSA P-256) for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(crypto("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_TTL;
        let cert = params
            .self_signed(&key)
            .map_err(crypto("self-signing the root"))?;
        let pem = cert.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain_pem: pem.clone(),
            roots_pem: pem,
        })
    }

    /// Writes this CA to `dir` in Istio's plug-in layout; refuses to overwrite an existing CA.
    pub fn save_new(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let key_path = dir.join(CA_KEY);
        if key_path.exists() {
            return Err(CaError::Exists { path: key_path });
        }
        write(dir, CA_CERT, &self.chain_pem)?;
        write(dir, ROOT_CERT, &self.roots_pem)?;
        write_private(dir, CA_KEY, &self.issuer.key().serialize_pem())
    }

    /// Loads a CA from `dir` (as [`Authority::save_new`] writes it, or Istio plug-in certs).
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let ca_cert = read(dir, CA_CERT)?;
        let key_pem = read(dir, CA_KEY)?;
        let roots_pem = read(dir, ROOT_CERT)?;
        let chain_pem = match read(dir, CERT_CHAIN) {
            Ok(chain) => Some(chain),
            Err(CaError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Self::from_pem(
            &ca_cert,
            &key_pem,
            roots_pem,
            chain_pem,
            &dir.display().to_string(),
        )
    }

    /// A CA from its certificate, key, roots and (for plug-in certs: the CA certificate
    /// followed by its parents) chain, read from `place`.
    fn from_pem(
        ca_cert: &str,
        key_pem: &str,
        roots_pem: String,
        chain_pem: Option<String>,
        place: &str,
    ) -> Result<Self, CaError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(crypto(format!("parsing {place}'s {CA_KEY}")))?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert, key)
            .map_err(crypto(format!("parsing {place}'s {CA_CERT}")))?;
        Ok(Self {
            issuer,
            chain_pem: chain_pem
                .filter(|chain| !chain.trim().is_empty())
                .unwrap_or_else(|| ca_cert.to_owned()),
            roots_pem,
        })
    }

    /// Issues a workload certificate for `id` with a new key.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCert, CaError> {
        self.issue_with_dns(id, &[], ttl)
    }

    /// Issues a workload certificate for `id` that also names `dns_names`, for peers that
    /// check host names rather than SPIFFE identities (Istio adds such SANs for gateways).
    pub fn issue_with_dns(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        ttl: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate().map_err(crypto("generating the workload key"))?;
        let leaf_pem = self.sign(id, dns_names, &key, ttl)?;
        Ok(WorkloadCert {
            chain_pem: self.chain_after(&leaf_pem),
            key_pem: key.serialize_pem(),
            roots_pem: self.roots_pem.clone(),
        })
    }

    /// Signs a PEM CSR whose only name is `allowed`'s URI SAN (anything else is refused: a
    /// caller gets a certificate for exactly the identity it proved). Returns Istio's
    /// `cert_chain`: the leaf, the CA chain, the root last.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        allowed: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked.len() != 1 || asked[0] != allowed.to_string() {
            return Err(CaError::ForeignIdentity {
                asked: if asked.is_empty() {
                    "no identity".to_owned()
                } else {
                    asked.join(", ")
                },
                allowed: allowed.clone(),
            });
        }
        let leaf = self.sign(allowed, &[], &csr.public_key, ttl)?;
        let mut chain = vec![leaf];
        if self.chain_pem != self.roots_pem {
            chain.push(self.chain_pem.clone());
        }
        chain.push(self.roots_pem.clone());
        Ok(chain)
    }

    /// Signs a leaf for `id` over `public_key`. Istio leaves the subject empty and puts the
    /// identity in a URI SAN; the SAN is then the only name, so it is marked critical by rcgen.
    fn sign(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        public_key: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<String, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = id
            .to_string()
            .try_into()
            .map_err(crypto(format!("encoding {id} as a URI SAN")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            let dns = (*name)
                .try_into()
                .map_err(crypto(format!("encoding {name} as a DNS SAN")))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now
            .checked_add(time::Duration::try_from(ttl).map_err(|_| CaError::Ttl(ttl))?)
            .ok_or(CaError::Ttl(ttl))?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(crypto(format!("signing a certificate for {id}")))?;
        Ok(cert.pem())
    }

    /// The chain a workload presents: its leaf, then this CA and its parents, without a
    /// self-signed root (peers have the root already).
    fn chain_after(&self, leaf_pem: &str) -> String {
        if self.chain_pem == self.roots_pem {
            leaf_pem.to_owned()
        } else {
            format!("{leaf_pem}{}", self.chain_pem)
        }
    }

    /// The trust anchors workloads verify peers against.
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }
}

impl WorkloadCert {
    /// Writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write(dir, CERT_CHAIN, &self.chain_pem)?;
        write_private(dir, WORKLOAD_KEY, &self.key_pem)?;
        write(dir, ROOT_CERT, &self.roots_pem)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive DER integer: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn read(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|source| CaError::Read { path, source })
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), CaError> {
    let path = dir.join(name);
    fs::write(&path, contents).map_err(|source| CaError::Write { path, source })
}

/// Writes a private key readable by its owner only (pods in local mode share the file system).
pub(crate) fn write_private(dir: &Path, name: &str, contents: &str) -> Result<(), CaError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let path = dir.join(name);
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|source| CaError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};

    fn uri_sans(pem: &str) -> Vec<String> {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("san ok")
            .expect("san present");
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn issues_a_leaf_with_exactly_the_spiffe_id() {
        let ca = Authority::generate("cluster.local").expect("ca");
        let id = SpiffeId::new("cluster.local", "default", "httpbin").expect("id");
        let cert = ca.issue(&id, DEFAULT_WORKLOAD_TTL).expect("issue");
        assert_eq!(
            uri_sans(&cert.chain_pem),
            vec!["spiffe://cluster.local/ns/default/sa/httpbin"]
        );
        assert_eq!(cert.roots_pem, ca.roots_pem());
        assert!(cert.key_pem.contains("PRIVATE KEY"));
    }

    fn csr_for(names: Vec<SanType>) -> String {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().expect("uri"))
    }

    #[test]
    fn signs_a_csr_for_exactly_the_proven_identity() {
        let ca = Authority::generate("cluster.local").expect("ca");
        let id = SpiffeId::new("cluster.local", "client", "sleep").expect("id");
        let chain = ca
            .sign_csr(
                &csr_for(vec![uri(&id.to_string())]),
                &id,
                Duration::from_secs(20),
            )
            .expect("signed");
        assert_eq!(chain.len(), 2, "leaf then root");
        assert_eq!(uri_sans(&chain[0]), vec![id.to_string()]);
        assert_eq!(chain[1], ca.roots_pem());

        for names in [
            vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")],
            vec![
                uri(&id.to_string()),
                uri("spiffe://cluster.local/ns/x/sa/y"),
            ],
            vec![SanType::DnsName(
                "istiod.istio-system.svc".try_into().expect("dns"),
            )],
            vec![],
        ] {
            let err = ca
                .sign_csr(&csr_for(names), &id, Duration::from_secs(20))
                .expect_err("foreign identity refused");
            assert!(matches!(err, CaError::ForeignIdentity { .. }), "{err}");
        }
        assert!(matches!(
            ca.sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id,
                Duration::from_secs(20)
            ),
            Err(CaError::Csr(_))
        ));
    }

    #[test]
    fn saved_ca_loads_and_keeps_signing_under_the_same_root() {
        let dir = std::env::temp_dir().join(format!("remora-ca-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ca = Authority::generate("cluster.local").expect("ca");
        ca.save_new(&dir).expect("save");
        assert!(matches!(ca.save_new(&dir), Err(CaError::Exists { .. })));
        let loaded = Authority::load(&dir).expect("load");
        assert_eq!(loaded.roots_pem(), ca.roots_pem());
        let id = SpiffeId::new("cluster.local", "ns1", "sa1").expect("id");
        let cert = loaded.issue(&id, Duration::from_secs(60)).expect("issue");
        let (_, leaf) = parse_x509_pem(cert.chain_pem.as_bytes()).expect("pem");
        let (_, root) = parse_x509_pem(ca.roots_pem().as_bytes()).expect("pem");
        let leaf = leaf.parse_x509().expect("leaf");
        let root = root.parse_x509().expect("root");
        assert_eq!(leaf.issuer(), root.subject());
        leaf.verify_signature(Some(root.public_key()))
            .expect("leaf signed by the root");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
