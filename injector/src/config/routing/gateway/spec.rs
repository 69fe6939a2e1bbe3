//! HTTPRoute, GRPCRoute and ReferenceGrant as written, field for field: what serde takes from a
//! manifest before anything is checked. Unknown fields are refused here (`deny_unknown_fields`)
//! so that a misspelt field is reported rather than ignored; every other rule is the readers'.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::Value;

use crate::config::yaml;

/// An object with its spec; metadata is checked by [`crate::config::objects`].
#[derive(Deserialize)]
struct Object<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<S>,
}

pub(super) fn parse<S: DeserializeOwned>(value: Value) -> Result<(Option<Timestamp>, S), String> {
    let object: Object<S> = yaml::from_value(value).map_err(|e| e.to_string())?;
    let spec = object.spec.ok_or("spec: required")?;
    Ok((object.metadata.creation_timestamp.map(|t| t.0), spec))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpRouteSpec {
    pub(super) parent_refs: Option<Vec<ParentRefSpec>>,
    /// GEP-1294: mesh implementations infer nothing from it (Istio uses the Service's name).
    #[serde(rename = "hostnames")]
    _hostnames: Option<Vec<String>>,
    /// For gateways.
    #[serde(rename = "useDefaultGateways")]
    _use_default_gateways: Option<String>,
    pub(super) rules: Option<Vec<HttpRuleSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GrpcRouteSpec {
    pub(super) parent_refs: Option<Vec<ParentRefSpec>>,
    #[serde(rename = "hostnames")]
    _hostnames: Option<Vec<String>>,
    #[serde(rename = "useDefaultGateways")]
    _use_default_gateways: Option<String>,
    pub(super) rules: Option<Vec<GrpcRuleSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ParentRefSpec {
    pub(super) group: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) name: String,
    /// A Service's port name; Istio ignores it for Service parents (only `port` narrows them).
    #[serde(rename = "sectionName")]
    _section_name: Option<String>,
    pub(super) port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpRuleSpec {
    #[serde(rename = "name")]
    _name: Option<String>,
    pub(super) matches: Option<Vec<HttpMatchSpec>>,
    pub(super) filters: Option<Vec<FilterSpec>>,
    pub(super) backend_refs: Option<Vec<BackendRefSpec>>,
    pub(super) timeouts: Option<TimeoutsSpec>,
    pub(super) retry: Option<RetrySpec>,
    pub(super) session_persistence: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GrpcRuleSpec {
    #[serde(rename = "name")]
    _name: Option<String>,
    pub(super) matches: Option<Vec<GrpcMatchSpec>>,
    pub(super) filters: Option<Vec<FilterSpec>>,
    pub(super) backend_refs: Option<Vec<BackendRefSpec>>,
    pub(super) session_persistence: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpMatchSpec {
    pub(super) path: Option<PathMatchSpec>,
    pub(super) headers: Option<Vec<NamedMatchSpec>>,
    pub(super) query_params: Option<Vec<NamedMatchSpec>>,
    pub(super) method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PathMatchSpec {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) value: Option<String>,
}

/// A header or query parameter match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NamedMatchSpec {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrpcMatchSpec {
    pub(super) method: Option<GrpcMethodSpec>,
    pub(super) headers: Option<Vec<NamedMatchSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrpcMethodSpec {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) service: Option<String>,
    pub(super) method: Option<String>,
}

/// An HTTPRoute or GRPCRoute filter; which types a place accepts is `route::filters::Place`'s
/// call.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FilterSpec {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) request_header_modifier: Option<HeaderFilterSpec>,
    pub(super) response_header_modifier: Option<HeaderFilterSpec>,
    pub(super) request_mirror: Option<MirrorSpec>,
    pub(super) request_redirect: Option<RedirectSpec>,
    pub(super) url_rewrite: Option<RewriteSpec>,
    pub(super) cors: Option<Value>,
    pub(super) external_auth: Option<Value>,
    pub(super) extension_ref: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderFilterSpec {
    pub(super) set: Option<Vec<HeaderSpec>>,
    pub(super) add: Option<Vec<HeaderSpec>>,
    pub(super) remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderSpec {
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MirrorSpec {
    pub(super) backend_ref: ObjectRefSpec,
    pub(super) percent: Option<i64>,
    pub(super) fraction: Option<FractionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FractionSpec {
    pub(super) numerator: i64,
    pub(super) denominator: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RedirectSpec {
    pub(super) scheme: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) path: Option<PathModifierSpec>,
    pub(super) port: Option<u16>,
    pub(super) status_code: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RewriteSpec {
    pub(super) hostname: Option<String>,
    pub(super) path: Option<PathModifierSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PathModifierSpec {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) replace_full_path: Option<String>,
    pub(super) replace_prefix_match: Option<String>,
}

/// A `backendRefs[]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendRefSpec {
    pub(super) group: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) weight: Option<i64>,
    pub(super) filters: Option<Vec<FilterSpec>>,
}

/// A mirror's `backendRef`: a backend without weight or filters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectRefSpec {
    pub(super) group: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TimeoutsSpec {
    pub(super) request: Option<String>,
    pub(super) backend_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetrySpec {
    pub(super) codes: Option<Vec<i64>>,
    pub(super) attempts: Option<i64>,
    pub(super) backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReferenceGrantSpec {
    pub(super) from: Vec<GrantFromSpec>,
    pub(super) to: Vec<GrantToSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantFromSpec {
    #[serde(rename = "group")]
    _group: String,
    pub(super) kind: String,
    pub(super) namespace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantToSpec {
    #[serde(rename = "group")]
    _group: String,
    pub(super) kind: String,
    pub(super) name: Option<String>,
}
