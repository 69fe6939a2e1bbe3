//! Remora's configuration model, defined once and shared by the sidecar, the control plane and
//! `remoractl`.
//!
//! Two types carry everything a sidecar needs:
//! - [`Bootstrap`]: what the sidecar knows when it starts (its pod metadata, where its identity
//!   comes from, optionally the control-plane address and a static [`Snapshot`]).
//! - [`Snapshot`]: what changes at run time (a version plus the mesh endpoints this sidecar may
//!   call, each with the SPIFFE identity it must present).
//!
//! The proxy never parses Istio YAML: the control plane translates Istio and Kubernetes resources
//! into these types.

mod bootstrap;
mod load;
mod snapshot;
mod spiffe;

pub use bootstrap::{
    Bootstrap, FileIdentity, IdentitySource, ProxyMetadata, DEFAULT_DRAIN_DURATION,
    DEFAULT_TRUST_DOMAIN,
};
pub use load::ConfigError;
pub use snapshot::{Endpoint, EndpointTable, Snapshot};
pub use spiffe::{SpiffeId, SpiffeIdError};
