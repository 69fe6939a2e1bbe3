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

    /// Istio's `injectRequired`, for a pod the webhook was called for.
    #[test]
    fn a_called_webhook_injects_as_istio_decides() {
        let yes = [(POD_INJECT, "true")];
        let no = [(POD_INJECT, "false")];
        let on = [(POD_INJECT, "On")];
        // (what, namespace, pod labels, pod annotations, hostNetwork, injected)
        let cases: &[(&str, &str, Pairs, Pairs, bool, bool)] = &[
            ("a pod that says nothing", "demo", &[], &[], false, true),
            ("pod label false", "demo", &no, &[], false, false),
            ("pod annotation false", "demo", &[], &no, false, false),
            (
                "the label wins over the annotation",
                "demo",
                &yes,
                &no,
                false,
                true,
            ),
            ("YAML booleans count", "demo", &on, &[], false, true),
            ("hostNetwork", "demo", &[], &[], true, false),
            ("hostNetwork, label true", "demo", &yes, &[], true, false),
            ("kube-system", "kube-system", &[], &[], false, false),
            (
                "kube-public, label true",
                "kube-public",
                &yes,
                &[],
                false,
                false,
            ),
        ];
        for (what, namespace, labels, annotations, host_network, expected) in cases {
            let decided = required(
                namespace,
                &map(labels),
                &map(annotations),
                *host_network,
                &InjectionPolicy::default(),
            );
            assert_eq!(decided.is_ok(), *expected, "{what}: {decided:?}");
        }
    }
}
