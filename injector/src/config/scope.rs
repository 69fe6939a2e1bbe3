//! Istio's `Sidecar` resource (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`): which Services
//! a sidecar is sent (`egress[].hosts`), and its `outboundTrafficPolicy`. In a big mesh most
//! workloads call a handful of Services; scoping them keeps each sidecar's config, and every
//! push to it, the size of what it calls rather than of the mesh.
//!
//! Which Sidecar applies to a pod is Istio's choice: one of its namespace whose
//! `workloadSelector` matches the pod's labels, else its namespace's Sidecar without a
//! selector, else the root namespace's (the mesh-wide default), else none (every Service
//! exported to the namespace). Several candidates: the oldest wins, then by name.
//!
//! A Service is in scope when a host of an egress listener matches it, `NAMESPACE/DNSNAME`:
//! `NAMESPACE` is `*` (any), `.` (the workload's own, which for a Sidecar of the root
//! namespace is each workload's), `~` (none) or a name; `DNSNAME` is `*`,
//! `*.SUFFIX` or a full name. The Services that a Service in scope routes or mirrors to are in
//! scope too (as Istio adds a VirtualService's destinations), or its routes could not be
//! followed. Listener fields Remora does not act on (`ingress`, an egress `port`, `bind`,
//! `captureMode`) are refused naming the field rather than half-applied.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use super::yaml;

/// Whether `api_version` `kind` is a Sidecar read here.
pub(crate) fn is_sidecar(api_version: &str, kind: &str) -> bool {
    kind == "Sidecar"
        && matches!(
            api_version,
            "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3"
        )
}

/// A checked Sidecar.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scope {
    namespace: String,
    name: String,
    created: Option<Timestamp>,
    selector: Option<BTreeMap<String, String>>,
    hosts: Vec<Host>,
    /// `outboundTrafficPolicy.mode`, when set.
    pub(crate) outbound_policy: Option<String>,
}

/// One `NAMESPACE/DNSNAME` of `egress[].hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    namespace: Namespaces,
    name: Name,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Namespaces {
    Any,
    None,
    /// `.`: the namespace of the workload it applies to (a root namespace Sidecar applies
    /// to workloads of every namespace).
    Own,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Any,
    /// `*.SUFFIX`: the suffix with its dot.
    Suffix(String),
    Exact(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    workload_selector: Option<Selector>,
    #[serde(default)]
    ingress: Option<Vec<Value>>,
    #[serde(default)]
    egress: Option<Vec<Egress>>,
    #[serde(default)]
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(default)]
    inbound_connection_pool: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Egress {
    #[serde(default)]
    port: Option<Value>,
    #[serde(default)]
    bind: Option<String>,
    #[serde(default)]
    capture_mode: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OutboundTrafficPolicy {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    egress_proxy: Option<Value>,
}

/// Reads a Sidecar `namespace/name`; `Err` names every field at fault, `; `-separated.
pub(crate) fn read(value: Value, namespace: &str, name: &str) -> Result<Scope, String> {
    let object: yaml::Object<Spec> = yaml::from_value(value).map_err(|e| e.to_string())?;
    let spec = object.spec;
    let mut problems = Vec::new();
    let unsupported = |problems: &mut Vec<String>, field: &str, what: &str| {
        problems.push(format!("{field}: {what} is not supported yet"));
    };
    if spec.ingress.as_ref().is_some_and(|i| !i.is_empty()) {
        unsupported(
            &mut problems,
            "spec.ingress",
            "configuring inbound listeners",
        );
    }
    if spec.inbound_connection_pool.is_some() {
        unsupported(
            &mut problems,
            "spec.inboundConnectionPool",
            "an inbound connection pool",
        );
    }
    let mut hosts = Vec::new();
    let egress = spec.egress.unwrap_or_default();
    for (e, listener) in egress.iter().enumerate() {
        let at = format!("spec.egress[{e}]");
        if listener.port.is_some() {
            unsupported(
                &mut problems,
                &format!("{at}.port"),
                "an egress listener on one port",
            );
        }
        if listener.bind.is_some() {
            unsupported(
                &mut problems,
                &format!("{at}.bind"),
                "binding an egress listener",
            );
        }
        if listener.capture_mode.is_some() {
            unsupported(
                &mut problems,
                &format!("{at}.captureMode"),
                "a capture mode",
            );
        }
        if listener.hosts.is_empty() {
            problems.push(format!("{at}.hosts: required"));
        }
        for (h, text) in listener.hosts.iter().enumerate() {
            match host(text) {
                Ok(found) => hosts.push(found),
                Err(reason) => problems.push(format!("{at}.hosts[{h}]: {reason}")),
            }
        }
    }
    // Istio: a Sidecar without egress listeners sees every Service (`*/*`).
    if egress.is_empty() {
        hosts.push(Host {
            namespace: Namespaces::Any,
            name: Name::Any,
        });
    }
    let outbound_policy = match spec.outbound_traffic_policy {
        None => None,
        Some(policy) => {
            if policy.egress_proxy.is_some() {
                problems.push(
                    "spec.outboundTrafficPolicy.egressProxy: an egress proxy is not supported yet"
                        .to_owned(),
                );
            }
            match policy.mode.as_deref() {
                None => None,
                Some(mode @ ("ALLOW_ANY" | "REGISTRY_ONLY")) => Some(mode.to_owned()),
                Some(other) => {
                    problems.push(format!(
                        "spec.outboundTrafficPolicy.mode: {other:?} is neither ALLOW_ANY nor REGISTRY_ONLY"
                    ));
                    None
                }
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(Scope {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        created: object.metadata.creation_timestamp.map(|t| t.0),
        selector: spec.workload_selector.map(|s| s.labels),
        hosts,
        outbound_policy,
    })
}

/// One `NAMESPACE/DNSNAME`.
fn host(text: &str) -> Result<Host, String> {
    let Some((ns, dns)) = text.split_once('/') else {
        return Err(format!("{text:?} is not NAMESPACE/DNSNAME"));
    };
    let namespace = match ns {
        "*" => Namespaces::Any,
        "~" => Namespaces::None,
        "." => Namespaces::Own,
        "" => return Err(format!("{text:?} names no namespace")),
        other if other.contains(['*', '/']) => {
            return Err(format!("{text:?}: {other:?} is not a namespace"))
        }
        other => Namespaces::Named(other.to_owned()),
    };
    let dns = dns.to_ascii_lowercase();
    let name = if dns == "*" {
        Name::Any
    } else if let Some(suffix) = dns.strip_prefix('*') {
        if !suffix.starts_with('.') || suffix.contains('*') {
            return Err(format!("{text:?}: a wildcard is `*` or `*.SUFFIX`"));
        }
        Name::Suffix(suffix.to_owned())
    } else if dns.is_empty() || dns.contains(['*', '/']) {
        return Err(format!("{text:?}: {dns:?} is not a host name"));
    } else {
        Name::Exact(dns)
    };
    Ok(Host { namespace, name })
}

impl Scope {
    /// Its `namespace/name`.
    pub(crate) fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// Whether a Service `hostname` of `namespace` is in scope for a workload of
    /// `workload_namespace`.
    pub(crate) fn includes(
        &self,
        workload_namespace: &str,
        namespace: &str,
        hostname: &str,
    ) -> bool {
        self.hosts.iter().any(|host| {
            let in_namespace = match &host.namespace {
                Namespaces::Any => true,
                Namespaces::None => false,
                Namespaces::Own => namespace == workload_namespace,
                Namespaces::Named(name) => name == namespace,
            };
            in_namespace
                && match &host.name {
                    Name::Any => true,
                    Name::Suffix(suffix) => hostname.ends_with(suffix.as_str()),
                    Name::Exact(name) => name == hostname,
                }
        })
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// Istio's order among candidates: the oldest first (one without a creation time counts
    /// as the oldest), then by name.
    fn precedes(&self, other: &Scope) -> bool {
        (self.created, &self.name) < (other.created, &other.name)
    }
}

/// The Sidecar that applies to a pod of `namespace` with `labels`, among `scopes`.
pub(crate) fn select<'s>(
    scopes: impl IntoIterator<Item = &'s Scope>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<&'s Scope> {
    let (mut selecting, mut own, mut root): (Option<&Scope>, Option<&Scope>, Option<&Scope>) =
        (None, None, None);
    let oldest = |best: &mut Option<&'s Scope>, candidate: &'s Scope| {
        if best.is_none_or(|b| candidate.precedes(b)) {
            *best = Some(candidate);
        }
    };
    for scope in scopes {
        match (&scope.selector, scope.namespace == namespace) {
            (Some(_), true) if scope.selects(labels) => oldest(&mut selecting, scope),
            (None, true) => oldest(&mut own, scope),
            (None, false) if scope.namespace == root_namespace => oldest(&mut root, scope),
            _ => {}
        }
    }
    selecting.or(own).or(root)
}

#[cfg(test)]
mod tests;
