//! Istio's `ServiceEntry` (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`): hosts outside
//! (or beside) the Kubernetes registry that sidecars may call, so that under
//! `outboundTrafficPolicy: REGISTRY_ONLY` they are reachable and everything else is not.
//!
//! Each host becomes a Service in the snapshots of the namespaces it is exported to: its
//! `addresses` are captured like cluster IPs; `resolution: STATIC` balances over `endpoints`,
//! `DNS` over what the sidecar resolves their names (or, without endpoints, the host itself)
//! to, `DNS_ROUND_ROBIN` over the first address of that, and `NONE` passes connections through
//! to the address the app dialled. A host without addresses is found by the `Host` of HTTP
//! requests on a connection the registry does not know. Wildcard hosts, CIDR addresses and
//! workload selectors are refused for now, naming the field, rather than half-applied.

use std::{collections::BTreeMap, net::IpAddr};

use remora_api::proto::config as proto;
use serde::Deserialize;
use serde_json::Value;

use super::yaml;

/// A checked ServiceEntry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceEntry {
    namespace: String,
    hosts: Vec<String>,
    addresses: Vec<String>,
    ports: Vec<Port>,
    resolution: Resolution,
    endpoints: Vec<Endpoint>,
    /// Namespaces it is visible to; `None`: all.
    export_to: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Port {
    number: u16,
    name: String,
    protocol: String,
    target: Option<u16>,
}

/// How a host's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// Connections go to the address the app dialled.
    None,
    /// `endpoints` are IP addresses.
    Static,
    /// The sidecar resolves each endpoint's name; `round_robin`: only the first address is used.
    Dns { round_robin: bool },
}

#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    /// An IP address; under DNS resolution, a name to resolve too.
    address: String,
    /// Port by the ServiceEntry port's name.
    ports: BTreeMap<String, u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<SpecPort>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Vec<SpecEndpoint>,
    #[serde(default)]
    workload_selector: Option<Value>,
    #[serde(default)]
    export_to: Option<Vec<String>>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecPort {
    number: u32,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    target_port: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecEndpoint {
    address: String,
    #[serde(default)]
    ports: BTreeMap<String, u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    locality: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    service_account: Option<String>,
}

/// The API versions ServiceEntry is read in.
pub(crate) fn is_service_entry(api_version: &str, kind: &str) -> bool {
    kind == "ServiceEntry"
        && matches!(
            api_version,
            "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3"
        )
}

/// Reads a ServiceEntry in `namespace`; `Err` names every field at fault, `; `-separated.
pub(crate) fn read(value: Value, namespace: &str) -> Result<ServiceEntry, String> {
    let object: yaml::Object<Spec> = yaml::from_value(value).map_err(|e| e.to_string())?;
    let spec = object.spec;
    let mut problems = Vec::new();
    let mut unsupported = |field: &str, what: &str| {
        problems.push(format!("{field}: {what} is not supported yet"));
    };
    if spec.workload_selector.is_some() {
        unsupported(
            "spec.workloadSelector",
            "selecting workloads (WorkloadEntry)",
        );
    }
    if !spec.subject_alt_names.is_empty() {
        unsupported("spec.subjectAltNames", "TLS origination to a ServiceEntry");
    }
    let resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
        "NONE" => Resolution::None,
        "STATIC" => Resolution::Static,
        "DNS" => Resolution::Dns { round_robin: false },
        "DNS_ROUND_ROBIN" => Resolution::Dns { round_robin: true },
        other => {
            problems.push(format!(
                "spec.resolution: {other:?} is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN"
            ));
            Resolution::Static
        }
    };
    match spec.location.as_deref().unwrap_or("MESH_EXTERNAL") {
        "MESH_EXTERNAL" | "MESH_INTERNAL" => {}
        other => problems.push(format!(
            "spec.location: {other:?} is neither MESH_EXTERNAL nor MESH_INTERNAL"
        )),
    }
    if spec.hosts.is_empty() {
        problems.push("spec.hosts: required".to_owned());
    }
    let mut hosts = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        if host.contains('*') {
            problems.push(format!(
                "spec.hosts[{i}]: wildcard hosts are not supported yet"
            ));
        } else if host.is_empty() || host.parse::<IpAddr>().is_ok() || host.contains('/') {
            problems.push(format!("spec.hosts[{i}]: {host:?} is not a host name"));
        } else if hosts.contains(&host.to_ascii_lowercase()) {
            problems.push(format!("spec.hosts[{i}]: {host:?} is listed twice"));
        } else {
            hosts.push(host.to_ascii_lowercase());
        }
    }
    let mut addresses = Vec::new();
    for (i, address) in spec.addresses.iter().enumerate() {
        match address.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip.to_string()),
            Err(_) if address.contains('/') => problems.push(format!(
                "spec.addresses[{i}]: CIDR ranges are not supported yet"
            )),
            Err(_) => problems.push(format!(
                "spec.addresses[{i}]: {address:?} is not an IP address"
            )),
        }
    }
    if spec.ports.is_empty() {
        problems.push("spec.ports: required".to_owned());
    }
    let port_number = |value: u32, field: String, problems: &mut Vec<String>| {
        u16::try_from(value).ok().filter(|p| *p > 0).or_else(|| {
            problems.push(format!("{field}: {value} is not a port number"));
            None
        })
    };
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let number = port_number(
            port.number,
            format!("spec.ports[{i}].number"),
            &mut problems,
        );
        let target = port
            .target_port
            .and_then(|t| port_number(t, format!("spec.ports[{i}].targetPort"), &mut problems));
        if port.name.is_empty() {
            problems.push(format!("spec.ports[{i}].name: required"));
        }
        if ports.iter().any(|p: &Port| p.name == port.name) {
            problems.push(format!(
                "spec.ports[{i}].name: {:?} is listed twice",
                port.name
            ));
        }
        if let Some(number) = number {
            ports.push(Port {
                number,
                name: port.name.clone(),
                protocol: port.protocol.to_ascii_lowercase(),
                target,
            });
        }
    }
    if resolution == Resolution::None && !spec.endpoints.is_empty() {
        problems.push("spec.endpoints: resolution NONE takes no endpoints".to_owned());
    }
    let mut endpoints = Vec::new();
    for (e, endpoint) in spec.endpoints.iter().enumerate() {
        let field = format!("spec.endpoints[{e}]");
        if endpoint.network.is_some() || endpoint.locality.is_some() || endpoint.weight.is_some() {
            problems.push(format!(
                "{field}: network, locality and weight are not supported yet"
            ));
        }
        if !endpoint.labels.is_empty() || endpoint.service_account.is_some() {
            problems.push(format!(
                "{field}: labels and serviceAccount (mesh-internal endpoints) are not supported yet"
            ));
        }
        let address = match endpoint.address.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_)
                if matches!(resolution, Resolution::Dns { .. })
                    && is_dns_name(&endpoint.address) =>
            {
                endpoint.address.to_ascii_lowercase()
            }
            Err(_) => {
                let why = if matches!(resolution, Resolution::Dns { .. }) {
                    "is neither an IP address nor a DNS name"
                } else {
                    "is not an IP address (names need resolution DNS)"
                };
                problems.push(format!("{field}.address: {:?} {why}", endpoint.address));
                continue;
            }
        };
        let mut mapped = BTreeMap::new();
        for (name, port) in &endpoint.ports {
            if !ports.iter().any(|p| &p.name == name) {
                problems.push(format!(
                    "{field}.ports.{name}: no port of the ServiceEntry is named {name:?}"
                ));
            }
            if let Some(port) = port_number(*port, format!("{field}.ports.{name}"), &mut problems) {
                mapped.insert(name.clone(), port);
            }
        }
        endpoints.push(Endpoint {
            address,
            ports: mapped,
        });
    }
    if resolution == Resolution::Static && endpoints.is_empty() && problems.is_empty() {
        problems.push("spec.endpoints: resolution STATIC needs endpoints".to_owned());
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(ServiceEntry {
        namespace: namespace.to_owned(),
        hosts,
        addresses,
        ports,
        resolution,
        endpoints,
        export_to: spec.export_to,
    })
}

/// A name a resolver could look up: dot-separated labels of letters, digits, `-` and `_`.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Endpoint {
    /// The endpoint of ServiceEntry port `port`: its own port by the port's name, else the
    /// port's `targetPort`, else its number.
    fn to_proto(&self, port: &Port) -> proto::Endpoint {
        let target = self
            .ports
            .get(&port.name)
            .copied()
            .or(port.target)
            .unwrap_or(port.number);
        let address = match self.address.parse::<IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, target).to_string(),
            Err(_) => format!("{}:{target}", self.address),
        };
        proto::Endpoint {
            address,
            ..Default::default()
        }
    }
}

impl ServiceEntry {
    /// Whether a client in `namespace` sees it (`exportTo`: `*`, `.`, or namespace names).
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn visible_to(&self, namespace: &str) -> bool {
        self.export_to.as_ref().is_none_or(|to| {
            to.iter().any(|target| {
                target == "*"
                    || target == namespace
                    || (target == "." && self.namespace == namespace)
            })
        })
    }

    /// Its hosts as snapshot Services. Under DNS resolution without endpoints, each host is
    /// its own endpoint, resolved by the sidecar.
    pub(crate) fn services(&self) -> impl Iterator<Item = proto::Service> + '_ {
        self.hosts.iter().map(|host| {
            let own = [Endpoint {
                address: host.clone(),
                ports: BTreeMap::new(),
            }];
            let endpoints = match self.resolution {
                Resolution::Dns { .. } if self.endpoints.is_empty() => &own[..],
                _ => &self.endpoints[..],
            };
            proto::Service {
                hostname: host.clone(),
                addresses: self.addresses.clone(),
                ports: self
                    .ports
                    .iter()
                    .map(|port| proto::ServicePort {
                        port: u32::from(port.number),
                        name: port.name.clone(),
                        app_protocol: port.protocol.clone(),
                        endpoints: endpoints
                            .iter()
                            .map(|endpoint| endpoint.to_proto(port))
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                passthrough: self.resolution == Resolution::None,
                resolution: match self.resolution {
                    Resolution::Dns { round_robin: false } => "DNS",
                    Resolution::Dns { round_robin: true } => "DNS_ROUND_ROBIN",
                    Resolution::None | Resolution::Static => "",
                }
                .to_owned(),
            }
        })
    }
}

#[cfg(test)]
mod tests;
