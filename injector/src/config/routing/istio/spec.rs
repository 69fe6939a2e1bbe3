//! VirtualService and DestinationRule as written, field for field: what serde takes from a
//! manifest before anything is checked. Unknown fields are refused (`deny_unknown_fields`) so
//! that a misspelt field is reported rather than ignored; fields the sidecar cannot honour yet are
//! still declared (many as raw values), so that the readers can reject them by name.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use super::duration::Dur;
use crate::config::yaml;

/// An object with its spec; metadata is checked by `objects`.
#[derive(Deserialize)]
struct Object<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
}

pub(super) fn parse<S: serde::de::DeserializeOwned + Default>(
    value: Value,
) -> Result<(ObjectMeta, S), String> {
    let object: Object<S> = yaml::from_value(value).map_err(|e| e.to_string())?;
    Ok((object.metadata, object.spec.unwrap_or_default()))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct VirtualServiceSpec {
    pub(super) hosts: Option<Vec<String>>,
    pub(super) gateways: Option<Vec<String>>,
    pub(super) http: Option<Vec<HttpRouteSpec>>,
    pub(super) tls: Option<Vec<L4RouteSpec>>,
    pub(super) tcp: Option<Vec<L4RouteSpec>>,
    pub(super) export_to: Option<Vec<String>>,
}

/// A `tcp` or `tls` rule (`TCPRoute`, `TLSRoute`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct L4RouteSpec {
    #[serde(rename = "match")]
    pub(super) matches: Option<Vec<L4MatchSpec>>,
    pub(super) route: Option<Vec<L4DestinationSpec>>,
}

/// `L4MatchAttributes` and `TLSMatchAttributes` (which adds `sniHosts`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct L4MatchSpec {
    pub(super) sni_hosts: Option<Vec<String>>,
    pub(super) destination_subnets: Option<Vec<String>>,
    pub(super) port: Option<i64>,
    pub(super) source_labels: Option<BTreeMap<String, String>>,
    pub(super) gateways: Option<Vec<String>>,
    pub(super) source_namespace: Option<String>,
    pub(super) source_subnet: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct L4DestinationSpec {
    pub(super) destination: Option<DestinationSpec>,
    pub(super) weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpRouteSpec {
    /// Accepted: names the route in Envoy's stats and traces only.
    #[allow(dead_code)]
    pub(super) name: Option<String>,
    #[serde(rename = "match")]
    pub(super) matches: Option<Vec<MatchSpec>>,
    pub(super) route: Option<Vec<RouteDestinationSpec>>,
    pub(super) redirect: Option<RedirectSpec>,
    pub(super) direct_response: Option<Value>,
    pub(super) delegate: Option<Value>,
    pub(super) rewrite: Option<RewriteSpec>,
    pub(super) timeout: Option<Dur>,
    pub(super) retries: Option<RetrySpec>,
    pub(super) fault: Option<FaultSpec>,
    pub(super) mirror: Option<DestinationSpec>,
    pub(super) mirrors: Option<Vec<MirrorSpec>>,
    pub(super) mirror_percent: Option<i64>,
    pub(super) mirror_percentage: Option<PercentSpec>,
    pub(super) cors_policy: Option<CorsPolicySpec>,
    pub(super) headers: Option<HeadersSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MatchSpec {
    /// Accepted: names the route in Envoy's stats only.
    #[allow(dead_code)]
    pub(super) name: Option<String>,
    pub(super) uri: Option<StringMatchSpec>,
    pub(super) scheme: Option<StringMatchSpec>,
    pub(super) method: Option<StringMatchSpec>,
    pub(super) authority: Option<StringMatchSpec>,
    pub(super) headers: Option<BTreeMap<String, Option<StringMatchSpec>>>,
    pub(super) port: Option<i64>,
    pub(super) source_labels: Option<BTreeMap<String, String>>,
    pub(super) gateways: Option<Vec<String>>,
    pub(super) query_params: Option<BTreeMap<String, Option<StringMatchSpec>>>,
    pub(super) ignore_uri_case: Option<bool>,
    pub(super) without_headers: Option<BTreeMap<String, Option<StringMatchSpec>>>,
    pub(super) source_namespace: Option<String>,
    /// Accepted: Envoy's per-route stats, which Remora does not keep.
    #[allow(dead_code)]
    pub(super) stat_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StringMatchSpec {
    pub(super) exact: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RouteDestinationSpec {
    pub(super) destination: Option<DestinationSpec>,
    pub(super) weight: Option<i64>,
    pub(super) headers: Option<HeadersSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DestinationSpec {
    pub(super) host: Option<String>,
    pub(super) subset: Option<String>,
    pub(super) port: Option<PortSelectorSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortSelectorSpec {
    pub(super) number: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeadersSpec {
    pub(super) request: Option<HeaderOperationsSpec>,
    pub(super) response: Option<HeaderOperationsSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderOperationsSpec {
    pub(super) set: Option<BTreeMap<String, String>>,
    pub(super) add: Option<BTreeMap<String, String>>,
    pub(super) remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RedirectSpec {
    pub(super) uri: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) port: Option<i64>,
    pub(super) derive_port: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) redirect_code: Option<i64>,
    pub(super) prefix_rewrite: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RewriteSpec {
    pub(super) uri: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) uri_regex_rewrite: Option<RegexRewriteSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegexRewriteSpec {
    #[serde(rename = "match")]
    pub(super) pattern: Option<String>,
    pub(super) rewrite: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RetrySpec {
    pub(super) attempts: Option<i64>,
    pub(super) per_try_timeout: Option<Dur>,
    pub(super) retry_on: Option<String>,
    pub(super) retry_remote_localities: Option<bool>,
    pub(super) retry_ignore_previous_hosts: Option<bool>,
    pub(super) backoff: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FaultSpec {
    pub(super) delay: Option<DelaySpec>,
    pub(super) abort: Option<AbortSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DelaySpec {
    pub(super) percent: Option<i64>,
    pub(super) fixed_delay: Option<Dur>,
    pub(super) exponential_delay: Option<Dur>,
    pub(super) percentage: Option<PercentSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AbortSpec {
    pub(super) http_status: Option<i64>,
    pub(super) grpc_status: Option<String>,
    pub(super) http2_error: Option<String>,
    pub(super) percentage: Option<PercentSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MirrorSpec {
    pub(super) destination: Option<DestinationSpec>,
    pub(super) percentage: Option<PercentSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CorsPolicySpec {
    pub(super) allow_origins: Option<Vec<StringMatchSpec>>,
    /// Deprecated exact origins.
    pub(super) allow_origin: Option<Vec<String>>,
    pub(super) allow_methods: Option<Vec<String>>,
    pub(super) allow_headers: Option<Vec<String>>,
    pub(super) expose_headers: Option<Vec<String>>,
    pub(super) max_age: Option<Dur>,
    pub(super) allow_credentials: Option<bool>,
    pub(super) unmatched_preflights: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PercentSpec {
    pub(super) value: Option<f64>,
}

impl PercentSpec {
    pub(super) fn value(&self) -> f64 {
        self.value.unwrap_or(0.0)
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DestinationRuleSpec {
    pub(super) host: Option<String>,
    pub(super) traffic_policy: Option<TrafficPolicySpec>,
    pub(super) subsets: Option<Vec<SubsetSpec>>,
    pub(super) export_to: Option<Vec<String>>,
    pub(super) workload_selector: Option<SelectorSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SelectorSpec {
    pub(super) match_labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TrafficPolicySpec {
    pub(super) load_balancer: Option<LoadBalancerSpec>,
    pub(super) connection_pool: Option<ConnectionPoolSpec>,
    pub(super) outlier_detection: Option<OutlierDetectionSpec>,
    pub(super) tls: Option<TlsSpec>,
    pub(super) port_level_settings: Option<Vec<PortTrafficPolicySpec>>,
    pub(super) tunnel: Option<Value>,
    pub(super) proxy_protocol: Option<Value>,
    pub(super) retry_budget: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PortTrafficPolicySpec {
    pub(super) port: Option<PortSelectorSpec>,
    pub(super) load_balancer: Option<LoadBalancerSpec>,
    pub(super) connection_pool: Option<ConnectionPoolSpec>,
    pub(super) outlier_detection: Option<OutlierDetectionSpec>,
    pub(super) tls: Option<TlsSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SubsetSpec {
    pub(super) name: Option<String>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) traffic_policy: Option<TrafficPolicySpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LoadBalancerSpec {
    pub(super) simple: Option<String>,
    pub(super) consistent_hash: Option<Value>,
    pub(super) locality_lb_setting: Option<Value>,
    pub(super) zone_aware_lb_setting: Option<Value>,
    pub(super) warmup_duration_secs: Option<Value>,
    pub(super) warmup: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionPoolSpec {
    pub(super) tcp: Option<TcpSettingsSpec>,
    pub(super) http: Option<HttpSettingsSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TcpSettingsSpec {
    pub(super) max_connections: Option<i64>,
    pub(super) connect_timeout: Option<Value>,
    pub(super) tcp_keepalive: Option<Value>,
    pub(super) max_connection_duration: Option<Value>,
    pub(super) idle_timeout: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpSettingsSpec {
    pub(super) http1_max_pending_requests: Option<i64>,
    pub(super) http2_max_requests: Option<i64>,
    pub(super) max_requests_per_connection: Option<i64>,
    pub(super) max_retries: Option<i64>,
    pub(super) idle_timeout: Option<Value>,
    pub(super) h2_upgrade_policy: Option<String>,
    pub(super) use_client_protocol: Option<bool>,
    pub(super) max_concurrent_streams: Option<i64>,
    pub(super) http2_keep_alive: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct OutlierDetectionSpec {
    pub(super) consecutive_errors: Option<i64>,
    pub(super) split_external_local_origin_errors: Option<bool>,
    pub(super) consecutive_local_origin_failures: Option<Value>,
    pub(super) consecutive_gateway_errors: Option<i64>,
    pub(super) consecutive_5xx_errors: Option<i64>,
    pub(super) interval: Option<Dur>,
    pub(super) base_ejection_time: Option<Dur>,
    pub(super) max_ejection_percent: Option<i64>,
    pub(super) min_health_percent: Option<i64>,
    pub(super) outlier_detection_http_error_codes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TlsSpec {
    pub(super) mode: Option<String>,
    pub(super) client_certificate: Option<String>,
    pub(super) private_key: Option<String>,
    pub(super) ca_certificates: Option<String>,
    pub(super) credential_name: Option<Value>,
    pub(super) subject_alt_names: Option<Vec<String>>,
    pub(super) sni: Option<String>,
    pub(super) insecure_skip_verify: Option<bool>,
    pub(super) ca_crl: Option<Value>,
}
