//! Istio's `MeshConfig` (the `mesh` key of the `istio` ConfigMap, or a local `mesh.yaml`) and
//! the part of its `ProxyConfig` a sidecar acts on, read the way istiod reads them.
//!
//! Operators reuse the mesh config they already have, so parsing is lenient about what we do
//! not implement (unknown fields are ignored) but strict about what we do: a wrong type or an
//! unknown enum value is an error naming the field, never a silent default.

use std::{collections::BTreeMap, time::Duration};

use remora_api::{proto::config as proto, SpiffeId, SpiffeIdError, DEFAULT_DRAIN_DURATION};
use serde::{de, Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{
    well_known::PROXY_CONFIG_ANNOTATION,
    yaml::{self, YamlError},
};

/// Istio traces 1% of requests unless told otherwise.
const DEFAULT_TRACING_SAMPLING: f64 = 1.0;

/// The mesh-wide settings, with Istio's defaults for everything left out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct MeshConfig {
    root_namespace: String,
    #[serde(deserialize_with = "trust_domain")]
    trust_domain: String,
    outbound_traffic_policy: OutboundTrafficPolicy,
    default_config: ProxyConfig,
    enable_tracing: bool,
    extension_providers: Vec<Provider>,
    access_log_file: String,
    access_log_encoding: AccessLogEncoding,
    path_normalization: PathNormalization,
    /// Whether injection points Prometheus at the sidecar, which merges the app's metrics.
    enable_prometheus_merge: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
            trust_domain: remora_api::DEFAULT_TRUST_DOMAIN.to_owned(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            default_config: ProxyConfig::default(),
            enable_tracing: true,
            extension_providers: Vec::new(),
            access_log_file: String::new(),
            access_log_encoding: AccessLogEncoding::default(),
            path_normalization: PathNormalization::default(),
            enable_prometheus_merge: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
struct OutboundTrafficPolicy {
    mode: OutboundMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum OutboundMode {
    #[default]
    AllowAny,
    RegistryOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
struct PathNormalization {
    normalization: Normalization,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Normalization {
    None,
    /// Istio's `DEFAULT` means `BASE`.
    #[default]
    #[serde(alias = "DEFAULT")]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

/// The `ProxyConfig` fields Remora uses: the mesh's `defaultConfig`, or a pod's
/// `proxy.istio.io/config` annotation. Every field is optional so an annotation overrides only
/// what it sets, as Istio merges them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ProxyConfig {
    #[serde(deserialize_with = "duration")]
    drain_duration: Option<Duration>,
    tracing: Tracing,
    /// Worker threads (0: one per core). Like `proxyMetadata`, the injection template renders
    /// it into the sidecar's container (`--concurrency`), so it is read at injection.
    pub(crate) concurrency: Option<u32>,
    /// Environment for the sidecar, which the injection template renders into its container
    /// (so it is read at injection, not sent in snapshots).
    pub(crate) proxy_metadata: BTreeMap<String, String>,
    gateway_topology: GatewayTopology,
    /// Start the app only once the sidecar is ready (injection puts the sidecar first).
    pub(crate) hold_application_until_proxy_starts: Option<bool>,
}

/// `gatewayTopology`: what lies in front of the proxy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GatewayTopology {
    /// `X-Forwarded-For` hops to trust (AuthorizationPolicy `remoteIpBlocks`).
    num_trusted_proxies: Option<u32>,
}

/// Why a pod's `proxy.istio.io/config` annotation cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("metadata.annotations[{PROXY_CONFIG_ANNOTATION}]: {source}")]
pub struct ProxyConfigError {
    #[source]
    source: YamlError,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
struct Tracing {
    #[serde(deserialize_with = "sampling")]
    sampling: Option<f64>,
}

/// One `extensionProviders` entry: `{name, <kind>: {service, port, ...}}`.
#[derive(Debug, Clone, PartialEq)]
struct Provider(proto::ExtensionProvider);

impl MeshConfig {
    /// Parses a `mesh.yaml` or the `mesh` key of the `istio` ConfigMap.
    pub(crate) fn parse(text: &str) -> Result<Self, YamlError> {
        let mesh: Self = yaml::from_str(text)?;
        for (i, provider) in mesh.extension_providers.iter().enumerate() {
            let name = &provider.0.name;
            if mesh.extension_providers[..i]
                .iter()
                .any(|earlier| &earlier.0.name == name)
            {
                return Err(YamlError::Field {
                    path: format!("extensionProviders[{i}].name"),
                    message: format!("{name:?} is defined twice"),
                });
            }
        }
        Ok(mesh)
    }

    /// The namespace whose policies apply mesh-wide.
    pub(crate) fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub(crate) fn enable_prometheus_merge(&self) -> bool {
        self.enable_prometheus_merge
    }

    /// The `ProxyConfig` of a pod's sidecar: `defaultConfig` with the pod's
    /// `proxy.istio.io/config` applied over it.
    pub(crate) fn proxy_config(&self, pod: Option<&ProxyConfig>) -> ProxyConfig {
        match pod {
            Some(pod) => self.default_config.overridden_by(pod),
            None => self.default_config.clone(),
        }
    }

    /// The settings one sidecar receives: the mesh's, with its pod's `proxy.istio.io/config`
    /// applied over `defaultConfig`.
    pub(crate) fn settings(&self, pod: Option<&ProxyConfig>) -> proto::MeshSettings {
        let proxy = self.proxy_config(pod);
        let drain = proxy.drain_duration.unwrap_or(DEFAULT_DRAIN_DURATION);
        proto::MeshSettings {
            trust_domain: self.trust_domain.clone(),
            root_namespace: self.root_namespace.clone(),
            outbound_traffic_policy: match self.outbound_traffic_policy.mode {
                OutboundMode::AllowAny => "ALLOW_ANY",
                OutboundMode::RegistryOnly => "REGISTRY_ONLY",
            }
            .to_owned(),
            drain_duration_ms: u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
            enable_tracing: self.enable_tracing,
            tracing_sampling: proxy.tracing.sampling.unwrap_or(DEFAULT_TRACING_SAMPLING),
            access_log_file: self.access_log_file.clone(),
            access_log_encoding: match self.access_log_encoding {
                AccessLogEncoding::Text => "TEXT",
                AccessLogEncoding::Json => "JSON",
            }
            .to_owned(),
            path_normalization: match self.path_normalization.normalization {
                Normalization::None => "NONE",
                Normalization::Base => "BASE",
                Normalization::MergeSlashes => "MERGE_SLASHES",
                Normalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
            }
            .to_owned(),
            extension_providers: self
                .extension_providers
                .iter()
                .map(|provider| provider.0.clone())
                .collect(),
            num_trusted_proxies: proxy.gateway_topology.num_trusted_proxies.unwrap_or(0),
            // Injection's, filled in by the catalog.
            cluster_id: String::new(),
        }
    }
}

impl ProxyConfig {
    /// Parses a pod's `proxy.istio.io/config` annotation (ProxyConfig YAML).
    pub(crate) fn from_annotation(text: &str) -> Result<Self, YamlError> {
        yaml::from_str(text)
    }

    /// The overrides a pod's `annotations` carry; `None` when it has none.
    pub(crate) fn of_pod(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Self>, ProxyConfigError> {
        annotations
            .and_then(|annotations| annotations.get(PROXY_CONFIG_ANNOTATION))
            .map(|text| Self::from_annotation(text).map_err(|source| ProxyConfigError { source }))
            .transpose()
    }

    /// `self` with every field that `pod` sets replaced by the pod's value; `proxyMetadata`
    /// is merged key by key, the pod's keys winning (Istio's `MergeProxyConfig`).
    fn overridden_by(&self, pod: &ProxyConfig) -> ProxyConfig {
        let mut proxy_metadata = self.proxy_metadata.clone();
        proxy_metadata.extend(pod.proxy_metadata.clone());
        ProxyConfig {
            drain_duration: pod.drain_duration.or(self.drain_duration),
            tracing: Tracing {
                sampling: pod.tracing.sampling.or(self.tracing.sampling),
            },
            concurrency: pod.concurrency.or(self.concurrency),
            proxy_metadata,
            gateway_topology: GatewayTopology {
                num_trusted_proxies: pod
                    .gateway_topology
                    .num_trusted_proxies
                    .or(self.gateway_topology.num_trusted_proxies),
            },
            hold_application_until_proxy_starts: pod
                .hold_application_until_proxy_starts
                .or(self.hold_application_until_proxy_starts),
        }
    }

    /// The fields set, as protobuf JSON (`PROXY_CONFIG`, which the sidecar reads before its
    /// first snapshot): `{}` when none is.
    pub(crate) fn to_json(&self) -> String {
        let mut json = Map::new();
        if let Some(drain) = self.drain_duration {
            json.insert(
                "drainDuration".to_owned(),
                Value::from(format!("{}s", drain.as_secs_f64())),
            );
        }
        if let Some(concurrency) = self.concurrency {
            json.insert("concurrency".to_owned(), Value::from(concurrency));
        }
        if let Some(sampling) = self.tracing.sampling {
            json.insert(
                "tracing".to_owned(),
                serde_json::json!({"sampling": sampling}),
            );
        }
        if let Some(hops) = self.gateway_topology.num_trusted_proxies {
            json.insert(
                "gatewayTopology".to_owned(),
                serde_json::json!({"numTrustedProxies": hops}),
            );
        }
        if let Some(hold) = self.hold_application_until_proxy_starts {
            json.insert(
                "holdApplicationUntilProxyStarts".to_owned(),
                Value::from(hold),
            );
        }
        if !self.proxy_metadata.is_empty() {
            json.insert(
                "proxyMetadata".to_owned(),
                serde_json::to_value(&self.proxy_metadata).unwrap_or_default(),
            );
        }
        Value::Object(json).to_string()
    }
}

/// Trust domains end up in every SPIFFE identity, so one that cannot form an identity is
/// rejected here rather than when the first pod is translated.
fn trust_domain<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    match SpiffeId::new(&text, "ns", "sa") {
        Ok(_) => Ok(text),
        Err(SpiffeIdError::Part { reason, .. }) => Err(de::Error::custom(format!(
            "{text:?} is not a valid trust domain: {reason}"
        ))),
        Err(other) => Err(de::Error::custom(format!(
            "{text:?} is not a valid trust domain: {other}"
        ))),
    }
}

/// Protobuf JSON durations (`5s`, `0.5s`) as Istio writes them, and the friendlier `1m30s` or
/// `500ms` forms.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let seconds = text
        .strip_suffix('s')
        .and_then(|number| number.parse::<f64>().ok());
    let parsed = match seconds {
        Some(seconds) => Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string()),
        None => humantime::parse_duration(&text).map_err(|e| e.to_string()),
    };
    parsed
        .map(Some)
        .map_err(|e| de::Error::custom(format!("{text:?} is not a duration such as \"5s\": {e}")))
}

fn sampling<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let sampling = Option::<f64>::deserialize(deserializer)?;
    match sampling {
        Some(percent) if !(0.0..=100.0).contains(&percent) => Err(de::Error::custom(format!(
            "{percent} is not a percentage between 0 and 100"
        ))),
        other => Ok(other),
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ProviderVisitor)
    }
}

struct ProviderVisitor;

/// The body of a provider kind: the backend address Remora interprets, and the rest kept as
/// JSON for features that come later.
#[derive(Default, Deserialize)]
struct ProviderBody {
    #[serde(default)]
    service: String,
    #[serde(default)]
    port: u16,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl<'de> de::Visitor<'de> for ProviderVisitor {
    type Value = Provider;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(
            "an extension provider such as {name: otel, opentelemetry: {service: ..., port: ...}}",
        )
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Provider, A::Error> {
        let mut name = None;
        let mut kind: Option<(String, ProviderBody)> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "name" {
                name = Some(map.next_value::<String>()?);
            } else if let Some((first, _)) = &kind {
                return Err(de::Error::custom(format!(
                    "sets both {first:?} and {key:?}; a provider has exactly one kind"
                )));
            } else {
                let body = map.next_value::<Option<ProviderBody>>()?;
                kind = Some((key, body.unwrap_or_default()));
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let (kind, body) = kind.ok_or_else(|| {
            de::Error::custom(format!(
                "provider {name:?} names no kind (such as `opentelemetry` or `zipkin`)"
            ))
        })?;
        Ok(Provider(proto::ExtensionProvider {
            name,
            kind,
            service: body.service,
            port: u32::from(body.port),
            settings_json: Value::Object(body.rest).to_string(),
        }))
    }
}

#[cfg(test)]
mod tests;
