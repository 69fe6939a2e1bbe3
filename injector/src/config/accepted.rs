//! The objects a config source admitted, read-only: what an API server would list after
//! admission, with the cluster IPs it allocated and the mesh config in force.
//!
//! The discovery server never needs these (it serves the translated snapshot), but whoever
//! stands in for the rest of a cluster does: the local launcher runs the accepted Deployments,
//! in the accepted Namespaces, with the `proxyMetadata` injection would render, and records
//! EndpointSlices for the accepted Services. Reading them here, from the very catalog the
//! control plane serves, means the two can never disagree about what was admitted.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};

use crate::inject::Injector;

use super::{
    mesh::{MeshConfig, ProxyConfig, ProxyConfigError},
    objects::{Key, Labelled, Objects},
};

/// The parts of a pod's `ProxyConfig` that injection renders into its sidecar container, as
/// Istio's injection template does (the rest reaches the sidecar in its snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarConfig {
    /// `proxyMetadata`: environment variables.
    pub env: BTreeMap<String, String>,
    /// `concurrency`: worker threads (`--concurrency`; 0 means one per core).
    pub concurrency: Option<u32>,
}

/// The accepted objects of one read of a source ([`Catalog::accepted`]).
///
/// [`Catalog::accepted`]: super::Catalog::accepted
#[derive(Debug)]
pub struct Accepted {
    pub(super) objects: Objects,
    pub(super) mesh: MeshConfig,
    pub(super) cluster_ips: BTreeMap<Key, IpAddr>,
    /// Injection as the injection values and mesh config in force say.
    pub(super) injector: Injector,
}

impl Accepted {
    /// Sidecar injection with the values and mesh config of this read.
    pub fn injector(&self) -> &Injector {
        &self.injector
    }

    /// The Namespace `name`.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        // Namespaces are cluster-scoped: their key's namespace part is empty.
        self.objects
            .namespaces
            .get(&(String::new(), name.to_owned()))
            .map(|namespace| &namespace.object)
    }

    /// The Deployments, by namespace and name.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        objects_of(&self.objects.deployments)
    }

    /// The Deployment `namespace/name`.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<&Deployment> {
        self.objects
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|deployment| &deployment.object)
    }

    /// The file Deployment `namespace/name` was read from.
    pub fn deployment_origin(&self, namespace: &str, name: &str) -> Option<&str> {
        self.objects
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|deployment| deployment.origin.as_str())
    }

    /// The Services, by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        objects_of(&self.objects.services)
    }

    /// The cluster IP of Service `namespace/name`; `None` for a headless or ExternalName
    /// Service, or one that was not accepted.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        self.cluster_ips
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// What injection renders into the sidecar container of a pod with `annotations`: the
    /// mesh's `defaultConfig` with the pod's `proxy.istio.io/config` merged over it.
    pub fn sidecar_config(
        &self,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<SidecarConfig, ProxyConfigError> {
        let pod = ProxyConfig::of_pod(annotations)?;
        let proxy = self.mesh.proxy_config(pod.as_ref());
        Ok(SidecarConfig {
            env: proxy.proxy_metadata,
            concurrency: proxy.concurrency,
        })
    }
}

fn objects_of<T>(kept: &BTreeMap<Key, Labelled<T>>) -> impl Iterator<Item = &T> {
    kept.values().map(|labelled| &labelled.object)
}
