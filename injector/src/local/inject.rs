//! Whether a pod gets a sidecar, and the environment Istio's injection template gives it,
//! decided the way Istio's injection webhook decides (pure functions of labels and
//! annotations, so the rules are tested without a cluster).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Namespace label turning injection on (`enabled`) or off (`disabled`) for its pods.
pub const NAMESPACE_INJECTION_LABEL: &str = "istio-injection";
/// Namespace label selecting a control-plane revision, which also turns injection on.
pub const NAMESPACE_REVISION_LABEL: &str = "istio.io/rev";
/// Pod label (or legacy annotation) opting a pod in or out.
pub const POD_INJECT: &str = "sidecar.istio.io/inject";
/// Pod annotation holding `ProxyConfig` overrides, including `proxyMetadata` (sidecar env).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

/// Istio's decision. The webhook is called for pods in a namespace labelled
/// `istio-injection=enabled` (or with a revision label and no `istio-injection` label) unless
/// the pod label says `false`, and for pods labelled `sidecar.istio.io/inject=true` in
/// namespaces with neither label; a namespace labelled anything else (`disabled`) gets no
/// sidecars at all. A called webhook then reads the pod's label (or, without one, its legacy
/// annotation) as YAML booleans do: empty means the default (inject), `y`/`yes`/`true`/`on`
/// inject, anything else does not.
pub fn wants_sidecar(
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
) -> bool {
    let pod_label = pod_labels.get(POD_INJECT).map(String::as_str);
    let webhook_called = match namespace_labels.get(NAMESPACE_INJECTION_LABEL) {
        Some(value) => value == "enabled" && pod_label != Some("false"),
        None if namespace_labels.contains_key(NAMESPACE_REVISION_LABEL) => {
            pod_label != Some("false")
        }
        None => pod_label == Some("true"),
    };
    let selector = pod_label
        .or_else(|| pod_annotations.get(POD_INJECT).map(String::as_str))
        .unwrap_or_default()
        .to_ascii_lowercase();
    webhook_called && matches!(selector.as_str(), "" | "y" | "yes" | "true" | "on")
}

#[derive(Debug, thiserror::Error)]
#[error("annotation {PROXY_CONFIG_ANNOTATION}: {0}")]
pub struct ProxyConfigError(String);

/// The part of a `ProxyConfig` the injection template turns into sidecar environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ProxyMetadata {
    proxy_metadata: BTreeMap<String, String>,
}

/// The extra environment for a pod's sidecar: the mesh's `defaultConfig.proxyMetadata`
/// (`mesh_default`) overridden key by key by the pod's `proxy.istio.io/config` annotation, as
/// Istio's injection template renders `proxyMetadata` into `istio-proxy`'s env.
pub fn sidecar_env(
    mesh_default: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProxyConfigError> {
    let mut env = mesh_default.clone();
    if let Some(text) = pod_annotations.get(PROXY_CONFIG_ANNOTATION) {
        env.extend(proxy_metadata(text)?);
    }
    Ok(env)
}

#[derive(Debug, thiserror::Error)]
#[error("mesh config: {0}")]
pub struct MeshError(String);

/// The mesh-wide defaults a `mesh.yaml` (Istio `MeshConfig`) gives the launcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshDefaults {
    /// `trustDomain`, when set.
    pub trust_domain: Option<String>,
    #[serde(rename = "defaultConfig")]
    default_config: ProxyMetadata,
}

impl MeshDefaults {
    /// Reads the fields the launcher needs from a `mesh.yaml`; the control plane validates the
    /// rest (and reports what it rejects).
    pub fn parse(text: &str) -> Result<Self, MeshError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| MeshError(e.to_string()))
    }

    /// `defaultConfig.proxyMetadata`: environment for every sidecar.
    pub fn proxy_metadata(&self) -> &BTreeMap<String, String> {
        &self.default_config.proxy_metadata
    }
}

/// `proxyMetadata` of a `ProxyConfig` document (YAML or JSON); empty when it has none.
pub fn proxy_metadata(text: &str) -> Result<BTreeMap<String, String>, ProxyConfigError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let config: ProxyMetadata =
        serde_saphyr::from_str(text).map_err(|e| ProxyConfigError(e.to_string()))?;
    Ok(config.proxy_metadata)
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
        let yes = [(POD_INJECT, "true")];
        let no = [(POD_INJECT, "false")];
        let cases: &[(&str, Pairs, Pairs, Pairs, bool)] = &[
            ("unlabelled namespace", &[], &[], &[], false),
            ("enabled namespace", &enabled, &[], &[], true),
            (
                "enabled namespace, pod label false",
                &enabled,
                &no,
                &[],
                false,
            ),
            (
                "enabled namespace, pod annotation false",
                &enabled,
                &[],
                &no,
                false,
            ),
            ("disabled namespace", &disabled, &[], &[], false),
            (
                "disabled namespace wins over pod label",
                &disabled,
                &yes,
                &[],
                false,
            ),
            ("pod label true alone", &[], &yes, &[], true),
            (
                "pod annotation true alone does not call the webhook",
                &[],
                &[],
                &yes,
                false,
            ),
            (
                "the pod label wins over the annotation",
                &[],
                &yes,
                &no,
                true,
            ),
            ("revision label", &revision, &[], &[], true),
            (
                "revision label, pod label false",
                &revision,
                &no,
                &[],
                false,
            ),
        ];
        for (what, ns, labels, annotations, expected) in cases {
            assert_eq!(
                wants_sidecar(&map(ns), &map(labels), &map(annotations)),
                *expected,
                "{what}"
            );
        }
    }

    #[test]
    fn proxy_metadata_from_annotation_overrides_mesh_default() {
        let annotations = map(&[(
            PROXY_CONFIG_ANNOTATION,
            r#"{"proxyMetadata": {"SECRET_TTL": "20s"}, "drainDuration": "5s"}"#,
        )]);
        let mesh = map(&[("SECRET_TTL", "1h"), ("OTHER", "x")]);
        assert_eq!(
            sidecar_env(&mesh, &annotations).expect("valid"),
            map(&[("SECRET_TTL", "20s"), ("OTHER", "x")])
        );
        assert_eq!(
            sidecar_env(&mesh, &BTreeMap::new()).expect("valid"),
            mesh,
            "no annotation"
        );
        let yaml = map(&[(PROXY_CONFIG_ANNOTATION, "proxyMetadata:\n  A: b\n")]);
        assert_eq!(
            sidecar_env(&BTreeMap::new(), &yaml).expect("valid"),
            map(&[("A", "b")])
        );
        let bad = map(&[(PROXY_CONFIG_ANNOTATION, "proxyMetadata: [1, 2]")]);
        assert!(sidecar_env(&BTreeMap::new(), &bad).is_err());
    }

    #[test]
    fn mesh_defaults() {
        let mesh = MeshDefaults::parse(
            "trustDomain: example.org\noutboundTrafficPolicy: {mode: ALLOW_ANY}\n\
             defaultConfig:\n  drainDuration: 5s\n  proxyMetadata: {SECRET_TTL: 1h}\n",
        )
        .expect("valid");
        assert_eq!(mesh.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(mesh.proxy_metadata(), &map(&[("SECRET_TTL", "1h")]));
        assert_eq!(
            MeshDefaults::parse("").expect("empty"),
            MeshDefaults::default()
        );
    }
}
