//! The control plane's config pipeline: read Kubernetes and Istio objects from a source, reject
//! the invalid ones with a reason, and translate the rest into the [`Snapshot`] each sidecar
//! receives.
//!
//! The pipeline is split so the decisions stay pure and testable without files or clusters:
//! `objects` parses and checks documents (`mesh` for Istio's `MeshConfig`), `translate` turns
//! the objects into snapshot parts (`cluster_ip` gives Services without one an address,
//! `endpoints` picks a Service port's ready addresses), [`Catalog`] holds the result, and only
//! the [`Source`] implementations ([`DirectorySource`] in local mode) do I/O. `well_known`
//! spells the names Kubernetes and Istio fix, for the control plane and the local launcher
//! alike.
//!
//! The local launcher (crate `remora-local`) stands in for the rest of a cluster, so it must
//! agree with the control plane about what was admitted: it reads its manifests with
//! [`read_directories`], as [`DirectorySource`] does, and the admitted objects through
//! [`Catalog::accepted`] ([`Accepted`]).
//!
//! [`Snapshot`]: remora_api::proto::config::Snapshot

mod accepted;
mod catalog;
pub mod cluster_ip;
pub(crate) mod directory;
mod encoded;
pub mod endpoints;
pub(crate) mod kubernetes;
pub(crate) mod mesh;
mod objects;
mod routing;
mod scope;
mod security;
mod service_entry;
mod source;
mod telemetry;
mod translate;
pub mod well_known;
pub(crate) mod yaml;

pub use accepted::Accepted;
pub(crate) use catalog::SharedPart;
pub use catalog::{Catalog, OwnSource, ViewKey, WorkloadPolicies};
pub use directory::{read_directories, DirectorySource};
pub use encoded::Encoded;
pub use kubernetes::KubernetesSource;
pub use mesh::ProxyConfigError;
pub use objects::{Body, Document, Rejection, Subject};
pub use source::{Source, SourceError, Watching};
