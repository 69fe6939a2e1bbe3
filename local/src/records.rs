//! The records a cluster's controllers would write, written by the launcher instead: a Pod per
//! replica (as admission left it, with `status.podIP`) and
//! the EndpointSlices of each selecting Service, computed from those Pods the way Kubernetes'
//! EndpointSlice controller computes them. The control plane reads them from the state
//! directory exactly as it reads any other manifest.
//!
//! A replica is recorded as soon as it has an address, because its sidecar asks the control
//! plane about its own pod while starting; until its containers run it is `Pending` with
//! `Ready=False`, so its endpoints are `ready: false` and no client is sent to it, as a kubelet
//! and readiness probes keep a starting pod out of its Services.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod, PodCondition, PodIP, PodStatus, Service, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use remora_injector::config::well_known::{namespace_of, SERVICE_NAME_LABEL};

const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "remoractl.local";
/// The Pod condition a kubelet sets once every container is ready.
const READY: &str = "Ready";

/// The Pod object of a replica at `ip`, as admission left it (`admitted`): `Running` and
/// ready once `ready`, `Pending` before.
pub fn pod(admitted: &Pod, ip: IpAddr, ready: bool) -> Pod {
    Pod {
        metadata: admitted.metadata.clone(),
        spec: admitted.spec.clone(),
        status: Some(PodStatus {
            phase: Some(if ready { "Running" } else { "Pending" }.to_owned()),
            pod_ip: Some(ip.to_string()),
            pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
            conditions: Some(vec![PodCondition {
                type_: READY.to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// The EndpointSlices of `service` over `pods`: one slice per distinct set of resolved ports
/// (a named `targetPort` can resolve differently per pod), named `<service>-local`,
/// `<service>-local-1`, ... None for a Service without a selector (its slices are the
/// user's); a single empty slice when no pod matches.
pub fn endpoint_slices(service: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let namespace = namespace_of(&service.metadata);
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let service_ports = spec.ports.as_deref().unwrap_or_default();

    // In order of first appearance, so the slice named `<service>-local` holds the first pod.
    let mut groups: Vec<(Vec<ResolvedPort>, Vec<Endpoint>)> = Vec::new();
    let mut members: Vec<&Pod> = pods
        .iter()
        .filter(|pod| namespace_of(&pod.metadata) == namespace)
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect();
    members.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in members {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let ports: Vec<ResolvedPort> = service_ports
            .iter()
            .filter_map(|port| {
                let target = resolve_target_port(port, pod)?;
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
                Some((port.name.clone(), target, protocol))
            })
            .collect();
        let group = match groups.iter().position(|(p, _)| *p == ports) {
            Some(i) => i,
            None => {
                groups.push((ports, Vec::new()));
                groups.len() - 1
            }
        };
        let ready = is_ready(pod);
        groups[group].1.push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                namespace: Some(namespace.to_owned()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        });
    }
    if groups.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(match i {
                    0 => format!("{name}-local"),
                    n => format!("{name}-local-{n}"),
                }),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_owned(), name.to_owned()),
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".to_owned(),
            endpoints,
            ports: Some(
                ports
                    .into_iter()
                    .map(|(port_name, port, protocol)| EndpointPort {
                        app_protocol: service_ports
                            .iter()
                            .find(|p| p.name == port_name)
                            .and_then(|p| p.app_protocol.clone()),
                        // Kubernetes writes an unnamed (single) Service port as "".
                        name: Some(port_name.unwrap_or_default()),
                        port: Some(port),
                        protocol: Some(protocol),
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// Whether the Pod's `Ready` condition is true, which is what the EndpointSlice controller
/// copies into its endpoints' `ready`.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == READY && condition.status == "True")
}

/// A Service port as resolved for one pod: name, pod port, protocol.
type ResolvedPort = (Option<String>, i32, String);

/// The pod port a Service port sends to: a number as is (the Service port when unset, 0 or
/// empty, as Kubernetes defaults it), a name looked up among the pod's container ports of the
/// same protocol (none when absent, as Kubernetes then leaves that port out for that pod).
fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::String(name)) if name.is_empty() => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

#[cfg(test)]
mod tests;
