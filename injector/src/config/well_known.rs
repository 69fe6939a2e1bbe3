//! Names and defaults that Kubernetes and Istio fix, spelled once. The control plane reads them
//! and the local launcher writes them (records, hosts files, injected pods), so two spellings
//! could drift apart and silently drop objects on the floor.

use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};

/// The namespace of an object that names none, as `kubectl` assumes.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The service account of a pod that names none, as the API server fills it in.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Set by Istio's injector (or the local launcher) on every pod that got a sidecar.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// A pod's `ProxyConfig` overrides (YAML or JSON).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// A file with this name holds a bare `MeshConfig`, not Kubernetes objects.
pub const MESH_FILE: &str = "mesh.yaml";
/// The injection values beside it in a config directory: what the `values` key of Istio's
/// `istio-sidecar-injector` ConfigMap holds.
pub const INJECTION_FILE: &str = "injection.yaml";
/// The cluster's DNS domain; Service hostnames live under `svc.<domain>` whatever the trust
/// domain is.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// An object's namespace, [`DEFAULT_NAMESPACE`] when it names none.
pub fn namespace_of(metadata: &ObjectMeta) -> &str {
    metadata
        .namespace
        .as_deref()
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// The service account a pod runs as: `serviceAccountName`, else the deprecated
/// `serviceAccount` it replaced, else [`DEFAULT_SERVICE_ACCOUNT`] (an empty name is unset).
pub fn service_account_of(spec: &PodSpec) -> &str {
    [&spec.service_account_name, &spec.service_account]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .find(|name| !name.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
}

/// A Service's fully qualified name, `<name>.<namespace>.svc.cluster.local`.
pub fn service_hostname(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_defaults() {
        let cases = [
            (None, None, "default"),
            (Some(""), None, "default"),
            (Some(""), Some(""), "default"),
            (Some("httpbin"), None, "httpbin"),
            (None, Some("legacy"), "legacy"),
            (Some(""), Some("legacy"), "legacy"),
            (Some("httpbin"), Some("legacy"), "httpbin"),
        ];
        for (name, legacy, expected) in cases {
            let spec = PodSpec {
                service_account_name: name.map(str::to_owned),
                service_account: legacy.map(str::to_owned),
                ..PodSpec::default()
            };
            assert_eq!(service_account_of(&spec), expected, "{name:?} {legacy:?}");
        }
    }

    #[test]
    fn namespace_defaults() {
        let meta = |namespace: Option<&str>| ObjectMeta {
            namespace: namespace.map(str::to_owned),
            ..ObjectMeta::default()
        };
        assert_eq!(namespace_of(&meta(None)), "default");
        assert_eq!(namespace_of(&meta(Some(""))), "default");
        assert_eq!(namespace_of(&meta(Some("demo"))), "demo");
    }
}
