//! The user's manifest directory as the launcher needs it: Namespaces (for their injection
//! labels), Deployments (what to run), Services (for EndpointSlices and names), the mesh
//! defaults, and each Service's cluster IP exactly as the control plane will serve it.
//!
//! Files are found and split into documents by the control plane's own directory reader and
//! YAML helpers, and cluster IPs come from the control plane's own catalog, so `/etc/hosts` in
//! every pod cannot disagree with the snapshot the sidecars receive. Documents the launcher
//! cannot use are skipped here; the control plane reports them (`/debug/rejections`).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};
use serde_json::Value;

use super::{hosts::ServiceAddress, inject::MeshDefaults};
use crate::config::{directory::Files, yaml, Catalog};

/// The file holding a bare `MeshConfig`, as the control plane reads it.
const MESH_FILE: &str = "mesh.yaml";

/// A Service and the address pods reach it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    pub namespace: String,
    pub name: String,
    /// `None` for headless and ExternalName Services, which get no cluster IP.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<u16>,
}

/// What one read of the manifest directory holds.
#[derive(Debug, Default)]
pub struct Manifests {
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub deployments: Vec<Deployment>,
    /// The Service objects, for EndpointSlices.
    pub service_objects: Vec<Service>,
    pub services: Vec<LocalService>,
    pub mesh: MeshDefaults,
}

impl Manifests {
    /// Reads `dir` (recursively, as the control plane does).
    pub fn load(dir: &Path) -> Self {
        let files = Files::read(&[PathBuf::from(dir)]);
        let catalog = Catalog::build(files.documents.clone());
        let addresses: BTreeMap<(String, String), IpAddr> = catalog
            .services
            .iter()
            .filter_map(|service| {
                // `name.namespace.svc.cluster.local`; neither part can contain a dot.
                let mut labels = service.hostname.split('.');
                let (name, namespace) = (labels.next()?, labels.next()?);
                let ip = service.addresses.first()?.parse().ok()?;
                Some(((namespace.to_owned(), name.to_owned()), ip))
            })
            .collect();

        let mut manifests = Manifests::default();
        for (origin, text) in &files.documents {
            if Path::new(origin)
                .file_name()
                .is_some_and(|n| n == MESH_FILE)
            {
                if let Ok(mesh) = MeshDefaults::parse(text) {
                    manifests.mesh = mesh;
                }
                continue;
            }
            for document in yaml::documents(text).unwrap_or_default() {
                manifests.add(document);
            }
        }
        manifests.services = manifests
            .service_objects
            .iter()
            .map(|service| {
                let namespace = namespace_of(service.metadata.namespace.as_ref());
                let name = service.metadata.name.clone().unwrap_or_default();
                LocalService {
                    cluster_ip: addresses.get(&(namespace.clone(), name.clone())).copied(),
                    ports: service
                        .spec
                        .iter()
                        .flat_map(|spec| spec.ports.iter().flatten())
                        .filter_map(|port| u16::try_from(port.port).ok())
                        .collect(),
                    namespace,
                    name,
                }
            })
            .collect();
        manifests
    }

    fn add(&mut self, document: Value) {
        let field = |name: &str| document.get(name).and_then(Value::as_str);
        match (field("apiVersion"), field("kind")) {
            (Some("v1"), Some("Namespace")) => {
                if let Ok(namespace) = yaml::from_value::<Namespace>(document) {
                    self.namespace_labels.insert(
                        namespace.metadata.name.unwrap_or_default(),
                        namespace.metadata.labels.unwrap_or_default(),
                    );
                }
            }
            (Some("apps/v1"), Some("Deployment")) => {
                if let Ok(deployment) = yaml::from_value(document) {
                    self.deployments.push(deployment);
                }
            }
            (Some("v1"), Some("Service")) => {
                if let Ok(service) = yaml::from_value(document) {
                    self.service_objects.push(service);
                }
            }
            _ => {}
        }
    }

    /// Services with a cluster IP, as hosts-file entries.
    pub fn service_addresses(&self) -> Vec<ServiceAddress> {
        self.services
            .iter()
            .filter_map(|s| {
                Some(ServiceAddress {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    ip: s.cluster_ip?,
                })
            })
            .collect()
    }
}

fn namespace_of(namespace: Option<&String>) -> String {
    namespace
        .cloned()
        .unwrap_or_else(|| super::plan::DEFAULT.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::cluster_ip, local::plan};

    /// The repository's `examples/`, which the README demo brings up.
    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    #[test]
    fn examples_load_as_the_control_plane_reads_them() {
        let manifests = Manifests::load(&examples());
        let httpbin_ip = cluster_ip::allocate(&[("demo", "httpbin", None)])
            [&("demo".to_owned(), "httpbin".to_owned())];
        assert_eq!(
            manifests.services,
            [LocalService {
                namespace: "demo".to_owned(),
                name: "httpbin".to_owned(),
                cluster_ip: Some(httpbin_ip),
                ports: vec![8000],
            }]
        );
        assert_eq!(
            manifests.namespace_labels["client"]["istio-injection"],
            "enabled"
        );
        assert_eq!(
            manifests.mesh.trust_domain.as_deref(),
            Some("cluster.local")
        );
        let pods: Vec<(String, String, bool)> = manifests
            .deployments
            .iter()
            .flat_map(|d| {
                plan::deployment_pods(
                    d,
                    &manifests.namespace_labels,
                    manifests.mesh.proxy_metadata(),
                )
                .expect("the examples run locally")
            })
            .map(|p| (p.namespace, p.name, p.sidecar))
            .collect();
        let expected = [("demo", "httpbin-0", true), ("client", "sleep-0", true)]
            .map(|(ns, name, sidecar)| (ns.to_owned(), name.to_owned(), sidecar));
        assert_eq!(pods, expected);
    }
}
