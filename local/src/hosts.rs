//! Name resolution for local pods: `/etc/netns/<netns>/hosts`, which `ip netns exec` binds over
//! `/etc/hosts` for everything run in that pod. It stands in for cluster DNS: each Service's
//! `name.namespace.svc.cluster.local` (and the shorter search-path forms a pod's resolv.conf
//! would complete) maps to its cluster IP, and `istiod.istio-system.svc` to the control plane.

use std::{
    fmt::Write as _,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use remora_injector::config::well_known::service_hostname;

use super::files::write_atomic;

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

    /// Replaces the hosts file; commands started afterwards see the new one.
    pub fn write_hosts(&self, hosts: &str) -> io::Result<()> {
        write_atomic(&self.dir.join("hosts"), hosts.as_bytes())
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
