//! Whether a pod gets a sidecar, decided the way Istio's injection webhook decides: a pure
//! function of the pod's namespace and labels, annotations and host networking, so the rules
//! are tested without a cluster. (The sidecar's environment, `proxyMetadata`, comes from the
//! control plane's own mesh config: [`Accepted::sidecar_config`].)
//!
//! [`Accepted::sidecar_config`]: crate::config::Accepted::sidecar_config

use std::collections::BTreeMap;

use super::policy::InjectionPolicy;

/// Namespace label turning injection on (`enabled`) or off (`disabled`) for its pods.
pub const NAMESPACE_INJECTION_LABEL: &str = "istio-injection";
/// Namespace (or, in a namespace without injection labels, pod) label selecting a
/// control-plane revision, which also turns injection on.
pub const NAMESPACE_REVISION_LABEL: &str = "istio.io/rev";
/// The only revision there is here: Istio's default one.
const DEFAULT_REVISION: &str = "default";
/// Pod label (or legacy annotation) opting a pod in or out.
pub const POD_INJECT: &str = "sidecar.istio.io/inject";
/// Namespaces Istio's injector never injects into (its `IgnoredNamespaces`).
const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// A pod as the injection webhook sees it: what its decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub host_network: bool,
}

/// Istio's decision, in its two stages: whether one of the default revision's webhooks is
/// called for the pod ([`webhook_selects`]), then whether the webhook injects it
/// ([`required`]).
pub fn wants_sidecar(pod: Candidate<'_>) -> bool {
    webhook_selects(pod.namespace_labels, pod.labels)
        && required(
            pod.namespace,
            pod.labels,
            pod.annotations,
            pod.host_network,
            &InjectionPolicy::default(),
        )
        .is_ok()
}

/// Whether the default revision's webhook configuration selects a pod with `labels` in a
/// namespace with `namespace_labels`: in a namespace labelled `istio-injection=enabled` (or,
/// without that label, `istio.io/rev=default`) unless the pod label says `false`; in a
/// namespace with neither label, a pod labelled `sidecar.istio.io/inject=true` (or revision
/// `default`, unless `inject=false`). A namespace labelled anything else (`disabled`, another
/// revision) gets no sidecars from it.
pub fn webhook_selects(
    namespace_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let pod_label = labels.get(POD_INJECT).map(String::as_str);
    match namespace_labels.get(NAMESPACE_INJECTION_LABEL) {
        Some(value) => value == "enabled" && pod_label != Some("false"),
        None => match namespace_labels.get(NAMESPACE_REVISION_LABEL) {
            Some(revision) => revision == DEFAULT_REVISION && pod_label != Some("false"),
            None => match labels.get(NAMESPACE_REVISION_LABEL).map(String::as_str) {
                None => pod_label == Some("true"),
                Some(revision) => revision == DEFAULT_REVISION && pod_label != Some("false"),
            },
        },
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn injection_follows_istio_webhook_selectors() {
        let enabled = [(NAMESPACE_INJECTION_LABEL, "enabled")];
        let disabled = [(NAMESPACE_INJECTION_LABEL, "disabled")];
        let revision = [(NAMESPACE_REVISION_LABEL, "default")];
        let canary = [(NAMESPACE_REVISION_LABEL, "canary")];
        let enabled_and_canary = [
            (NAMESPACE_INJECTION_LABEL, "enabled"),
            (NAMESPACE_REVISION_LABEL, "canary"),
        ];
        let yes = [(POD_INJECT, "true")];
        let no = [(POD_INJECT, "false")];
        let pod_default_revision = [(NAMESPACE_REVISION_LABEL, "default")];
        let pod_default_revision_no =
            [(NAMESPACE_REVISION_LABEL, "default"), (POD_INJECT, "false")];
        let pod_canary_yes = [(NAMESPACE_REVISION_LABEL, "canary"), (POD_INJECT, "true")];
        // (what, namespace, its labels, pod labels, pod annotations, hostNetwork, injected)
        let cases: &[(&str, &str, Pairs, Pairs, Pairs, bool, bool)] = &[
            ("unlabelled namespace", "demo", &[], &[], &[], false, false),
            ("enabled namespace", "demo", &enabled, &[], &[], false, true),
            (
                "enabled namespace, pod label false",
                "demo",
                &enabled,
                &no,
                &[],
                false,
                false,
            ),
            (
                "enabled namespace, pod annotation false",
                "demo",
                &enabled,
                &[],
                &no,
                false,
                false,
            ),
            (
                "disabled namespace",
                "demo",
                &disabled,
                &[],
                &[],
                false,
                false,
            ),
            (
                "disabled namespace wins over pod label",
                "demo",
                &disabled,
                &yes,
                &[],
                false,
                false,
            ),
            ("pod label true alone", "demo", &[], &yes, &[], false, true),
            (
                "pod revision default alone",
                "demo",
                &[],
                &pod_default_revision,
                &[],
                false,
                true,
            ),
            (
                "pod revision default, label false",
                "demo",
                &[],
                &pod_default_revision_no,
                &[],
                false,
                false,
            ),
            (
                "pod label true with another revision",
                "demo",
                &[],
                &pod_canary_yes,
                &[],
                false,
                false,
            ),
            (
                "pod annotation true alone does not call the webhook",
                "demo",
                &[],
                &[],
                &yes,
                false,
                false,
            ),
            (
                "the pod label wins over the annotation",
                "demo",
                &[],
                &yes,
                &no,
                false,
                true,
            ),
            (
                "default revision label",
                "demo",
                &revision,
                &[],
                &[],
                false,
                true,
            ),
            (
                "default revision label, pod label false",
                "demo",
                &revision,
                &no,
                &[],
                false,
                false,
            ),
            (
                "another revision: no such webhook here",
                "demo",
                &canary,
                &[],
                &[],
                false,
                false,
            ),
            (
                "another revision, pod label true: that revision's business",
                "demo",
                &canary,
                &yes,
                &[],
                false,
                false,
            ),
            (
                "istio-injection wins over the revision label",
                "demo",
                &enabled_and_canary,
                &[],
                &[],
                false,
                true,
            ),
            ("hostNetwork pod", "demo", &enabled, &[], &[], true, false),
            (
                "hostNetwork pod, pod label true",
                "demo",
                &[],
                &yes,
                &[],
                true,
                false,
            ),
            (
                "kube-system",
                "kube-system",
                &enabled,
                &[],
                &[],
                false,
                false,
            ),
            (
                "kube-public, pod label true",
                "kube-public",
                &[],
                &yes,
                &[],
                false,
                false,
            ),
        ];
        for (what, namespace, ns, labels, annotations, host_network, expected) in cases {
            let (namespace_labels, labels, annotations) = (map(ns), map(labels), map(annotations));
            let pod = Candidate {
                namespace,
                namespace_labels: &namespace_labels,
                labels: &labels,
                annotations: &annotations,
                host_network: *host_network,
            };
            assert_eq!(wants_sidecar(pod), *expected, "{what}");
        }
    }
}
