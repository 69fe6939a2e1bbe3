//! Whether a called webhook injects a pod, decided the way Istio's injector decides: a pure
//! function of the pod's namespace, labels, annotations and host networking and the injection
//! policy, so the rules are tested without a cluster. (Which pods the webhook is called for at
//! all is the API server's business: the `MutatingWebhookConfiguration`'s selectors.)

use std::collections::BTreeMap;

use super::policy::InjectionPolicy;

/// Pod label (or legacy annotation) opting a pod in or out.
const POD_INJECT: &str = "sidecar.istio.io/inject";
/// Namespaces Istio's injector never injects into (its `IgnoredNamespaces`).
const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Whether a called webhook injects the pod (Istio's `injectRequired`): never a `hostNetwork`
/// pod (its iptables rules would rewrite the node's routing) nor one in Kubernetes' own
/// namespaces; otherwise as the pod's label (or, without one, its legacy annotation) says,
/// read as YAML booleans are (`y`/`yes`/`true`/`on` inject, anything else but empty does not);
/// a pod that says nothing is decided by `policy` (its selectors, then `enabled`/`disabled`).
/// `Err` says why not.
pub fn required(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    host_network: bool,
    policy: &InjectionPolicy,
) -> Result<(), &'static str> {
    if host_network {
        return Err("has host networking enabled");
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Err("is in a namespace Kubernetes owns");
    }
    let selector = labels
        .get(POD_INJECT)
        .or_else(|| annotations.get(POD_INJECT))
        .map(String::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match selector.as_str() {
        "" if policy.by_default(labels) => Ok(()),
        "" => Err("is not selected by the injection policy"),
        "y" | "yes" | "true" | "on" => Ok(()),
        _ => Err("has sidecar injection disabled"),
    }
}
