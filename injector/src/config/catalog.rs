//! The control plane's view of the mesh at one moment: everything valid a config source holds,
//! translated once, plus what was rejected and why.
//!
//! A source (a directory in local mode, the Kubernetes API in a cluster) builds a new
//! [`Catalog`] on every change and the discovery server cuts per-sidecar snapshots from it;
//! keeping it immutable lets every stream read the same catalog without locks.
//!
//! The local launcher reads its manifests through a catalog too, and runs exactly the
//! Namespaces, Deployments and Services it accepted, with the cluster IPs, trust domain and
//! `proxyMetadata` the control plane serves, so the two can never disagree about them.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};
use prost::Message;
use remora_api::proto::config::{self as proto, Node, Snapshot};

use super::{
    cluster_ip::fnv1a64,
    mesh::{MeshConfig, ProxyConfig, ProxyConfigError},
    objects::{Key, Labelled, Objects, Rejection},
    translate::{self, PodFacts},
};

/// The version the control plane gives `snapshot` (whose own `version` is empty): a hash of its
/// content that is the same in every build, so an unchanged snapshot keeps its version across
/// control-plane upgrades too, and anyone can tell which version a given content has.
pub fn version_of(snapshot: &Snapshot) -> String {
    format!("{:016x}", fnv1a64(&snapshot.encode_to_vec()))
}

/// The parts of a pod's `ProxyConfig` that injection renders into its sidecar container, as
/// Istio's injection template does (the rest reaches the sidecar in its snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarConfig {
    /// `proxyMetadata`: environment variables.
    pub env: BTreeMap<String, String>,
    /// `concurrency`: worker threads (`--concurrency`; 0 means one per core).
    pub concurrency: Option<u32>,
}

/// The valid config from one read of a source, translated.
#[derive(Debug)]
pub struct Catalog {
    /// Every object or file that was not applied, and why.
    pub rejected: Vec<Rejection>,
    mesh: MeshConfig,
    /// The accepted objects.
    objects: Objects,
    pods: BTreeMap<Key, PodFacts>,
    services: Vec<proto::Service>,
    endpoints: Vec<proto::Endpoint>,
    cluster_ips: BTreeMap<Key, IpAddr>,
}

impl Catalog {
    /// Builds a catalog from `(origin, text)` pairs: each text is multi-document Kubernetes
    /// YAML, except an origin whose file name is `mesh.yaml`, which is a bare Istio
    /// `MeshConfig`. Later duplicates of an object are rejected, so order matters.
    pub fn build(documents: Vec<(String, String)>) -> Catalog {
        let (mut objects, mut rejected) = Objects::parse(&documents);
        let mesh = objects.mesh.take().unwrap_or_default();
        let translation = translate::translate(&mut objects, &mesh, &mut rejected);
        Catalog {
            rejected,
            mesh,
            objects,
            pods: translation.pods,
            services: translation.services,
            endpoints: translation.endpoints,
            cluster_ips: translation.cluster_ips,
        }
    }

    /// The snapshot for the sidecar of `node`: the same services and endpoints for every
    /// sidecar, mesh settings with its pod's `proxy.istio.io/config` applied. `version` is left
    /// empty for the server to fill.
    pub fn snapshot_for(&self, node: &Node) -> Snapshot {
        let pod = self
            .pods
            .get(&(node.namespace.clone(), node.pod_name.clone()));
        Snapshot {
            version: String::new(),
            endpoints: self.endpoints.clone(),
            services: self.services.clone(),
            mesh: Some(
                self.mesh
                    .settings(pod.and_then(|pod| pod.proxy_config.as_ref())),
            ),
        }
    }

    /// A rejection that may be why object `kind` `namespace/name`, last read from file
    /// `origin`, is missing: its own, or that of a document of that file whose objects could
    /// not be told apart.
    pub fn rejection_of(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        origin: &str,
    ) -> Option<&Rejection> {
        self.rejected
            .iter()
            .find(|r| r.may_concern(kind, namespace, name, origin))
    }

    /// The file Deployment `namespace/name` was read from.
    pub fn deployment_origin(&self, namespace: &str, name: &str) -> Option<&str> {
        self.objects
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|deployment| deployment.origin.as_str())
    }

    /// The mesh's trust domain (`trustDomain`), which the CA signs identities in.
    pub fn trust_domain(&self) -> &str {
        self.mesh.trust_domain()
    }

    /// The accepted Namespace `name`.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        // Namespaces are cluster-scoped: their key's namespace part is empty.
        self.objects
            .namespaces
            .get(&(String::new(), name.to_owned()))
            .map(|namespace| &namespace.object)
    }

    /// The accepted Deployments, by namespace and name.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        objects_of(&self.objects.deployments)
    }

    /// The accepted Deployment `namespace/name`.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<&Deployment> {
        self.objects
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|deployment| &deployment.object)
    }

    /// The accepted Services, by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        objects_of(&self.objects.services)
    }

    /// The cluster IP of Service `namespace/name`; `None` for a headless or ExternalName
    /// Service, or one the catalog does not hold.
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

    /// The service account a pod runs as (`default` when its spec names none), or `None` for
    /// a pod the catalog does not know.
    pub fn pod_service_account(&self, namespace: &str, pod_name: &str) -> Option<&str> {
        self.pods
            .get(&(namespace.to_owned(), pod_name.to_owned()))
            .map(|pod| pod.service_account.as_str())
    }
}

fn objects_of<T>(kept: &BTreeMap<Key, Labelled<T>>) -> impl Iterator<Item = &T> {
    kept.values().map(|labelled| &labelled.object)
}

#[cfg(test)]
mod tests;
