//! The injection values: what Istio's `istio-sidecar-injector` ConfigMap holds under `values`
//! (the Helm values the template reads: `global.*`, `sidecarInjectorWebhook.*`, `revision`),
//! with Istio's chart defaults for everything left out. Only the fields Remora's injection
//! reads are kept; the rest of a real ConfigMap is ignored, so an existing one can be reused.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The injection values Remora reads, Istio's defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Values {
    pub global: Global,
    pub sidecar_injector_webhook: Webhook,
    /// The control plane revision this injector serves; empty: `default`.
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Global {
    pub hub: String,
    pub tag: String,
    pub proxy: Proxy,
    /// Istio spells this one with an underscore.
    #[serde(rename = "proxy_init")]
    pub proxy_init: ProxyInit,
    /// Where sidecars ask for certificates; empty: the revision's istiod Service on 15012.
    pub ca_address: String,
    #[serde(rename = "meshID")]
    pub mesh_id: String,
    pub multi_cluster: MultiCluster,
    pub network: String,
    pub istio_namespace: String,
    pub image_pull_policy: String,
    pub image_pull_secrets: Vec<String>,
}

impl Default for Global {
    fn default() -> Self {
        Self {
            hub: "docker.io/remora".to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
            proxy: Proxy::default(),
            proxy_init: ProxyInit::default(),
            ca_address: String::new(),
            mesh_id: String::new(),
            multi_cluster: MultiCluster::default(),
            network: String::new(),
            istio_namespace: "istio-system".to_owned(),
            image_pull_policy: String::new(),
            image_pull_secrets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MultiCluster {
    pub cluster_name: String,
}

/// `global.proxy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Proxy {
    /// An image name (joined with `hub` and `tag`), or a full reference when it has a `/`.
    pub image: String,
    pub resources: Resources,
    pub status_port: u16,
    #[serde(rename = "includeIPRanges")]
    pub include_ip_ranges: String,
    #[serde(rename = "excludeIPRanges")]
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: String,
    pub exclude_outbound_ports: String,
    pub readiness_initial_delay_seconds: i32,
    pub readiness_period_seconds: i32,
    pub readiness_failure_threshold: i32,
    pub startup_probe: StartupProbe,
    pub hold_application_until_proxy_starts: bool,
    pub privileged: bool,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            image: "proxy".to_owned(),
            resources: Resources::default(),
            status_port: 15020,
            include_ip_ranges: "*".to_owned(),
            exclude_ip_ranges: String::new(),
            include_inbound_ports: "*".to_owned(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            readiness_initial_delay_seconds: 0,
            readiness_period_seconds: 15,
            readiness_failure_threshold: 4,
            startup_probe: StartupProbe::default(),
            hold_application_until_proxy_starts: false,
            privileged: false,
        }
    }
}

/// `global.proxy_init`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyInit {
    pub image: String,
}

impl Default for ProxyInit {
    fn default() -> Self {
        // The init container runs from the proxy image, which ships `remora-init` too.
        Self {
            image: "proxy".to_owned(),
        }
    }
}

/// Requests and limits, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Default for Resources {
    fn default() -> Self {
        let pair = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), cpu.to_owned()),
                ("memory".to_owned(), memory.to_owned()),
            ])
        };
        Self {
            requests: pair("100m", "128Mi"),
            limits: pair("2000m", "1024Mi"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartupProbe {
    pub enabled: bool,
    pub failure_threshold: i32,
}

impl Default for StartupProbe {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 600,
        }
    }
}

/// `sidecarInjectorWebhook`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Webhook {
    #[serde(rename = "rewriteAppHTTPProbe")]
    pub rewrite_app_http_probe: bool,
    /// Remora's switch for native sidecars (`istio-proxy` as an init container that keeps
    /// running), which istiod takes from `ENABLE_NATIVE_SIDECARS`.
    pub native_sidecars: bool,
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            rewrite_app_http_probe: true,
            native_sidecars: false,
        }
    }
}

impl Values {
    /// Reads the `values` of the injector ConfigMap (JSON, or YAML as `injection.yaml` holds
    /// it); `Err` names the field at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        crate::config::yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// The revision as it is recorded: `default` when none is set.
    pub fn revision(&self) -> &str {
        if self.revision.is_empty() {
            "default"
        } else {
            &self.revision
        }
    }

    /// `image` as a full reference: kept when it has a `/`, else `hub/image:tag`.
    pub fn image_reference(&self, image: &str) -> String {
        if image.contains('/') {
            image.to_owned()
        } else {
            format!("{}/{image}:{}", self.global.hub, self.global.tag)
        }
    }

    /// Where sidecars reach the CA: `caAddress`, else the revision's istiod on 15012.
    pub fn ca_address(&self) -> String {
        if !self.global.ca_address.is_empty() {
            return self.global.ca_address.clone();
        }
        let service = match self.revision.as_str() {
            "" | "default" => "istiod".to_owned(),
            revision => format!("istiod-{revision}"),
        };
        format!("{service}.{}.svc:15012", self.global.istio_namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_spelling_is_read_and_defaults_fill_the_rest() {
        let values = Values::parse(
            r#"{"global": {"hub": "registry.example/mesh", "proxy_init": {"image": "init"},
                "proxy": {"statusPort": 15021, "includeIPRanges": "10.0.0.0/8"},
                "multiCluster": {"clusterName": "east"}, "meshID": "m1"},
               "sidecarInjectorWebhook": {"rewriteAppHTTPProbe": false}, "revision": "canary",
               "pilot": {"env": {}}}"#,
        )
        .expect("valid");
        assert_eq!(values.global.hub, "registry.example/mesh");
        assert_eq!(values.global.proxy_init.image, "init");
        assert_eq!(values.global.proxy.status_port, 15021);
        assert_eq!(values.global.proxy.include_ip_ranges, "10.0.0.0/8");
        assert_eq!(values.global.proxy.readiness_period_seconds, 15);
        assert_eq!(values.global.multi_cluster.cluster_name, "east");
        assert_eq!(values.global.mesh_id, "m1");
        assert!(!values.sidecar_injector_webhook.rewrite_app_http_probe);
        assert_eq!(values.ca_address(), "istiod-canary.istio-system.svc:15012");
        assert_eq!(
            values.image_reference("proxy"),
            format!("registry.example/mesh/proxy:{}", values.global.tag)
        );
        assert_eq!(
            values.image_reference("other.example/p:1"),
            "other.example/p:1"
        );
        let err =
            Values::parse(r#"{"global": {"proxy": {"statusPort": "http"}}}"#).expect_err("bad");
        assert!(err.starts_with("global.proxy.statusPort"), "{err}");
    }

    /// The shipped injection ConfigMap is read by the control plane and says what the defaults
    /// say.
    #[test]
    fn the_shipped_config_map_holds_the_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/sidecar-injector.yaml"
        );
        let text = std::fs::read_to_string(path).expect("manifests/sidecar-injector.yaml");
        let catalog = crate::config::Catalog::build(vec![(path.to_owned(), text)]);
        assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
        assert_eq!(catalog.accepted().injector().values(), &Values::default());
    }
}
