//! The control plane's view of the mesh at one moment: everything valid a config source holds,
//! translated once, plus what was rejected and why.
//!
//! A source (a directory in local mode, the Kubernetes API in a cluster) builds a new
//! [`Catalog`] on every change and the discovery server cuts per-sidecar snapshots from it;
//! keeping it immutable lets every stream read the same catalog without locks.

use std::collections::BTreeMap;

use remora_api::proto::config::{Node, Snapshot};

use super::{
    mesh::MeshConfig,
    objects::{Key, Objects, Rejection},
    translate::{self, PodFacts},
};

/// The valid config from one read of a source, translated.
#[derive(Debug)]
pub struct Catalog {
    /// Every object or file that was not applied, and why.
    pub rejected: Vec<Rejection>,
    mesh: MeshConfig,
    pods: BTreeMap<Key, PodFacts>,
    pub(crate) services: Vec<remora_api::proto::config::Service>,
    endpoints: Vec<remora_api::proto::config::Endpoint>,
}

impl Catalog {
    /// Builds a catalog from `(origin, text)` pairs: each text is multi-document Kubernetes
    /// YAML, except an origin whose file name is `mesh.yaml`, which is a bare Istio
    /// `MeshConfig`. Later duplicates of an object are rejected, so order matters.
    pub fn build(documents: Vec<(String, String)>) -> Catalog {
        let (mut objects, mut rejected) = Objects::parse(&documents);
        let mesh = objects.mesh.take().unwrap_or_default();
        let translation = translate::translate(&objects, &mesh, &mut rejected);
        Catalog {
            rejected,
            mesh,
            pods: translation.pods,
            services: translation.services,
            endpoints: translation.endpoints,
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

    /// The mesh's trust domain (`trustDomain`), which the CA signs identities in.
    pub fn trust_domain(&self) -> &str {
        self.mesh.trust_domain()
    }

    /// The service account a pod runs as (`default` when its spec names none), or `None` for
    /// a pod the catalog does not know.
    pub fn pod_service_account(&self, namespace: &str, pod_name: &str) -> Option<&str> {
        self.pods
            .get(&(namespace.to_owned(), pod_name.to_owned()))
            .map(|pod| pod.service_account.as_str())
    }
}

#[cfg(test)]
mod tests;
