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

use runtime_values::RuntimeValues;

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
    /// Envoy command operators (with the JSON encoding, a JSON object of fields and their
    /// operators), checked with the sidecar's own parser.
    access_log_format: String,
    path_normalization: PathNormalization,
    /// Whether injection points Prometheus at the sidecar, which merges the app's metrics.
    enable_prometheus_merge: bool,
    /// The providers Telemetry resources that name none use.
    default_providers: DefaultProviders,
}

/// `defaultProviders`: provider names, by what they provide.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DefaultProviders {
    /// `None`: unset, which Istio's install treats as `[prometheus]`.
    pub(crate) metrics: Option<Vec<String>>,
    pub(crate) access_logging: Vec<String>,
    pub(crate) tracing: Vec<String>,
}

/// Istio's built-in providers: its Prometheus stats and its stdout access log.
pub(crate) const PROMETHEUS_PROVIDER: &str = "prometheus";
pub(crate) const ENVOY_LOG_PROVIDER: &str = "envoy";

/// What an `extensionProviders` entry (or a built-in name) provides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ProviderKind {
    Prometheus,
    /// `envoyFileAccessLog` (or the built-in `envoy`): a file and its format.
    FileAccessLog(proto::AccessLogPolicy),
    /// `opentelemetry` or `zipkin`: where spans are exported.
    Tracing(proto::TraceProvider),
    /// Anything else (other tracers and log sinks), by its kind's name.
    Other(String),
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
            access_log_format: String::new(),
            path_normalization: PathNormalization::default(),
            enable_prometheus_merge: true,
            default_providers: DefaultProviders::default(),
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
    /// Envoy runtime keys; the sidecar honours the load limits among them.
    runtime_values: RuntimeValues,
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
    #[serde(deserialize_with = "zipkin")]
    zipkin: Option<ZipkinAddress>,
}

/// `tracing.zipkin`: the legacy tracer's collector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ZipkinAddress {
    address: String,
}

fn zipkin<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ZipkinAddress>, D::Error> {
    let zipkin = Option::<ZipkinAddress>::deserialize(deserializer)?;
    if let Some(z) = &zipkin {
        tracer::legacy_zipkin(&z.address)
            .map_err(|e| de::Error::custom(format!("address: {e}")))?;
    }
    Ok(zipkin)
}

/// An `envoyFileAccessLog` provider's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileAccessLog {
    #[serde(default = "stdout")]
    path: String,
    log_format: Option<LogFormat>,
}

fn stdout() -> String {
    "/dev/stdout".to_owned()
}

/// `logFormat`: a text format, or JSON fields (`labels`), each of Envoy's command operators.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogFormat {
    text: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

impl LogFormat {
    fn policy(&self, path: &str) -> proto::AccessLogPolicy {
        let path = if path.is_empty() { "/dev/stdout" } else { path };
        match &self.labels {
            Some(labels) => proto::AccessLogPolicy {
                path: path.to_owned(),
                json: true,
                json_fields: labels
                    .iter()
                    .map(|(key, format)| proto::JsonField {
                        key: key.clone(),
                        format: format.clone(),
                    })
                    .collect(),
                ..proto::AccessLogPolicy::default()
            },
            None => proto::AccessLogPolicy {
                path: path.to_owned(),
                text_format: self.text.clone().unwrap_or_default(),
                ..proto::AccessLogPolicy::default()
            },
        }
    }

    /// Whether the sidecar can print it: every operator known.
    fn check(&self) -> Result<(), String> {
        use remora_api::access_log::Format;
        if let Some(text) = &self.text {
            Format::text(text).map_err(|e| format!("text: {e}"))?;
        }
        for (key, value) in self.labels.iter().flatten() {
            Format::text(value).map_err(|e| format!("labels.{key}: {e}"))?;
        }
        Ok(())
    }
}

/// One `extensionProviders` entry: `{name, <kind>: {service, port, ...}}`.
#[derive(Debug, Clone, PartialEq)]
struct Provider(proto::ExtensionProvider);

impl MeshConfig {
    /// Parses a `mesh.yaml` or the `mesh` key of the `istio` ConfigMap.
    pub(crate) fn parse(text: &str) -> Result<Self, YamlError> {
        let mesh: Self = yaml::from_str(text)?;
        if mesh.default_providers.access_logging.len() > 1 {
            return Err(YamlError::Field {
                path: "defaultProviders.accessLogging".to_owned(),
                message: "a sidecar writes one access log; name one provider".to_owned(),
            });
        }
        mesh.check_access_log_format()?;
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
            let p = &provider.0;
            if let Err(message) =
                tracer::read(&p.name, &p.kind, &p.service, p.port, &p.settings_json)
            {
                return Err(YamlError::Field {
                    path: format!("extensionProviders[{i}].{}", p.kind),
                    message,
                });
            }
            if provider.0.kind == "envoyFileAccessLog" {
                let settings: Value =
                    serde_json::from_str(&provider.0.settings_json).unwrap_or_default();
                if let Some(format) = settings.get("logFormat") {
                    let checked = serde_json::from_value::<LogFormat>(format.clone())
                        .map_err(|e| e.to_string())
                        .and_then(|f| f.check());
                    if let Err(message) = checked {
                        return Err(YamlError::Field {
                            path: format!("extensionProviders[{i}].envoyFileAccessLog.logFormat"),
                            message,
                        });
                    }
                }
            }
        }
        Ok(mesh)
    }

    /// The default providers (`defaultProviders`).
    pub(crate) fn default_providers(&self) -> &DefaultProviders {
        &self.default_providers
    }

    /// What provider `name` provides (names match case-insensitively, as istiod matches them);
    /// `None` when the mesh has no such provider.
    pub(crate) fn provider(&self, name: &str) -> Option<ProviderKind> {
        let found = self
            .extension_providers
            .iter()
            .find(|p| p.0.name.eq_ignore_ascii_case(name));
        let Some(Provider(provider)) = found else {
            return if name.eq_ignore_ascii_case(PROMETHEUS_PROVIDER) {
                Some(ProviderKind::Prometheus)
            } else if name.eq_ignore_ascii_case(ENVOY_LOG_PROVIDER) {
                Some(ProviderKind::FileAccessLog(
                    self.legacy_access_log("/dev/stdout"),
                ))
            } else {
                None
            };
        };
        Some(match provider.kind.as_str() {
            "prometheus" => ProviderKind::Prometheus,
            "envoyFileAccessLog" => {
                let settings: FileAccessLog =
                    serde_json::from_str(&provider.settings_json).unwrap_or_default();
                match settings.log_format {
                    None => ProviderKind::FileAccessLog(self.legacy_access_log(&settings.path)),
                    Some(format) => ProviderKind::FileAccessLog(format.policy(&settings.path)),
                }
            }
            kind => match tracer::read(
                &provider.name,
                kind,
                &provider.service,
                provider.port,
                &provider.settings_json,
            ) {
                // Checked when the mesh config was read.
                Ok(Some(tracer)) => ProviderKind::Tracing(tracer),
                Ok(None) | Err(_) => ProviderKind::Other(kind.to_owned()),
            },
        })
    }

    /// Istio's legacy tracer, which applies when no Telemetry resource traces and
    /// `defaultProviders` names no tracing provider: under `enableTracing`, Zipkin at the
    /// pod's `defaultConfig.tracing.zipkin.address`, when one is set (Istio installs no tracer
    /// by default).
    pub(crate) fn legacy_tracer(&self, pod: Option<&ProxyConfig>) -> Option<proto::TraceProvider> {
        if !self.enable_tracing {
            return None;
        }
        let proxy = self.proxy_config(pod);
        let address = &proxy.tracing.zipkin.as_ref()?.address;
        // Checked when the mesh config and the pod's annotation were read.
        tracer::legacy_zipkin(address).ok()
    }

    /// The percentage of requests a pod's sidecar samples when no Telemetry resource sets
    /// one: its `defaultConfig.tracing.sampling` (with the pod's annotation), else 1%; as in
    /// istiod, 0 counts as unset.
    pub(crate) fn tracing_sampling(&self, pod: Option<&ProxyConfig>) -> f64 {
        self.proxy_config(pod)
            .tracing
            .sampling
            .filter(|&percent| percent != 0.0)
            .unwrap_or(DEFAULT_TRACING_SAMPLING)
    }

    /// The access log `accessLogFile` asks for, written to `path`, in `accessLogEncoding` and
    /// `accessLogFormat` (Istio's default format when unset).
    pub(crate) fn legacy_access_log(&self, path: &str) -> proto::AccessLogPolicy {
        let json = self.access_log_encoding == AccessLogEncoding::Json;
        let (text_format, json_fields) = if json {
            // Checked when the mesh config was read.
            (String::new(), self.json_log_fields().unwrap_or_default())
        } else {
            (self.access_log_format.clone(), Vec::new())
        };
        proto::AccessLogPolicy {
            path: path.to_owned(),
            text_format,
            json,
            json_fields,
            ..proto::AccessLogPolicy::default()
        }
    }

    /// `accessLogFormat` as a JSON encoding reads it: an object of fields and operators.
    fn json_log_fields(&self) -> Result<Vec<proto::JsonField>, String> {
        let fields: BTreeMap<String, String> = serde_json::from_str(&self.access_log_format)
            .map_err(|e| format!("with accessLogEncoding JSON, a JSON object of strings: {e}"))?;
        Ok(fields
            .into_iter()
            .map(|(key, format)| proto::JsonField { key, format })
            .collect())
    }

    /// Refuses an `accessLogFormat` the sidecar could not print.
    fn check_access_log_format(&self) -> Result<(), YamlError> {
        use remora_api::access_log::Format;
        if self.access_log_format.is_empty() {
            return Ok(());
        }
        let checked = if self.access_log_encoding == AccessLogEncoding::Json {
            self.json_log_fields().and_then(|fields| {
                Format::json(fields.iter().map(|f| (f.key.as_str(), f.format.as_str())))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        } else {
            Format::text(&self.access_log_format)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        checked.map_err(|message| YamlError::Field {
            path: "accessLogFormat".to_owned(),
            message,
        })
    }

    /// The legacy `accessLogFile`, if set.
    pub(crate) fn access_log_file(&self) -> Option<&str> {
        Some(self.access_log_file.as_str()).filter(|f| !f.is_empty())
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
            tracing_sampling: self.tracing_sampling(pod),
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
            overload: Some(proxy.runtime_values.overload()),
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
                zipkin: pod.tracing.zipkin.clone().or(self.tracing.zipkin.clone()),
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
            runtime_values: self.runtime_values.overridden_by(&pod.runtime_values),
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
        if !self.runtime_values.is_empty() {
            json.insert(
                "runtimeValues".to_owned(),
                serde_json::to_value(self.runtime_values.values()).unwrap_or_default(),
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

mod runtime_values;
#[cfg(test)]
mod tests;
mod tracer;
