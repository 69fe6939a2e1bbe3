//! Name resolution for local pods: `/etc/netns/<netns>/hosts`, which `ip netns exec` binds over
//! `/etc/hosts` for everything run in that pod. It stands in for cluster DNS: each Service's
//! `name.namespace.svc.cluster.local` (and the shorter search-path forms a pod's resolv.conf
//! would complete) maps to its cluster IP (a headless Service's to each of its ready pods, as
//! cluster DNS answers for one), and `istiod.istio-system.svc` to the control plane.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use remora_injector::config::{
    endpoints::is_slice_of,
    well_known::{namespace_of, service_hostname},
    Catalog,
};

/// Where `ip netns exec` looks for per-namespace `/etc` files.
const ETC_NETNS: &str = "/etc/netns";
/// The control plane's Service, as Istio names it (`CA_ADDR`, discovery address).
pub const CONTROL_PLANE_SERVICE: (&str, &str) = ("istio-system", "istiod");

/// A name that resolves to an address in every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddress {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
}

/// The names of the accepted headless Services (no cluster IP, not ExternalName): one entry
/// per ready address in their EndpointSlices `slices`.
pub fn headless(catalog: &Catalog, slices: &[EndpointSlice]) -> Vec<ServiceAddress> {
    let accepted = catalog.accepted();
    let mut found = Vec::new();
    for service in accepted.services() {
        let namespace = namespace_of(&service.metadata);
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let external =
            service.spec.as_ref().and_then(|spec| spec.type_.as_deref()) == Some("ExternalName");
        if external || accepted.cluster_ip(namespace, name).is_some() {
            continue;
        }
        let mut ips: Vec<IpAddr> = slices
            .iter()
            .filter(|slice| is_slice_of(slice, namespace, name))
            .flat_map(|slice| &slice.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| &e.addresses)
            .filter_map(|address| address.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        found.extend(ips.into_iter().map(|ip| ServiceAddress {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
        }));
    }
    found
}

/// The hosts file of pod `pod_name` in `pod_namespace`: localhost, the pod's own name, the
/// control plane (as Service `istiod.istio-system`) and every Service in `services`, with the
/// short `name` only for Services in the pod's namespace (as its DNS search path would).
pub fn render(
    pod_namespace: &str,
    pod_name: &str,
    pod_ip: IpAddr,
    control_plane: IpAddr,
    services: &[ServiceAddress],
) -> String {
    let mut text = format!(
        "# Pod {pod_namespace}/{pod_name}, written by the Remora local launcher.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {pod_ip}\t{pod_name}\n"
    );
    let (cp_namespace, cp_name) = CONTROL_PLANE_SERVICE;
    let control_plane = ServiceAddress {
        namespace: cp_namespace.to_owned(),
        name: cp_name.to_owned(),
        ip: control_plane,
    };
    let user = services
        .iter()
        .filter(|s| (s.namespace.as_str(), s.name.as_str()) != CONTROL_PLANE_SERVICE);
    for service in std::iter::once(&control_plane).chain(user) {
        let ServiceAddress {
            namespace,
            name,
            ip,
        } = service;
        let _ = write!(
            text,
            "{ip}\t{} {name}.{namespace}.svc {name}.{namespace}",
            service_hostname(namespace, name)
        );
        if namespace == pod_namespace {
            let _ = write!(text, " {name}");
        }
        text.push('\n');
    }
    text
}

/// `/etc/netns/<netns>/`, removed on drop.
#[derive(Debug)]
pub struct EtcNetns {
    dir: PathBuf,
}

impl EtcNetns {
    /// Creates the directory for namespace `netns` with `hosts` in it.
    pub fn create(netns: &str, hosts: &str) -> io::Result<Self> {
        let dir = Path::new(ETC_NETNS).join(netns);
        fs::create_dir_all(&dir)?;
        let etc = Self { dir };
        etc.write_hosts(hosts)?;
        Ok(etc)
    }

    /// Replaces the hosts file, in place: `ip netns exec` binds this very file (its inode)
    /// over a command's `/etc/hosts`, so running processes (a sidecar resolving ServiceEntry
    /// names, an app) see the new names as they would see cluster DNS change. The new text is
    /// written over the old, then the rest cut off, in one write each.
    pub fn write_hosts(&self, hosts: &str) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join("hosts"))?;
        file.write_all(hosts.as_bytes())?;
        file.set_len(hosts.len() as u64)
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headless_services_resolve_to_their_ready_pods() {
        let service = |name: &str, spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: data}}\nspec: {spec}\n")
        };
        let catalog = Catalog::build(vec![(
            "/m/services.yaml".to_owned(),
            [
                service(
                    "db",
                    "{clusterIP: None, selector: {app: db}, ports: [{name: tcp, port: 5432}]}",
                ),
                service(
                    "web",
                    "{clusterIP: 198.19.1.2, selector: {app: db}, ports: [{name: http, port: 80}]}",
                ),
            ]
            .join("---\n"),
        )]);
        let slice = |service: &str| -> EndpointSlice {
            serde_saphyr::from_str(&format!(
                "metadata: {{name: {service}-local, namespace: data, labels: {{kubernetes.io/service-name: {service}}}}}\n\
                 addressType: IPv4\n\
                 ports: [{{name: tcp, port: 5432}}]\n\
                 endpoints:\n\
                 \x20 - {{addresses: [198.18.0.11], conditions: {{ready: true}}}}\n\
                 \x20 - {{addresses: [198.18.0.10]}}\n\
                 \x20 - {{addresses: [198.18.0.12], conditions: {{ready: false}}}}\n",
            ))
            .expect("test EndpointSlice")
        };
        let found = headless(&catalog, &[slice("db"), slice("web")]);
        let ips: Vec<String> = found
            .iter()
            .map(|s| format!("{}/{} {}", s.namespace, s.name, s.ip))
            .collect();
        assert_eq!(ips, ["data/db 198.18.0.10", "data/db 198.18.0.11"]);
    }

    #[test]
    fn services_resolve_by_every_name_a_pod_would_use() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test IP");
        let services = [
            ServiceAddress {
                namespace: "demo".to_owned(),
                name: "httpbin".to_owned(),
                ip: ip("198.19.1.2"),
            },
            ServiceAddress {
                namespace: "client".to_owned(),
                name: "sleep".to_owned(),
                ip: ip("198.19.3.4"),
            },
            // A user's own istiod Service never shadows the control plane.
            ServiceAddress {
                namespace: "istio-system".to_owned(),
                name: "istiod".to_owned(),
                ip: ip("198.19.9.9"),
            },
        ];
        let hosts = render(
            "client",
            "sleep-0",
            ip("198.18.0.11"),
            ip("198.18.0.2"),
            &services,
        );
        let lines: Vec<&str> = hosts.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                "198.18.0.11\tsleep-0",
                "198.18.0.2\tistiod.istio-system.svc.cluster.local istiod.istio-system.svc istiod.istio-system",
                "198.19.1.2\thttpbin.demo.svc.cluster.local httpbin.demo.svc httpbin.demo",
                "198.19.3.4\tsleep.client.svc.cluster.local sleep.client.svc sleep.client sleep",
            ]
        );
    }
}
