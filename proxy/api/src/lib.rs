//! Remora's configuration model, defined once and shared by the sidecar, the control plane and
//! `remoractl`.
//!
//! - [`Bootstrap`]: what the sidecar knows when it starts (its pod metadata, where its identity
//!   comes from, the control-plane address or a static snapshot), from a file or from the
//!   environment Kubernetes gives an injected sidecar.
//! - [`proto::config::Snapshot`]: what changes at run time (the services and workloads this
//!   sidecar may call with the identity each must present, and mesh settings), defined once as
//!   protobuf: the discovery stream sends it and a bootstrap's `staticSnapshot` spells it in YAML.
//!   [`Snapshot`] is its validated, indexed form.
//!
//! The proxy never parses Istio YAML: the control plane translates Istio and Kubernetes resources
//! into these types.

pub mod access_log;
pub mod app_probe;
pub mod authz;
mod bootstrap;
mod certificate;
mod endpoint;
pub mod jwt;
mod load;
mod mesh;
pub mod path;
pub mod peer_authn;
pub mod proto;
pub mod protocol;
pub mod resources;
pub mod route;
mod security;
mod snapshot;
mod spiffe;
pub mod telemetry;

pub use bootstrap::{
    Bootstrap, CaIdentity, FileIdentity, IdentitySource, ProxyMetadata, DEFAULT_CA_ADDR,
    DEFAULT_CERT_TTL, DEFAULT_DRAIN_DURATION, DEFAULT_TRUST_DOMAIN, ROOT_CERT_PATH, TOKEN_PATH,
};
pub use certificate::CertificateIdError;
pub use endpoint::{DnsEndpoints, DnsName, Endpoint, ServiceKey, Workload, WorkloadNames};
pub use load::{from_value, ConfigError};
pub use mesh::{MeshSettings, OutboundPolicy, OverloadLimits};
pub use security::{Outcome, Security};
pub use snapshot::{Dump, Logical, ServicePort, Snapshot};
pub use spiffe::{SpiffeId, SpiffeIdError};
