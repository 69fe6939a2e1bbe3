//! The user's manifest directory as the launcher runs it: read by the control plane's own
//! directory reader ([`read_directories`]) into the control plane's own [`Catalog`], so the
//! launcher runs exactly the Deployments the control plane accepted (in the Namespaces it
//! accepted), records EndpointSlices for exactly the Services it accepted, and writes into
//! every pod's `/etc/hosts` the cluster IPs the sidecars receive ([`Catalog::accepted`] lists
//! them all). What the catalog rejected is not run; [`Catalog::rejected`] says why.

use std::{net::IpAddr, path::Path};

use remora_injector::config::{read_directories, well_known::namespace_of, Catalog};

use super::hosts::ServiceAddress;

/// A Service and the address pods reach it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    pub namespace: String,
    pub name: String,
    /// `None` for headless and ExternalName Services, which get no cluster IP.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<u16>,
}

/// Reads `dir` (recursively) as the control plane reads it.
pub fn load(dir: &Path) -> Catalog {
    read_directories(&[dir.to_owned()])
}

/// The accepted Services, with their cluster IPs and ports.
pub fn services(catalog: &Catalog) -> Vec<LocalService> {
    let accepted = catalog.accepted();
    accepted
        .services()
        .map(|service| {
            let namespace = namespace_of(&service.metadata).to_owned();
            let name = service.metadata.name.clone().unwrap_or_default();
            LocalService {
                cluster_ip: accepted.cluster_ip(&namespace, &name),
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
        .collect()
}

/// The Services with a cluster IP, as hosts-file entries.
pub fn service_addresses(catalog: &Catalog) -> Vec<ServiceAddress> {
    services(catalog)
        .into_iter()
        .filter_map(|s| {
            Some(ServiceAddress {
                ip: s.cluster_ip?,
                namespace: s.namespace,
                name: s.name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use remora_injector::config::cluster_ip;

    use super::*;
    use crate::plan;

    /// The repository's `examples/`, which the README demo brings up.
    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    #[test]
    fn examples_load_as_the_control_plane_reads_them() {
        let catalog = load(&examples());
        assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
        // The demo's httpbin, the zero-trust example's two teams (examples/zero-trust), and
        // the traffic example's shop (examples/traffic), the tracing collector
        // (examples/observability).
        let wanted: [(&str, &str, &[u16]); 8] = [
            ("demo", "httpbin", &[8000]),
            ("observability", "otel-collector", &[4317, 4318, 9411]),
            ("shop", "ratings", &[9080]),
            ("shop", "ratings-v1", &[9080]),
            ("shop", "ratings-v2", &[9080]),
            ("shop", "reviews", &[9080]),
            ("team-a", "httpbin", &[8000]),
            ("team-b", "httpbin", &[8000]),
        ];
        let requests = wanted.map(|(ns, name, _)| (ns, name, None));
        let ips = cluster_ip::allocate(&requests);
        let expected: Vec<LocalService> = wanted
            .iter()
            .map(|(ns, name, ports)| LocalService {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
                cluster_ip: Some(ips[&((*ns).to_owned(), (*name).to_owned())]),
                ports: ports.to_vec(),
            })
            .collect();
        assert_eq!(services(&catalog), expected);
        assert_eq!(catalog.trust_domain(), "cluster.local");
        // Every example pod is sent to the injection webhook but the collector's (its
        // namespace is not labelled for injection).
        let webhooks = crate::admission::Webhooks::of(&catalog);
        let no_labels = std::collections::BTreeMap::new();
        let pods: Vec<(String, String, bool)> = catalog
            .accepted()
            .deployments()
            .flat_map(|d| plan::deployment_pods(d).expect("the examples run locally"))
            .map(|p| {
                let namespace = catalog.accepted().namespace(&p.namespace);
                let labels = namespace.and_then(|ns| ns.metadata.labels.as_ref());
                let called = !webhooks
                    .for_pod(labels.unwrap_or(&no_labels), &p.pod)
                    .is_empty();
                (p.namespace, p.name, called)
            })
            .collect();
        let expected = [
            ("client", "sleep-0", true),
            ("demo", "httpbin-0", true),
            ("observability", "otel-collector-0", false),
            ("shop", "ratings-v1-0", true),
            ("shop", "ratings-v2-0", true),
            ("shop", "reviews-v1-0", true),
            ("shop", "reviews-v2-0", true),
            ("shop", "sleep-0", true),
            ("team-a", "curl-0", true),
            ("team-a", "httpbin-0", true),
            ("team-b", "curl-0", true),
            ("team-b", "httpbin-0", true),
        ]
        .map(|(ns, name, called)| (ns.to_owned(), name.to_owned(), called));
        assert_eq!(pods, expected);
    }
}
