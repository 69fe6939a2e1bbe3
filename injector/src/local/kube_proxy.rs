//! What kube-proxy does for a pod without a sidecar: connections to a Service's cluster IP are
//! DNATed to one of its ready endpoints, picked at random.
//!
//! A sidecar handles cluster IPs itself (its rules capture them first, as in a cluster, where
//! kube-proxy's rules run later, on the node). A pod opted out of injection has no sidecar and
//! there is no node here, so the launcher installs the equivalent rules in that pod's own
//! namespace, generated from the same EndpointSlices it records for the control plane.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, net::SocketAddr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::records::SERVICE_NAME_LABEL;

/// One Service port and where its traffic may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRoute {
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
}

/// The routes of every TCP Service port with a cluster IP (`cluster_ips`, by namespace and
/// name), to the ready endpoints in `slices` with the same port name.
pub fn routes(
    services: &[Service],
    cluster_ips: &BTreeMap<(String, String), IpAddr>,
    slices: &[EndpointSlice],
) -> Vec<ServiceRoute> {
    let mut routes = Vec::new();
    for service in services {
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let Some(cluster_ip) = cluster_ips.get(&(namespace.to_owned(), name.to_owned())) else {
            continue;
        };
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|slice| {
                slice.metadata.namespace.as_deref() == Some(namespace)
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                        .map(String::as_str)
                        == Some(name)
            })
            .collect();
        for port in service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let endpoints = own_slices
                .iter()
                .flat_map(|slice| {
                    let target = slice
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                        .and_then(|p| p.port)
                        .and_then(|p| u16::try_from(p).ok());
                    slice
                        .endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                        .flat_map(|e| e.addresses.iter())
                        .filter_map(move |address| {
                            Some(SocketAddr::new(address.parse().ok()?, target?))
                        })
                })
                .collect();
            routes.push(ServiceRoute {
                cluster_ip: *cluster_ip,
                port: number,
                endpoints,
            });
        }
    }
    routes
}

/// An `iptables-restore` nat table sending each route's traffic to one of its endpoints:
/// endpoint `i` of `n` is taken with probability `1/(n-i)` among what the earlier rules left,
/// which is uniform overall (kube-proxy's scheme).
pub fn nat_table(routes: &[ServiceRoute]) -> String {
    let mut table = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:REMORA-SERVICES - [0:0]\n-A OUTPUT -j REMORA-SERVICES\n",
    );
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
        let service: Service = serde_saphyr::from_str(
            "metadata: {name: httpbin, namespace: demo}\n\
             spec: {selector: {app: httpbin}, ports: [{name: http, port: 8000, targetPort: 8080}]}\n",
        )
        .expect("test Service");
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
        let ips = BTreeMap::from([(("demo".to_owned(), "httpbin".to_owned()), ip)]);
        let routes = routes(&[service], &ips, &[slice]);
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
    }
}
