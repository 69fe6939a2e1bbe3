//! Istio's Telemetry API (`telemetry.istio.io/v1`, `v1alpha1`): what each sidecar records.
//!
//! Each resource is checked alone and rejected alone, naming the field: `metrics` (providers,
//! `overrides` that disable a metric or remove and add labels, with a literal or a request
//! header's value), `tracing` (a provider, `randomSamplingPercentage`, `customTags`,
//! `disableSpanReporting`, `disableContextPropagation`, `enableIstioTags`) and
//! `accessLogging` (providers, `disabled`, `filter.expression` on the response code). What
//! Remora does not do is refused by name rather than ignored: `targetRef(s)` (they select
//! gateways and waypoints), `customMetric`, `reportingInterval`, `formatter` custom tags, and
//! filter or value expressions beyond the forms below.
//!
//! Per pod, resources apply as istiod applies them ([`resolve`]): the root namespace's
//! selector-less one, then the pod's namespace's selector-less one, then those in its namespace
//! whose `selector` matches it, each kind of setting merged in that order (the oldest resource
//! winning where a namespace has several without a selector), over the mesh config's
//! `defaultProviders` and its legacy settings (`accessLogFile`; for tracing, `enableTracing`
//! with `defaultConfig.tracing`).

use std::collections::BTreeMap;

use remora_api::{proto::config as proto, telemetry::is_label_name};
use serde::Deserialize;
use serde_json::Value;

use super::{
    mesh::{MeshConfig, ProviderKind, ProxyConfig, PROMETHEUS_PROVIDER},
    yaml,
};

/// Whether `api_version`/`kind` is a Telemetry resource.
pub(crate) fn is_telemetry(api_version: &str, kind: &str) -> bool {
    kind == "Telemetry"
        && matches!(
            api_version,
            "telemetry.istio.io/v1" | "telemetry.istio.io/v1alpha1"
        )
}

/// A checked Telemetry resource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Telemetry {
    namespace: String,
    name: String,
    /// `metadata.creationTimestamp` (RFC 3339, so it sorts as text); empty when unset.
    created: String,
    selector: Option<BTreeMap<String, String>>,
    metrics: Vec<Metrics>,
    logging: Vec<Logging>,
    tracing: Vec<Tracing>,
}

/// One `tracing` rule: each field it sets overrides what less specific rules set.
#[derive(Debug, Clone, PartialEq, Default)]
struct Tracing {
    modes: Modes,
    /// The first provider named, if any.
    provider: Option<String>,
    sampling: Option<f64>,
    disable_reporting: Option<bool>,
    disable_propagation: Option<bool>,
    istio_tags: Option<bool>,
    /// Replaces the inherited tags whole when set (even to none).
    custom_tags: Option<Vec<proto::CustomTag>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Metrics {
    providers: Vec<String>,
    overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq)]
struct Override {
    /// The metrics it applies to (`ALL_METRICS` expanded), by their snapshot names.
    metrics: Vec<&'static str>,
    modes: Modes,
    disabled: Option<bool>,
    tags: Vec<(String, Tag)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tag {
    Remove,
    Upsert(proto::TagValue),
}

/// Which sides a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Modes {
    client: bool,
    server: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Logging {
    modes: Modes,
    providers: Vec<String>,
    disabled: Option<bool>,
    /// `None`: no filter set here.
    filter: Option<(Vec<proto::CodeCheck>, bool)>,
}

/// Istio's metric names (the `IstioMetric` enum) and the metrics they stand for; the gRPC
/// message counts are metrics Remora does not record, so overriding them does nothing.
fn metrics_named(name: &str) -> Option<Vec<&'static str>> {
    const ALL: [&str; 8] = [
        "requests_total",
        "request_duration_milliseconds",
        "request_bytes",
        "response_bytes",
        "tcp_connections_opened_total",
        "tcp_connections_closed_total",
        "tcp_sent_bytes_total",
        "tcp_received_bytes_total",
    ];
    Some(match name {
        "ALL_METRICS" => ALL.to_vec(),
        "REQUEST_COUNT" => vec![ALL[0]],
        "REQUEST_DURATION" => vec![ALL[1]],
        "REQUEST_SIZE" => vec![ALL[2]],
        "RESPONSE_SIZE" => vec![ALL[3]],
        "TCP_OPENED_CONNECTIONS" => vec![ALL[4]],
        "TCP_CLOSED_CONNECTIONS" => vec![ALL[5]],
        "TCP_SENT_BYTES" => vec![ALL[6]],
        "TCP_RECEIVED_BYTES" => vec![ALL[7]],
        "GRPC_REQUEST_MESSAGES" | "GRPC_RESPONSE_MESSAGES" => Vec::new(),
        _ => return None,
    })
}

fn modes(mode: Option<&str>, path: &str) -> Result<Modes, String> {
    match mode.unwrap_or("CLIENT_AND_SERVER") {
        "CLIENT_AND_SERVER" => Ok(Modes {
            client: true,
            server: true,
        }),
        "CLIENT" => Ok(Modes {
            client: true,
            server: false,
        }),
        "SERVER" => Ok(Modes {
            client: false,
            server: true,
        }),
        other => Err(format!(
            "{path}: {other:?} is not one of CLIENT_AND_SERVER, CLIENT, SERVER"
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Object {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    #[serde(default, rename = "status")]
    _status: Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    creation_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<Value>,
    target_refs: Option<Value>,
    #[serde(default)]
    tracing: Vec<TracingSpec>,
    #[serde(default)]
    metrics: Vec<MetricsSpec>,
    #[serde(default)]
    access_logging: Vec<LoggingSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderRef {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MetricsSpec {
    #[serde(default)]
    providers: Vec<ProviderRef>,
    #[serde(default)]
    overrides: Vec<OverrideSpec>,
    reporting_interval: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OverrideSpec {
    #[serde(rename = "match")]
    matcher: Option<MetricMatch>,
    disabled: Option<bool>,
    #[serde(default)]
    tag_overrides: BTreeMap<String, TagSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MetricMatch {
    metric: Option<String>,
    custom_metric: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagSpec {
    operation: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingSpec {
    #[serde(rename = "match")]
    matcher: Option<ModeMatch>,
    #[serde(default)]
    providers: Vec<ProviderRef>,
    disabled: Option<bool>,
    filter: Option<FilterSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TracingSpec {
    #[serde(rename = "match")]
    matcher: Option<ModeMatch>,
    #[serde(default)]
    providers: Vec<ProviderRef>,
    random_sampling_percentage: Option<f64>,
    disable_span_reporting: Option<bool>,
    custom_tags: Option<BTreeMap<String, CustomTagSpec>>,
    /// Envoy samples by the request id's hash; Remora draws per request either way.
    #[serde(rename = "useRequestIdForTraceSampling")]
    _use_request_id: Option<bool>,
    enable_istio_tags: Option<bool>,
    disable_context_propagation: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomTagSpec {
    literal: Option<LiteralTag>,
    environment: Option<SourcedTag>,
    header: Option<SourcedTag>,
    formatter: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteralTag {
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SourcedTag {
    name: String,
    #[serde(default)]
    default_value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeMatch {
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterSpec {
    expression: String,
}

/// Reads Telemetry `value` in `namespace` (named `name`).
pub(crate) fn read(value: Value, namespace: &str, name: &str) -> Result<Telemetry, String> {
    let object: Object = yaml::from_value(value).map_err(|e| e.to_string())?;
    let spec = object.spec;
    if spec.target_ref.is_some() || spec.target_refs.is_some() {
        return Err(
            "spec.targetRefs: they select gateways and waypoints; a sidecar's \
                    Telemetry selects its pods with spec.selector"
                .to_owned(),
        );
    }
    let tracing = read_each(spec.tracing, "spec.tracing", read_tracing)?;
    let metrics = read_each(spec.metrics, "spec.metrics", read_metrics)?;
    let logging = read_each(spec.access_logging, "spec.accessLogging", read_logging)?;
    Ok(Telemetry {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        created: object.metadata.creation_timestamp.unwrap_or_default(),
        selector: spec.selector.map(|s| s.match_labels),
        metrics,
        logging,
        tracing,
    })
}

/// Each rule of list `path`, read by `read` with its own path (`spec.metrics[2]`).
fn read_each<S, T>(
    specs: Vec<S>,
    path: &str,
    read: impl Fn(S, &str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| read(spec, &format!("{path}[{i}]")))
        .collect()
}

fn read_tracing(spec: TracingSpec, path: &str) -> Result<Tracing, String> {
    let modes = modes(
        spec.matcher.as_ref().and_then(|m| m.mode.as_deref()),
        &format!("{path}.match.mode"),
    )?;
    if let Some(percent) = spec.random_sampling_percentage {
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!(
                "{path}.randomSamplingPercentage: {percent} is not a percentage between 0 and 100"
            ));
        }
    }
    let set_tags = spec.custom_tags.is_some();
    let mut custom_tags = Vec::new();
    for (name, tag) in spec.custom_tags.unwrap_or_default() {
        use proto::custom_tag::Value as V;
        let at = format!("{path}.customTags.{name}");
        if name.is_empty() {
            return Err(format!("{at}: a tag needs a name"));
        }
        let value = match (tag.literal, tag.environment, tag.header, tag.formatter) {
            (Some(literal), None, None, None) => V::Literal(literal.value),
            (None, Some(env), None, None) => V::Environment(proto::EnvironmentVariable {
                name: env.name,
                fallback: env.default_value,
            }),
            (None, None, Some(header), None) => {
                if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                    return Err(format!(
                        "{at}.header.name: {:?} is not a header name",
                        header.name
                    ));
                }
                V::RequestHeader(proto::RequestHeader {
                    name: header.name.to_ascii_lowercase(),
                    fallback: header.default_value,
                })
            }
            (None, None, None, Some(_)) => {
                return Err(format!(
                    "{at}.formatter: not supported; use literal, environment or header"
                ))
            }
            _ => {
                return Err(format!(
                    "{at}: set exactly one of literal, environment and header"
                ))
            }
        };
        custom_tags.push(proto::CustomTag {
            name,
            value: Some(value),
        });
    }
    Ok(Tracing {
        modes,
        provider: spec.providers.into_iter().next().map(|p| p.name),
        sampling: spec.random_sampling_percentage,
        disable_reporting: spec.disable_span_reporting,
        disable_propagation: spec.disable_context_propagation,
        istio_tags: spec.enable_istio_tags,
        custom_tags: set_tags.then_some(custom_tags),
    })
}

fn read_metrics(spec: MetricsSpec, path: &str) -> Result<Metrics, String> {
    if spec.reporting_interval.is_some() {
        return Err(format!(
            "{path}.reportingInterval: not supported (TCP metrics are reported when a \
             connection closes)"
        ));
    }
    let mut overrides = Vec::new();
    for (i, o) in spec.overrides.into_iter().enumerate() {
        let here = format!("{path}.overrides[{i}]");
        let (metric, mode) = match o.matcher {
            Some(m) => {
                if m.custom_metric.is_some() {
                    return Err(format!(
                        "{here}.match.customMetric: custom metrics are not supported"
                    ));
                }
                (m.metric, m.mode)
            }
            None => (None, None),
        };
        let name = metric.as_deref().unwrap_or("ALL_METRICS");
        let metrics = metrics_named(name)
            .ok_or_else(|| format!("{here}.match.metric: {name:?} is not an Istio metric"))?;
        let modes = modes(mode.as_deref(), &format!("{here}.match.mode"))?;
        let mut tags = Vec::new();
        for (tag, spec) in o.tag_overrides {
            let at = format!("{here}.tagOverrides.{tag}");
            if !is_label_name(&tag) {
                return Err(format!("{at}: not a Prometheus label name"));
            }
            let op = match (spec.operation.as_deref().unwrap_or("UPSERT"), spec.value) {
                ("UPSERT", Some(value)) => Tag::Upsert(tag_value(&value, &at)?),
                ("UPSERT", None) => return Err(format!("{at}.value: required with UPSERT")),
                ("REMOVE", None) => Tag::Remove,
                ("REMOVE", Some(_)) => {
                    return Err(format!("{at}.value: must not be set with REMOVE"))
                }
                (other, _) => {
                    return Err(format!(
                        "{at}.operation: {other:?} is neither UPSERT nor REMOVE"
                    ))
                }
            };
            tags.push((tag, op));
        }
        overrides.push(Override {
            metrics,
            modes,
            disabled: o.disabled,
            tags,
        });
    }
    Ok(Metrics {
        providers: spec.providers.into_iter().map(|p| p.name).collect(),
        overrides,
    })
}

/// A tag override's CEL `value`, in the forms Remora evaluates: a string literal
/// (`'text'`), a request header (`request.headers['x-user']`, optionally as
/// `has(request.headers['x']) ? request.headers['x'] : 'fallback'`), `request.host` or
/// `request.method`.
fn tag_value(expression: &str, path: &str) -> Result<proto::TagValue, String> {
    use proto::tag_value::Value as V;
    let text = expression.trim();
    if let Some(literal) = string_literal(text) {
        return Ok(proto::TagValue {
            value: Some(V::Literal(literal)),
        });
    }
    let header = |name: String, fallback: String| proto::TagValue {
        value: Some(V::RequestHeader(proto::RequestHeader { name, fallback })),
    };
    if let Some(name) = request_attribute(text) {
        return Ok(header(name, "unknown".to_owned()));
    }
    if let Some((condition, branches)) = text.split_once('?') {
        let tested = condition
            .trim()
            .strip_prefix("has(")
            .and_then(|c| c.strip_suffix(')'))
            .and_then(request_attribute);
        if let Some((then, otherwise)) = branches.split_once(':') {
            let then = request_attribute(then.trim());
            let fallback = string_literal(otherwise.trim());
            if let (Some(tested), Some(then), Some(fallback)) = (tested, then, fallback) {
                if tested == then {
                    return Ok(header(then, fallback));
                }
            }
        }
    }
    Err(format!(
        "{path}.value: {expression:?} is not an expression Remora evaluates (a string literal, \
         request.headers['name'], request.host, request.method, or \
         has(request.headers['name']) ? request.headers['name'] : 'fallback')"
    ))
}

fn string_literal(text: &str) -> Option<String> {
    ['\'', '"'].into_iter().find_map(|quote| {
        text.strip_prefix(quote)
            .and_then(|t| t.strip_suffix(quote))
            .filter(|t| !t.contains(quote) && !t.contains('\\'))
            .map(str::to_owned)
    })
}

/// `request.headers['name']` as the lowercase header name; `request.host` and
/// `request.method` as the request's own (`:authority`, `:method`).
fn request_attribute(text: &str) -> Option<String> {
    match text {
        "request.host" => return Some(":authority".to_owned()),
        "request.method" => return Some(":method".to_owned()),
        _ => {}
    }
    text.strip_prefix("request.headers[")
        .and_then(|t| t.strip_suffix(']'))
        .and_then(string_literal)
        .filter(|name| !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok())
        .map(|name| name.to_ascii_lowercase())
}

fn read_logging(spec: LoggingSpec, path: &str) -> Result<Logging, String> {
    let modes = modes(
        spec.matcher.as_ref().and_then(|m| m.mode.as_deref()),
        &format!("{path}.match.mode"),
    )?;
    let filter = spec
        .filter
        .map(|f| code_filter(&f.expression, &format!("{path}.filter.expression")))
        .transpose()?;
    Ok(Logging {
        modes,
        providers: spec.providers.into_iter().map(|p| p.name).collect(),
        disabled: spec.disabled,
        filter,
    })
}

/// `filter.expression` in the forms Remora evaluates: comparisons of `response.code` with a
/// number, joined by `&&` or by `||` (not both).
fn code_filter(expression: &str, path: &str) -> Result<(Vec<proto::CodeCheck>, bool), String> {
    let unsupported = || {
        format!(
            "{path}: {expression:?} is not a filter Remora evaluates (comparisons of \
             response.code with a number, joined by && or by ||, such as \
             `response.code >= 400`)"
        )
    };
    let (parts, any): (Vec<&str>, bool) =
        match (expression.contains("&&"), expression.contains("||")) {
            (true, true) => return Err(unsupported()),
            (false, true) => (expression.split("||").collect(), true),
            _ => (expression.split("&&").collect(), false),
        };
    let mut checks = Vec::new();
    for part in parts {
        let rest = part
            .trim()
            .strip_prefix("response.code")
            .ok_or_else(unsupported)?
            .trim_start();
        let op = ["==", "!=", "<=", ">=", "<", ">"]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(unsupported)?;
        let code: u32 = rest[op.len()..].trim().parse().map_err(|_| unsupported())?;
        checks.push(proto::CodeCheck {
            op: op.to_owned(),
            code,
        });
    }
    Ok((checks, any))
}

impl Telemetry {
    /// Checks that every provider it names exists in `mesh` and provides what it is named for.
    pub(crate) fn check_providers(&self, mesh: &MeshConfig) -> Result<(), String> {
        for (i, metrics) in self.metrics.iter().enumerate() {
            for (j, name) in metrics.providers.iter().enumerate() {
                let at = format!("spec.metrics[{i}].providers[{j}]");
                match mesh.provider(name) {
                    Some(ProviderKind::Prometheus) => {}
                    Some(_) => return Err(format!("{at}: {name:?} does not provide metrics")),
                    None => return Err(format!("{at}: no extension provider {name:?}")),
                }
            }
        }
        for (i, logging) in self.logging.iter().enumerate() {
            if logging.providers.len() > 1 {
                return Err(format!(
                    "spec.accessLogging[{i}].providers: a sidecar writes one access log; name \
                     one provider"
                ));
            }
            for (j, name) in logging.providers.iter().enumerate() {
                let at = format!("spec.accessLogging[{i}].providers[{j}]");
                match mesh.provider(name) {
                    Some(ProviderKind::FileAccessLog(_)) => {}
                    Some(ProviderKind::Other(kind)) => {
                        return Err(format!(
                            "{at}: {name:?} is a {kind} provider; Remora writes access logs \
                             to files (envoyFileAccessLog)"
                        ))
                    }
                    Some(ProviderKind::Prometheus | ProviderKind::Tracing(_)) => {
                        return Err(format!("{at}: {name:?} does not provide access logs"))
                    }
                    None => return Err(format!("{at}: no extension provider {name:?}")),
                }
            }
        }
        self.check_tracing_providers(mesh)
    }

    fn check_tracing_providers(&self, mesh: &MeshConfig) -> Result<(), String> {
        for (i, tracing) in self.tracing.iter().enumerate() {
            let Some(name) = &tracing.provider else {
                continue;
            };
            let at = format!("spec.tracing[{i}].providers[0]");
            match mesh.provider(name) {
                Some(ProviderKind::Tracing(_)) => {}
                Some(ProviderKind::Other(kind)) => {
                    return Err(format!(
                        "{at}: {name:?} is a {kind} provider; Remora exports spans over \
                         OpenTelemetry (OTLP) or Zipkin"
                    ))
                }
                Some(_) => return Err(format!("{at}: {name:?} does not provide tracing")),
                None => return Err(format!("{at}: no extension provider {name:?}")),
            }
        }
        Ok(())
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|selector| {
            selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        })
    }
}

/// What the sidecar of a pod in `namespace` with `labels` records, from `all` the accepted
/// Telemetry resources and the mesh config.
pub(crate) fn resolve<'a>(
    all: impl IntoIterator<Item = &'a Telemetry>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    mesh: &MeshConfig,
    proxy: Option<&ProxyConfig>,
) -> proto::Telemetry {
    let mut all: Vec<&Telemetry> = all.into_iter().collect();
    all.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    let namespace_wide = |ns: &str| {
        all.iter()
            .find(|t| t.namespace == ns && t.selector.is_none())
            .copied()
    };
    let root = mesh.root_namespace();
    let mut chain: Vec<&Telemetry> = namespace_wide(root).into_iter().collect();
    if namespace != root {
        chain.extend(namespace_wide(namespace));
    }
    chain.extend(
        all.iter()
            .filter(|t| t.namespace == namespace && t.selects(labels))
            .copied(),
    );
    let mut client = side(&chain, mesh, |m| m.client);
    client.tracing = tracing(&chain, mesh, proxy, |m| m.client);
    let mut server = side(&chain, mesh, |m| m.server);
    server.tracing = tracing(&chain, mesh, proxy, |m| m.server);
    proto::Telemetry {
        client: Some(client),
        server: Some(server),
    }
}

/// One side of `chain`, merged in order.
fn side(
    chain: &[&Telemetry],
    mesh: &MeshConfig,
    on: impl Fn(Modes) -> bool,
) -> proto::TelemetrySide {
    let defaults = mesh.default_providers();
    let mut providers: Vec<String> = defaults
        .metrics
        .clone()
        .unwrap_or_else(|| vec![PROMETHEUS_PROVIDER.to_owned()]);
    // Per metric: disabled, removed tags, upserted tags.
    let mut merged: BTreeMap<&'static str, (bool, BTreeMap<String, Tag>)> = BTreeMap::new();
    for metrics in chain.iter().flat_map(|t| &t.metrics) {
        if !metrics.providers.is_empty() {
            providers.clone_from(&metrics.providers);
        }
        for o in metrics.overrides.iter().filter(|o| on(o.modes)) {
            for metric in &o.metrics {
                let entry = merged.entry(metric).or_default();
                if let Some(disabled) = o.disabled {
                    entry.0 = disabled;
                }
                for (tag, op) in &o.tags {
                    entry.1.insert(tag.clone(), op.clone());
                }
            }
        }
    }
    let metrics_disabled = !providers
        .iter()
        .any(|p| mesh.provider(p) == Some(ProviderKind::Prometheus));
    let metric_overrides = merged
        .into_iter()
        .map(|(metric, (disabled, tags))| {
            let mut out = proto::MetricOverride {
                metric: metric.to_owned(),
                disabled,
                ..proto::MetricOverride::default()
            };
            for (tag, op) in tags {
                match op {
                    Tag::Remove => out.remove_tags.push(tag),
                    Tag::Upsert(value) => {
                        out.tags.insert(tag, value);
                    }
                }
            }
            out
        })
        .collect();
    proto::TelemetrySide {
        metrics_disabled,
        metric_overrides,
        access_log: access_log(chain, mesh, &on),
        tracing: None,
    }
}

/// The tracing of one side, as istiod's `Tracing` merges it: the first
/// `defaultProviders.tracing` entry, then each rule for that side overriding what it sets.
/// Without any tracing rule (for either side) or default provider, the legacy tracer applies
/// (`enableTracing` with `defaultConfig.tracing.zipkin`). A side whose provider cannot be found,
/// or whose span reporting is disabled, does not trace at all: istiod then configures no
/// tracing, and trace headers pass through untouched.
fn tracing(
    chain: &[&Telemetry],
    mesh: &MeshConfig,
    proxy: Option<&ProxyConfig>,
    on: impl Fn(Modes) -> bool,
) -> Option<proto::TracingPolicy> {
    let rules: Vec<&Tracing> = chain.iter().flat_map(|t| &t.tracing).collect();
    let defaults = &mesh.default_providers().tracing;
    if rules.is_empty() && defaults.is_empty() {
        return Some(proto::TracingPolicy {
            sampling: mesh.tracing_sampling(proxy),
            provider: Some(mesh.legacy_tracer(proxy)?),
            ..proto::TracingPolicy::default()
        });
    }
    let mut merged = Tracing {
        provider: defaults.first().cloned(),
        ..Tracing::default()
    };
    for rule in rules.iter().filter(|t| on(t.modes)) {
        if rule.provider.is_some() {
            merged.provider.clone_from(&rule.provider);
        }
        merged.sampling = rule.sampling.or(merged.sampling);
        merged.disable_reporting = rule.disable_reporting.or(merged.disable_reporting);
        merged.disable_propagation = rule.disable_propagation.or(merged.disable_propagation);
        merged.istio_tags = rule.istio_tags.or(merged.istio_tags);
        if rule.custom_tags.is_some() {
            merged.custom_tags.clone_from(&rule.custom_tags);
        }
    }
    if merged.disable_reporting == Some(true) {
        return None;
    }
    let Some(ProviderKind::Tracing(provider)) = mesh.provider(merged.provider.as_deref()?) else {
        return None;
    };
    Some(proto::TracingPolicy {
        sampling: merged
            .sampling
            .unwrap_or_else(|| mesh.tracing_sampling(proxy)),
        propagation_disabled: merged.disable_propagation.unwrap_or(false),
        istio_tags_disabled: !merged.istio_tags.unwrap_or(true),
        custom_tags: merged.custom_tags.unwrap_or_default(),
        provider: Some(provider),
    })
}

/// The access log of one side: the last providers and settings the chain's rules for that
/// side set, over `defaultProviders.accessLogging`, and without any of those, the mesh's
/// legacy `accessLogFile`. A side writes one log: rules and `defaultProviders` naming several
/// are refused where they are read.
fn access_log(
    chain: &[&Telemetry],
    mesh: &MeshConfig,
    on: &impl Fn(Modes) -> bool,
) -> Option<proto::AccessLogPolicy> {
    let rules: Vec<&Logging> = chain
        .iter()
        .flat_map(|t| &t.logging)
        .filter(|l| on(l.modes))
        .collect();
    let defaults = &mesh.default_providers().access_logging;
    if rules.is_empty() && defaults.is_empty() {
        return mesh
            .access_log_file()
            .map(|path| mesh.legacy_access_log(path));
    }
    // As istiod's mergeLogs: each rule sets its providers (or keeps those in scope), and its
    // `disabled` and `filter` (unset: enabled, unfiltered) replace what earlier rules said.
    let mut providers = defaults.clone();
    let mut disabled = false;
    let mut filter = None;
    for rule in rules {
        if !rule.providers.is_empty() {
            providers.clone_from(&rule.providers);
        }
        disabled = rule.disabled.unwrap_or(false);
        filter.clone_from(&rule.filter);
    }
    if disabled {
        return None;
    }
    // One log per side: the first provider that writes one.
    let mut log = providers
        .iter()
        .find_map(|name| match mesh.provider(name) {
            Some(ProviderKind::FileAccessLog(log)) => Some(log),
            _ => None,
        })?;
    if let Some((checks, any)) = filter {
        log.checks = checks;
        log.any_check = any;
    }
    Some(log)
}

#[cfg(test)]
mod tests;
