//! Istio's security kinds (`security.istio.io/v1` and `v1beta1` PeerAuthentication,
//! AuthorizationPolicy and RequestAuthentication): read, checked, and selected per workload
//! into the [`Security`] part of its sidecar's snapshot.
//!
//! A policy is checked with the very compiler the sidecar uses (`remora_api`), so a policy the
//! control plane accepts is one every sidecar can apply, and a rejection names the same field a
//! sidecar's NACK would. A rejected policy is not simply dropped: that would widen access (a
//! DENY gone, an ALLOW gone so that "no ALLOW policy" allows everything). Whatever can still be
//! read of it (namespace, name, selector, action) is kept and enforced in its most restrictive
//! form: an ALLOW that matches nothing, a DENY (or CUSTOM) that matches everything, STRICT mTLS,
//! a RequestAuthentication that fails every token. The rejection says so.
//!
//! [`Security`]: remora_api::proto::config::Security

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use remora_api::{
    authz::Policy,
    jwt::Authentication,
    peer_authn::PeerAuthn,
    proto::config::{self as proto, Security},
};
use serde::Deserialize;
use serde_json::Value;

use super::yaml;

/// Marks a policy that is evaluated and reported but never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The API versions the security kinds are read in.
pub(crate) const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Which pods a policy applies to within its scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector(Option<BTreeMap<String, String>>);

impl Selector {
    /// Whether the policy names a workload selector (rather than its whole namespace).
    fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|labels| !labels.is_empty())
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .flatten()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// What every security policy shares.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    namespace: String,
    name: String,
    selector: Selector,
    created: Option<Timestamp>,
    /// `targetRef`/`targetRefs`: for gateways and waypoints, never for sidecars.
    targeted: bool,
}

impl Scope {
    /// Whether a pod in `namespace` with `labels` is selected, with `root` the mesh's root
    /// namespace (whose policies apply mesh-wide).
    fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>, root: &str) -> bool {
        !self.targeted
            && (self.namespace == namespace || self.namespace == root)
            && self.selector.selects(labels)
    }

    fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A security object as kept: usable as written, or in its most restrictive form with the
/// reason it was rejected.
#[derive(Debug, Clone)]
pub(crate) enum SecurityPolicy {
    Authorization(Scope, proto::AuthorizationPolicy),
    Peer(Scope, PeerMtls),
    Request(Scope, proto::RequestAuthentication),
}

/// A PeerAuthentication's modes, `None` meaning `UNSET` (inherit).
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerMtls {
    mode: Option<String>,
    ports: BTreeMap<u32, Option<String>>,
}

/// The outcome of reading one security object.
#[derive(Clone)]
pub(crate) struct Read {
    pub(crate) kept: SecurityPolicy,
    /// Why it is not used as written (a rejection), or a warning about how it is enforced.
    pub(crate) problem: Option<String>,
}

/// Reads a security object of `kind` whose `(namespace, name)` was already found.
pub(crate) fn read(kind: &str, value: Value, namespace: &str, name: &str) -> Read {
    let lenient = Lenient::of(&value);
    let scope = Scope {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        selector: lenient.selector.clone(),
        created: lenient.created,
        targeted: lenient.targeted,
    };
    let strict = match kind {
        "AuthorizationPolicy" => authorization(value, &scope),
        "PeerAuthentication" => peer(value, &scope),
        _ => request(value, &scope),
    };
    match strict {
        Ok((kept, warning)) => Read {
            kept,
            problem: warning,
        },
        Err(reason) => {
            let (kept, enforced) = restrictive(kind, scope, &lenient);
            Read {
                kept,
                problem: Some(format!("{reason} (enforced as {enforced} until fixed)")),
            }
        }
    }
}

/// What can be read of a policy even when the rest of it is wrong.
struct Lenient {
    selector: Selector,
    created: Option<Timestamp>,
    targeted: bool,
    action: Option<String>,
}

impl Lenient {
    fn of(value: &Value) -> Self {
        let spec = value.get("spec");
        let selector = spec
            .and_then(|s| s.get("selector"))
            .and_then(|s| serde_json::from_value::<SelectorSpec>(s.clone()).ok())
            .map(|s| Selector(Some(s.match_labels)))
            .unwrap_or_default();
        let created = value
            .get("metadata")
            .and_then(|m| serde_json::from_value::<ObjectMeta>(m.clone()).ok())
            .and_then(|m| m.creation_timestamp)
            .map(|t| t.0);
        let targeted =
            spec.is_some_and(|s| s.get("targetRef").is_some() || s.get("targetRefs").is_some());
        let action = spec
            .and_then(|s| s.get("action"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            selector,
            created,
            targeted,
            action,
        }
    }
}

/// The most restrictive form of a policy that could not be read, and how to say it.
fn restrictive(kind: &str, scope: Scope, lenient: &Lenient) -> (SecurityPolicy, &'static str) {
    match kind {
        "AuthorizationPolicy" => {
            let allow = matches!(lenient.action.as_deref(), None | Some("ALLOW" | "AUDIT"));
            let policy = proto::AuthorizationPolicy {
                namespace: scope.namespace.clone(),
                name: scope.name.clone(),
                action: if allow { "ALLOW" } else { "DENY" }.to_owned(),
                rules: if allow {
                    Vec::new()
                } else {
                    vec![proto::Rule::default()]
                },
                rejected: "the policy was rejected".to_owned(),
                ..Default::default()
            };
            let enforced = if allow {
                "an ALLOW policy matching nothing"
            } else {
                "a DENY policy matching everything"
            };
            (SecurityPolicy::Authorization(scope, policy), enforced)
        }
        "PeerAuthentication" => (
            SecurityPolicy::Peer(
                scope,
                PeerMtls {
                    mode: Some("STRICT".to_owned()),
                    ports: BTreeMap::new(),
                },
            ),
            "STRICT",
        ),
        _ => {
            let policy = proto::RequestAuthentication {
                namespace: scope.namespace.clone(),
                name: scope.name.clone(),
                jwt_rules: Vec::new(),
                rejected: "the policy was rejected".to_owned(),
            };
            (
                SecurityPolicy::Request(scope, policy),
                "failing every token",
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorSpec {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

/// An object with its spec, metadata checked by [`super::objects`].
#[derive(Deserialize)]
struct Object<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthorizationPolicySpec {
    selector: Option<SelectorSpec>,
    target_ref: Option<Value>,
    target_refs: Option<Vec<Value>>,
    action: Option<String>,
    provider: Option<ProviderSpec>,
    rules: Option<Vec<RuleSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderSpec {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    from: Option<Vec<FromSpec>>,
    to: Option<Vec<ToSpec>>,
    when: Option<Vec<proto::Condition>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromSpec {
    source: Option<proto::Source>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToSpec {
    operation: Option<proto::Operation>,
}

type Checked = Result<(SecurityPolicy, Option<String>), String>;

fn parse<S: serde::de::DeserializeOwned + Default>(
    value: Value,
) -> Result<(ObjectMeta, S), String> {
    let object: Object<S> = yaml::from_value(value).map_err(|e| e.to_string())?;
    Ok((object.metadata, object.spec.unwrap_or_default()))
}

fn check_selector(selector: &Option<SelectorSpec>, targeted: bool) -> Result<(), String> {
    if selector.is_some() && targeted {
        return Err("spec.selector: cannot be combined with targetRef or targetRefs".to_owned());
    }
    Ok(())
}

fn authorization(value: Value, scope: &Scope) -> Checked {
    let (metadata, spec): (ObjectMeta, AuthorizationPolicySpec) = parse(value)?;
    check_selector(
        &spec.selector,
        spec.target_ref.is_some() || spec.target_refs.is_some(),
    )?;
    let dry_run = match metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(format!(
                "metadata.annotations.{DRY_RUN_ANNOTATION}: {other:?} is neither \"true\" nor \"false\""
            ))
        }
    };
    let mut problems = Vec::new();
    let rules = spec
        .rules
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let path = format!("spec.rules[{i}]");
            let mut empty = |field: &str, present: bool| {
                if present {
                    problems.push(format!("{path}.{field}: must not be empty when set"));
                }
            };
            empty("from", rule.from.as_ref().is_some_and(Vec::is_empty));
            empty("to", rule.to.as_ref().is_some_and(Vec::is_empty));
            empty("when", rule.when.as_ref().is_some_and(Vec::is_empty));
            let from = rule.from.unwrap_or_default();
            let to = rule.to.unwrap_or_default();
            for (j, f) in from.iter().enumerate() {
                if f.source.is_none() {
                    problems.push(format!("{path}.from[{j}].source: required"));
                }
            }
            for (j, t) in to.iter().enumerate() {
                if t.operation.is_none() {
                    problems.push(format!("{path}.to[{j}].operation: required"));
                }
            }
            proto::Rule {
                from: from.into_iter().filter_map(|f| f.source).collect(),
                to: to.into_iter().filter_map(|t| t.operation).collect(),
                when: rule.when.unwrap_or_default(),
            }
        })
        .collect();
    let policy = proto::AuthorizationPolicy {
        namespace: scope.namespace.clone(),
        name: scope.name.clone(),
        action: spec.action.unwrap_or_default(),
        dry_run,
        rules,
        provider: spec.provider.map(|p| p.name).unwrap_or_default(),
        rejected: String::new(),
    };
    if let Err(found) = Policy::compile(&policy) {
        problems.extend(found.into_iter().map(|p| format!("spec.{p}")));
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let warning = (policy.action == "CUSTOM" && !scope.targeted).then(|| {
        format!(
            "CUSTOM is not supported yet: requests its rules match are denied (fail closed) \
             instead of asking provider {:?}",
            policy.provider
        )
    });
    Ok((
        SecurityPolicy::Authorization(scope.clone(), policy),
        warning,
    ))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerAuthenticationSpec {
    selector: Option<SelectorSpec>,
    mtls: Option<MtlsSpec>,
    port_level_mtls: Option<BTreeMap<String, MtlsSpec>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MtlsSpec {
    mode: Option<String>,
}

fn mode(spec: Option<MtlsSpec>, path: &str) -> Result<Option<String>, String> {
    match spec.and_then(|m| m.mode).as_deref() {
        None | Some("UNSET") => Ok(None),
        Some(mode @ ("STRICT" | "PERMISSIVE" | "DISABLE")) => Ok(Some(mode.to_owned())),
        Some(other) => Err(format!(
            "{path}: {other:?} is not one of UNSET, STRICT, PERMISSIVE, DISABLE"
        )),
    }
}

fn peer(value: Value, scope: &Scope) -> Checked {
    let (_, spec): (ObjectMeta, PeerAuthenticationSpec) = parse(value)?;
    let mut problems = Vec::new();
    let base = mode(spec.mtls, "spec.mtls.mode").unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    let mut ports = BTreeMap::new();
    let port_level = spec.port_level_mtls.unwrap_or_default();
    let selected = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !port_level.is_empty() && !selected {
        problems.push("spec.portLevelMtls: needs a workload selector".to_owned());
    }
    for (port, mtls) in port_level {
        let path = format!("spec.portLevelMtls[{port}]");
        match port.parse::<u16>().ok().filter(|p| *p != 0) {
            Some(number) => match mode(Some(mtls), &format!("{path}.mode")) {
                Ok(m) => {
                    ports.insert(u32::from(number), m);
                }
                Err(e) => problems.push(e),
            },
            None => problems.push(format!("{path}: {port:?} is not a port number")),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mtls = PeerMtls { mode: base, ports };
    Ok((SecurityPolicy::Peer(scope.clone(), mtls), None))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestAuthenticationSpec {
    selector: Option<SelectorSpec>,
    target_ref: Option<Value>,
    target_refs: Option<Vec<Value>>,
    jwt_rules: Option<Vec<proto::JwtRule>>,
}

fn request(value: Value, scope: &Scope) -> Checked {
    let (_, spec): (ObjectMeta, RequestAuthenticationSpec) = parse(value)?;
    check_selector(
        &spec.selector,
        spec.target_ref.is_some() || spec.target_refs.is_some(),
    )?;
    let mut problems = Vec::new();
    let rules = spec.jwt_rules.unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.jwtRules[{i}]");
        match (rule.jwks.is_empty(), rule.jwks_uri.is_empty()) {
            (false, false) => problems.push(format!("{path}: set jwks or jwksUri, not both")),
            (true, true) => problems.push(format!("{path}.jwksUri: jwks or jwksUri is required")),
            (true, false) => {
                let uri = &rule.jwks_uri;
                let scheme = uri.split_once("://").map(|(scheme, _)| scheme);
                if !matches!(scheme, Some("http" | "https")) || uri.parse::<http::Uri>().is_err() {
                    problems.push(format!("{path}.jwksUri: {uri:?} is not an http(s) URL"));
                }
            }
            (false, true) => {}
        }
        if rules[..i].iter().any(|r| r.issuer == rule.issuer) {
            problems.push(format!("{path}.issuer: {:?} is listed twice", rule.issuer));
        }
    }
    let policy = proto::RequestAuthentication {
        namespace: scope.namespace.clone(),
        name: scope.name.clone(),
        jwt_rules: rules,
        rejected: String::new(),
    };
    if let Err(found) = Authentication::compile(std::slice::from_ref(&policy)) {
        problems.extend(
            found
                .into_iter()
                .map(|p| p.replacen("requestAuthentications[0].", "spec.", 1)),
        );
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((SecurityPolicy::Request(scope.clone(), policy), None))
}

/// The policies that apply to a pod in `namespace` with `labels`, resolved: the winning
/// PeerAuthentication at each level, every AuthorizationPolicy and RequestAuthentication that
/// selects it.
pub(crate) fn select<'a>(
    policies: impl Iterator<Item = &'a SecurityPolicy> + Clone,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root: &str,
) -> Security {
    let mut security = Security {
        peer_authentication: Some(peer_for(policies.clone(), namespace, labels, root)),
        ..Security::default()
    };
    for policy in policies {
        match policy {
            SecurityPolicy::Authorization(scope, p)
                if scope.applies_to(namespace, labels, root) =>
            {
                security.authorization_policies.push(p.clone());
            }
            SecurityPolicy::Request(scope, p) if scope.applies_to(namespace, labels, root) => {
                security.request_authentications.push(p.clone());
            }
            _ => {}
        }
    }
    security
}

/// Istio's PeerAuthentication precedence: the workload's own policy (selector), then its
/// namespace's, then the mesh's (root namespace, no selector), each level's `UNSET` inheriting
/// from the next; among policies of one level the oldest wins, then the first by name.
fn peer_for<'a>(
    policies: impl Iterator<Item = &'a SecurityPolicy>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root: &str,
) -> proto::PeerAuthentication {
    let mut levels: [Option<(&Scope, &PeerMtls)>; 3] = [None, None, None];
    for policy in policies {
        let SecurityPolicy::Peer(scope, mtls) = policy else {
            continue;
        };
        let level = match (scope.namespace == namespace, scope.selector.is_set()) {
            (true, true) if scope.selector.selects(labels) => 0,
            (true, false) => 1,
            (false, false) if scope.namespace == root => 2,
            _ => continue,
        };
        let older = |(other, _): &(&Scope, &PeerMtls)| {
            (scope.created.is_none(), scope.created, &scope.name)
                < (other.created.is_none(), other.created, &other.name)
        };
        if levels[level].as_ref().is_none_or(older) {
            levels[level] = Some((scope, mtls));
        }
    }
    let decided = levels
        .iter()
        .flatten()
        .find_map(|(scope, mtls)| mtls.mode.as_ref().map(|mode| (scope, mode.clone())));
    let (policy, mode) = match decided {
        Some((scope, mode)) => (scope.full_name(), mode),
        None => (String::new(), String::new()),
    };
    let port_mtls = levels[0]
        .iter()
        .flat_map(|(_, mtls)| mtls.ports.iter())
        .map(|(port, port_mode)| proto::PortMtls {
            port: *port,
            mode: port_mode.clone().unwrap_or_else(|| mode.clone()),
        })
        .collect();
    let policy = match (levels[0], policy.is_empty()) {
        (Some((scope, mtls)), _) if !mtls.ports.is_empty() => scope.full_name(),
        _ => policy,
    };
    proto::PeerAuthentication {
        mode,
        port_mtls,
        policy,
    }
}

/// Whether a sidecar with `peer` takes mesh mTLS on workload port `port`: callers send in the
/// clear to a port whose mode is DISABLE.
pub(crate) fn takes_mtls(peer: &proto::PeerAuthentication, port: u16) -> bool {
    PeerAuthn::compile(peer)
        .map(|mtls| mtls.mode(port) != remora_api::peer_authn::MtlsMode::Disable)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests;
