//! Which addresses serve a Service port, read from the Service's EndpointSlices. The control
//! plane puts them in every sidecar's snapshot and the local launcher's stand-in for
//! kube-proxy sends a sidecar-less pod's traffic to them, so both must pick exactly the same
//! endpoints: this is the one place that decides.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::ServicePort,
    discovery::v1::{Endpoint, EndpointSlice},
};

use super::well_known::{namespace_of, SERVICE_NAME_LABEL};

/// Whether `slice` is one of Service `namespace/name`'s (by its `kubernetes.io/service-name`
/// label, in the Service's namespace).
pub fn is_slice_of(slice: &EndpointSlice, namespace: &str, name: &str) -> bool {
    service_of(slice) == Some((namespace, name))
}

/// The Service `(namespace, name)` whose slice `slice` is, by its `kubernetes.io/service-name`
/// label; `None` without one.
pub fn service_of(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((namespace_of(&slice.metadata), service))
}

/// The ready `ip:port`s behind Service port `port` among `slices` (the Service's own): in each
/// IP slice, the port of the same name (or the slice's only port when the Service port is
/// unnamed), at every endpoint not marked unready (an unset `ready` means ready, as
/// Kubernetes documents for consumers).
pub fn ready_endpoints<'a>(
    port: &ServicePort,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<SocketAddr> {
    endpoints_where(port, slices, |endpoint| {
        endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true)
    })
}

/// Every `ip:port` behind Service port `port` among `slices`, ready or not: the workload
/// ports the Service port stands for (its `targetPort`, resolved by the slices' controller).
pub fn all_endpoints<'a>(
    port: &ServicePort,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<SocketAddr> {
    endpoints_where(port, slices, |_| true)
}

/// The `ip:port`s behind Service port `port` among `slices`, at the endpoints `wanted` keeps.
fn endpoints_where<'a>(
    port: &ServicePort,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    wanted: fn(&Endpoint) -> bool,
) -> BTreeSet<SocketAddr> {
    let name = port.name.as_deref().unwrap_or_default();
    let mut found = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let matched = slice_ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == name)
            .or(match slice_ports {
                [only] if name.is_empty() => Some(only),
                _ => None,
            });
        let Some(number) = matched
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        found.extend(
            slice
                .endpoints
                .iter()
                .filter(|e| wanted(e))
                .flat_map(|e| e.addresses.iter())
                .filter_map(|address| address.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, number)),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(yaml: &str) -> EndpointSlice {
        serde_saphyr::from_str(yaml).expect("test EndpointSlice")
    }

    fn port(name: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            port: 8000,
            ..ServicePort::default()
        }
    }

    fn addresses(found: BTreeSet<SocketAddr>) -> Vec<String> {
        found.into_iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn slices_belong_to_their_service_by_label_and_namespace() {
        let labelled = slice(
            "metadata: {name: a, namespace: demo, labels: {kubernetes.io/service-name: httpbin}}\n\
             addressType: IPv4\nendpoints: []\n",
        );
        assert!(is_slice_of(&labelled, "demo", "httpbin"));
        assert!(!is_slice_of(&labelled, "other", "httpbin"));
        assert!(!is_slice_of(&labelled, "demo", "reviews"));
        let defaulted = slice(
            "metadata: {name: a, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nendpoints: []\n",
        );
        assert!(is_slice_of(&defaulted, "default", "web"));
    }

    #[test]
    fn ready_endpoints_by_port_name() {
        let named = slice(
            "metadata: {name: a}\naddressType: IPv4\n\
             ports: [{name: http, port: 8080}, {name: admin, port: 9901}]\n\
             endpoints:\n\
             \x20 - {addresses: [198.18.0.10], conditions: {ready: true}}\n\
             \x20 - {addresses: [198.18.0.11]}\n\
             \x20 - {addresses: [198.18.0.12], conditions: {ready: false}}\n",
        );
        let single = slice(
            "metadata: {name: b}\naddressType: IPv6\nports: [{name: '', port: 80}]\n\
             endpoints: [{addresses: ['2001:2::a']}]\n",
        );
        let fqdn = slice(
            "metadata: {name: c}\naddressType: FQDN\nports: [{name: http, port: 80}]\n\
             endpoints: [{addresses: [example.com]}]\n",
        );
        let all = [&named, &single, &fqdn];
        assert_eq!(
            addresses(ready_endpoints(&port(Some("http")), all)),
            ["198.18.0.10:8080", "198.18.0.11:8080"]
        );
        assert_eq!(
            addresses(ready_endpoints(&port(Some("admin")), all)),
            ["198.18.0.10:9901", "198.18.0.11:9901"]
        );
        // Unnamed: the slice's only port (here also the unnamed one).
        assert_eq!(
            addresses(ready_endpoints(&port(None), all)),
            ["[2001:2::a]:80"]
        );
        assert!(ready_endpoints(&port(Some("grpc")), all).is_empty());
        assert_eq!(
            addresses(all_endpoints(&port(Some("http")), all)),
            ["198.18.0.10:8080", "198.18.0.11:8080", "198.18.0.12:8080"]
        );
    }
}
