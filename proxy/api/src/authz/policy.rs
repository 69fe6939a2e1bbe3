//! AuthorizationPolicy as the sidecar enforces it: the wire form checked and compiled once per
//! snapshot into matchers, with the form for connections that are not HTTP made then too.
//!
//! Every check Istio's validation makes on a policy's rules happens here, so the control plane
//! rejects a bad policy with the same reason a sidecar would NACK it with. Each problem names
//! its field the way the policy's YAML spells it (`rules[0].from[1].source.ipBlocks[0]`).

use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;

use crate::proto::config as proto;

use super::pattern::{parse_block, parse_port, PathMatch, StrMatch};

/// What a policy does when one of its rules matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    /// An external authorizer (ext_authz), which Remora does not support yet: requests its
    /// rules match are denied, as Istio does when it cannot reach the provider.
    Custom,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// One compiled AuthorizationPolicy.
#[derive(Debug)]
pub struct Policy {
    /// `namespace/name`.
    pub name: Arc<str>,
    pub action: Action,
    pub dry_run: bool,
    /// Why the control plane could not use it as written (it is then enforced in its most
    /// restrictive form).
    pub rejected: Option<String>,
    pub(crate) http: Vec<Rule>,
    /// The rules for connections that are not HTTP (see [`tcp_rules`]), each with the index of
    /// the rule it came from.
    pub(crate) tcp: Vec<(usize, Rule)>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Rule {
    pub(crate) from: Vec<Source>,
    pub(crate) to: Vec<Operation>,
    pub(crate) when: Vec<Condition>,
}

/// A field's values (ORed) and its `not` values (none may match); unset when both are empty.
#[derive(Clone, Debug)]
pub(crate) struct Field<T> {
    pub(crate) any: Vec<T>,
    pub(crate) none: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self {
            any: Vec::new(),
            none: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    pub(crate) fn is_set(&self) -> bool {
        !self.any.is_empty() || !self.none.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Source {
    pub(crate) principals: Field<StrMatch>,
    pub(crate) request_principals: Field<StrMatch>,
    pub(crate) namespaces: Field<StrMatch>,
    /// `(namespace, service account)`.
    pub(crate) service_accounts: Field<(Box<str>, Box<str>)>,
    pub(crate) ip_blocks: Field<IpNet>,
    pub(crate) remote_ip_blocks: Field<IpNet>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Operation {
    /// Lowercase patterns, matched ignoring case.
    pub(crate) hosts: Field<StrMatch>,
    pub(crate) ports: Field<u16>,
    pub(crate) methods: Field<StrMatch>,
    pub(crate) paths: Field<PathMatch>,
}

/// A `when` condition: a key and the values it is compared with.
#[derive(Clone, Debug)]
pub(crate) enum Condition {
    Header(HeaderName, Field<StrMatch>),
    SourceIp(Field<IpNet>),
    RemoteIp(Field<IpNet>),
    DestinationIp(Field<IpNet>),
    DestinationPort(Field<u16>),
    SourceNamespace(Field<StrMatch>),
    SourcePrincipal(Field<StrMatch>),
    /// `ns/sa` values.
    SourceServiceAccount(Field<StrMatch>),
    SourceTrustDomain(Field<StrMatch>),
    Sni(Field<StrMatch>),
    AuthPrincipal(Field<StrMatch>),
    AuthAudiences(Field<StrMatch>),
    AuthPresenter(Field<StrMatch>),
    /// `request.auth.claims[a][b]`: the path into the claims.
    AuthClaim(Vec<Box<str>>, Field<StrMatch>),
}

impl Condition {
    /// Whether only an HTTP request has what this condition looks at.
    fn is_http_only(&self) -> bool {
        matches!(
            self,
            Condition::Header(..)
                | Condition::AuthPrincipal(_)
                | Condition::AuthAudiences(_)
                | Condition::AuthPresenter(_)
                | Condition::AuthClaim(..)
        )
    }
}

/// Collects problems, each prefixed with the path of the field it concerns.
struct Problems<'a>(&'a mut Vec<String>);

impl Problems<'_> {
    fn push(&mut self, path: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{path}: {problem}"));
    }

    /// Parses each of `values` with `parse`, reporting failures as `path[i]`.
    fn parse_all<T>(
        &mut self,
        path: &str,
        values: &[String],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, value)| {
                parse(value)
                    .map_err(|e| self.push(&format!("{path}[{i}]"), e))
                    .ok()
            })
            .collect()
    }

    /// A field from its values and `not` values (named `name` and `notName` in YAML).
    fn field<T>(
        &mut self,
        path: &str,
        name: &str,
        values: &[String],
        not_values: &[String],
        parse: impl Fn(&str) -> Result<T, String> + Copy,
    ) -> Field<T> {
        let not_name = format!("not{}{}", name[..1].to_ascii_uppercase(), &name[1..]);
        Field {
            any: self.parse_all(&format!("{path}.{name}"), values, parse),
            none: self.parse_all(&format!("{path}.{not_name}"), not_values, parse),
        }
    }
}

impl Policy {
    /// Checks and compiles one policy; every problem is reported, each with its path.
    pub fn compile(policy: &proto::AuthorizationPolicy) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let mut p = Problems(&mut problems);
        let action = match policy.action.as_str() {
            "" | "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => Action::Custom,
            other => {
                p.push(
                    "action",
                    format!("{other:?} is not one of ALLOW, DENY, AUDIT, CUSTOM"),
                );
                Action::Allow
            }
        };
        match (action, policy.provider.is_empty()) {
            (Action::Custom, true) => p.push("provider", "required for a CUSTOM policy"),
            (Action::Custom, false) | (_, true) => {}
            (_, false) => p.push("provider", "only a CUSTOM policy names a provider"),
        }
        if matches!(action, Action::Deny | Action::Audit) && policy.rules.is_empty() {
            p.push(
                "rules",
                format!("a {} policy needs at least one rule", action.name()),
            );
        }
        let http: Vec<Rule> = policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(rule, &format!("rules[{i}]"), &policy.namespace, &mut p))
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let tcp = tcp_rules(action, &http);
        Ok(Policy {
            name: format!("{}/{}", policy.namespace, policy.name).into(),
            action,
            dry_run: policy.dry_run,
            rejected: Some(policy.rejected.clone()).filter(|r| !r.is_empty()),
            http,
            tcp,
        })
    }
}

fn compile_rule(rule: &proto::Rule, path: &str, namespace: &str, p: &mut Problems) -> Rule {
    Rule {
        from: rule
            .from
            .iter()
            .enumerate()
            .map(|(i, s)| compile_source(s, &format!("{path}.from[{i}].source"), namespace, p))
            .collect(),
        to: rule
            .to
            .iter()
            .enumerate()
            .map(|(i, o)| compile_operation(o, &format!("{path}.to[{i}].operation"), p))
            .collect(),
        when: rule
            .when
            .iter()
            .enumerate()
            .filter_map(|(i, c)| compile_condition(c, &format!("{path}.when[{i}]"), p))
            .collect(),
    }
}

fn compile_source(s: &proto::Source, path: &str, namespace: &str, p: &mut Problems) -> Source {
    let str_match = StrMatch::parse;
    let service_account = |text: &str| -> Result<(Box<str>, Box<str>), String> {
        let (ns, sa) = text.split_once('/').unwrap_or((namespace, text));
        if ns.is_empty() || sa.is_empty() || sa.contains('/') || text.contains('*') {
            return Err(format!(
                "{text:?} is not a service account (`namespace/name` or `name`)"
            ));
        }
        Ok((ns.into(), sa.into()))
    };
    let source = Source {
        principals: p.field(
            path,
            "principals",
            &s.principals,
            &s.not_principals,
            str_match,
        ),
        request_principals: p.field(
            path,
            "requestPrincipals",
            &s.request_principals,
            &s.not_request_principals,
            str_match,
        ),
        namespaces: p.field(
            path,
            "namespaces",
            &s.namespaces,
            &s.not_namespaces,
            str_match,
        ),
        service_accounts: p.field(
            path,
            "serviceAccounts",
            &s.service_accounts,
            &s.not_service_accounts,
            service_account,
        ),
        ip_blocks: p.field(
            path,
            "ipBlocks",
            &s.ip_blocks,
            &s.not_ip_blocks,
            parse_block,
        ),
        remote_ip_blocks: p.field(
            path,
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            parse_block,
        ),
    };
    let sets =
        |values: &[String], not_values: &[String]| !values.is_empty() || !not_values.is_empty();
    let accounts = sets(&s.service_accounts, &s.not_service_accounts);
    if accounts
        && (sets(&s.principals, &s.not_principals) || sets(&s.namespaces, &s.not_namespaces))
    {
        p.push(
            &format!("{path}.serviceAccounts"),
            "cannot be combined with principals or namespaces",
        );
    }
    if *s == proto::Source::default() {
        p.push(path, "must set at least one field");
    }
    source
}

fn compile_operation(o: &proto::Operation, path: &str, p: &mut Problems) -> Operation {
    let operation = Operation {
        hosts: p.field(
            path,
            "hosts",
            &o.hosts,
            &o.not_hosts,
            StrMatch::parse_ignoring_case,
        ),
        ports: p.field(path, "ports", &o.ports, &o.not_ports, parse_port),
        methods: p.field(path, "methods", &o.methods, &o.not_methods, StrMatch::parse),
        paths: p.field(path, "paths", &o.paths, &o.not_paths, PathMatch::parse),
    };
    if *o == proto::Operation::default() {
        p.push(path, "must set at least one field");
    }
    operation
}

fn compile_condition(c: &proto::Condition, path: &str, p: &mut Problems) -> Option<Condition> {
    if c.values.is_empty() && c.not_values.is_empty() {
        p.push(path, "needs values or notValues");
        return None;
    }
    let key = c.key.as_str();
    let strings =
        |p: &mut Problems| p.field(path, "values", &c.values, &c.not_values, StrMatch::parse);
    let blocks = |p: &mut Problems| p.field(path, "values", &c.values, &c.not_values, parse_block);
    let condition = match key {
        "source.ip" => Condition::SourceIp(blocks(p)),
        "remote.ip" => Condition::RemoteIp(blocks(p)),
        "destination.ip" => Condition::DestinationIp(blocks(p)),
        "destination.port" => Condition::DestinationPort(p.field(
            path,
            "values",
            &c.values,
            &c.not_values,
            parse_port,
        )),
        "source.namespace" => Condition::SourceNamespace(strings(p)),
        "source.principal" => Condition::SourcePrincipal(strings(p)),
        "source.serviceAccount" => Condition::SourceServiceAccount(strings(p)),
        "source.trustDomain" => Condition::SourceTrustDomain(strings(p)),
        "connection.sni" => Condition::Sni(strings(p)),
        "request.auth.principal" => Condition::AuthPrincipal(strings(p)),
        "request.auth.audiences" => Condition::AuthAudiences(strings(p)),
        "request.auth.presenter" => Condition::AuthPresenter(strings(p)),
        _ => {
            if let Some(name) =
                bracketed(key, "request.headers").and_then(|parts| match parts[..] {
                    [name] => Some(name),
                    _ => None,
                })
            {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(header) => Condition::Header(header, strings(p)),
                    Err(_) => {
                        p.push(
                            &format!("{path}.key"),
                            format!("{name:?} is not a header name"),
                        );
                        return None;
                    }
                }
            } else if let Some(claim) = bracketed(key, "request.auth.claims") {
                Condition::AuthClaim(claim.into_iter().map(Box::from).collect(), strings(p))
            } else if key.starts_with("experimental.envoy.filters.") {
                p.push(
                    &format!("{path}.key"),
                    format!("{key:?}: experimental Envoy filter metadata is not supported"),
                );
                return None;
            } else {
                p.push(
                    &format!("{path}.key"),
                    format!("{key:?} is not a supported key"),
                );
                return None;
            }
        }
    };
    Some(condition)
}

/// The non-empty bracketed parts after `prefix` (`request.auth.claims[a][b]` → `[a, b]`).
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<Vec<&'k str>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (part, tail) = inner.split_once(']')?;
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        rest = tail;
    }
    (!parts.is_empty()).then_some(parts)
}

/// The rules that apply to a connection that is not HTTP, as Istio builds its TCP filter: an
/// ALLOW (or AUDIT) rule naming anything only HTTP has is dropped whole, so it allows less; a
/// DENY (or CUSTOM) rule loses just those fields, so it denies more.
fn tcp_rules(action: Action, rules: &[Rule]) -> Vec<(usize, Rule)> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| match action {
            Action::Allow | Action::Audit => (!uses_http(rule)).then(|| (i, rule.clone())),
            Action::Deny | Action::Custom => Some((i, without_http(rule))),
        })
        .collect()
}

fn uses_http(rule: &Rule) -> bool {
    rule.from.iter().any(|s| s.request_principals.is_set())
        || rule
            .to
            .iter()
            .any(|o| o.hosts.is_set() || o.methods.is_set() || o.paths.is_set())
        || rule.when.iter().any(Condition::is_http_only)
}

fn without_http(rule: &Rule) -> Rule {
    Rule {
        from: rule
            .from
            .iter()
            .map(|s| Source {
                request_principals: Field::default(),
                ..s.clone()
            })
            .collect(),
        to: rule
            .to
            .iter()
            .map(|o| Operation {
                ports: o.ports.clone(),
                ..Operation::default()
            })
            .collect(),
        when: rule
            .when
            .iter()
            .filter(|c| !c.is_http_only())
            .cloned()
            .collect(),
    }
}
