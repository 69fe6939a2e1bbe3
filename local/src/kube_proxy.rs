//! What kube-proxy does for a pod without a sidecar: connections to a Service's cluster IP are
//! DNATed to one of its ready endpoints, picked at random.
//!
//! A sidecar handles cluster IPs itself (its rules capture them first, as in a cluster, where
//! kube-proxy's rules run later, on the node), except its own connections to one (`PASSTHROUGH`
//! balancing). There is no node here, so the launcher installs the equivalent rules in every
//! pod's own namespace (after the capture rules in a pod with a sidecar), generated from the
//! same EndpointSlices it records for the control plane.

use std::{fmt::Write as _, net::IpAddr, net::SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use remora_injector::config::{
    endpoints::{is_slice_of, ready_endpoints},
    well_known::namespace_of,
    Catalog,
};

/// One Service port and where its traffic may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRoute {
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
}

/// The routes of every TCP port of every Service in `catalog` with a cluster IP, to the ready
/// endpoints `slices` give it (picked exactly as the control plane picks them for sidecars).
pub fn routes(catalog: &Catalog, slices: &[EndpointSlice]) -> Vec<ServiceRoute> {
    let accepted = catalog.accepted();
    let mut routes = Vec::new();
    for service in accepted.services() {
        let namespace = namespace_of(&service.metadata);
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let Some(cluster_ip) = accepted.cluster_ip(namespace, name) else {
            continue;
        };
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|slice| is_slice_of(slice, namespace, name))
            .collect();
        for port in service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            routes.push(ServiceRoute {
                cluster_ip,
                port: number,
                endpoints: ready_endpoints(port, own_slices.iter().copied())
                    .into_iter()
                    .collect(),
            });
        }
    }
    routes
}

/// The rule sending a pod's outgoing connections to the Service rules.
const JUMP: &str = "-A OUTPUT -j REMORA-SERVICES\n";

/// `table` without its jump, for `iptables-restore --noflush` into a pod that has it already
/// (the chain is emptied and refilled; nothing else is touched).
pub fn without_jump(table: &str) -> String {
    table.replacen(JUMP, "", 1)
}

/// An `iptables-restore` nat table sending each route's traffic to one of its endpoints:
/// endpoint `i` of `n` is taken with probability `1/(n-i)` among what the earlier rules left,
/// which is uniform overall (kube-proxy's scheme).
pub fn nat_table(routes: &[ServiceRoute]) -> String {
    let mut table = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:REMORA-SERVICES - [0:0]\n",
    );
    table.push_str(JUMP);
    for route in routes.iter().filter(|r| r.cluster_ip.is_ipv4()) {
        let count = route.endpoints.len();
        for (i, endpoint) in route.endpoints.iter().enumerate() {
            let _ = write!(
                table,
                "-A REMORA-SERVICES -d {}/32 -p tcp -m tcp --dport {}",
                route.cluster_ip, route.port
            );
            let remaining = count - i;
            if remaining > 1 {
                let _ = write!(
                    table,
                    " -m statistic --mode random --probability {:.5}",
                    1.0 / remaining as f64
                );
            }
            let _ = writeln!(table, " -j DNAT --to-destination {endpoint}");
        }
    }
    table.push_str("COMMIT\n");
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_slices_by_port_name_and_spread_uniformly() {
        let catalog = Catalog::build(vec![(
            "/m/httpbin.yaml".to_owned(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: demo}\n\
             spec:\n  clusterIP: 198.19.1.2\n  selector: {app: httpbin}\n  \
             ports: [{name: http, port: 8000, targetPort: 8080}]\n"
                .to_owned(),
        )]);
        let slice: EndpointSlice = serde_saphyr::from_str(
            "metadata: {name: httpbin-local, namespace: demo, labels: {kubernetes.io/service-name: httpbin}}\n\
             addressType: IPv4\n\
             ports: [{name: http, port: 8080}]\n\
             endpoints:\n\
             \x20 - {addresses: [198.18.0.10], conditions: {ready: true}}\n\
             \x20 - {addresses: [198.18.0.11]}\n\
             \x20 - {addresses: [198.18.0.12], conditions: {ready: false}}\n",
        )
        .expect("test EndpointSlice");
        let ip: IpAddr = "198.19.1.2".parse().expect("test IP");
        let routes = routes(&catalog, &[slice]);
        let endpoint = |s: &str| s.parse::<SocketAddr>().expect("test address");
        assert_eq!(
            routes,
            [ServiceRoute {
                cluster_ip: ip,
                port: 8000,
                endpoints: vec![endpoint("198.18.0.10:8080"), endpoint("198.18.0.11:8080")],
            }]
        );
        let table = nat_table(&routes);
        let rules: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("-A REMORA"))
            .collect();
        assert_eq!(
            rules,
            [
                "-A REMORA-SERVICES -d 198.19.1.2/32 -p tcp -m tcp --dport 8000 -m statistic \
                 --mode random --probability 0.50000 -j DNAT --to-destination 198.18.0.10:8080",
                "-A REMORA-SERVICES -d 198.19.1.2/32 -p tcp -m tcp --dport 8000 -j DNAT \
                 --to-destination 198.18.0.11:8080",
            ]
        );
        assert!(table.ends_with("COMMIT\n"));
        let update = without_jump(&table);
        assert!(!update.contains("-A OUTPUT"), "{update}");
        assert_eq!(update.lines().count(), table.lines().count() - 1);
    }
}
