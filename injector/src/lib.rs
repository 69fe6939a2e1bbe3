//! Remora's control plane (the role istiod plays in Istio): the mesh CA ([`ca`], with the
//! service-account [`token`]s that prove who asks), the config pipeline ([`config`]) and the
//! discovery server that pushes each sidecar its snapshot ([`server`]), and sidecar injection
//! ([`inject`]: one pure engine behind the admission webhook and `remoractl kube-inject`). In a
//! cluster it also keeps what the API server and workloads read in step with the mesh root:
//! [`root_cert`] (the root in every namespace) and [`webhook_bundle`] (the webhook's
//! `caBundle`).
//!
//! Only what the control plane runs lives here, so its image carries nothing else. The local
//! cluster launcher (`remora-local`) and `remoractl` are crates of their own on top of this
//! one: they read manifests and admitted objects through [`config`]'s public API
//! ([`config::read_directories`], [`config::Catalog::accepted`]) and issue with [`ca`] and
//! [`token`], so they agree with the control plane by construction.

#![forbid(unsafe_code)]

#[cfg(test)]
mod api_mock;
pub mod ca;
pub mod cluster;
pub mod config;
pub mod crds;
pub mod inject;
pub mod root_cert;
pub mod server;
pub mod token;
pub mod webhook_bundle;
