//! The authorization decision: the policies that apply to a workload × what is known about a
//! connection (and, for HTTP, the request) → allow or deny, and what decided it.
//!
//! Istio's order: a matching CUSTOM policy denies (fail closed: Remora has no ext_authz yet),
//! then any matching DENY denies, then with no ALLOW policy everything is allowed, else a
//! matching ALLOW allows and anything else is denied. AUDIT and dry-run policies are evaluated
//! and reported, never enforced.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use http::HeaderMap;
use ipnet::IpNet;

use crate::{
    jwt::{claim_strings, Claims},
    spiffe::SpiffeId,
};

use super::{
    pattern::StrMatch,
    policy::{Action, Condition, Field, Operation, Policy, Rule, Source},
};

/// What is known about a connection once it is accepted.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionFacts<'a> {
    /// The caller's verified mesh identity; `None` for plaintext or the app's own TLS.
    pub peer: Option<&'a SpiffeId>,
    /// The direct caller's address.
    pub source: SocketAddr,
    /// The workload address and port the caller asked for.
    pub destination: SocketAddr,
    /// The server name the caller's mesh TLS asked for.
    pub sni: Option<&'a str>,
}

/// What is known about one HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Normalized, without the query.
    pub path: &'a str,
    /// `Host` or `:authority`, as sent.
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    /// The original client, from `X-Forwarded-For` as far as it is trusted ([`remote_ip`]).
    pub remote_ip: IpAddr,
    /// The claims of a valid JWT, when the request carried one.
    pub jwt: Option<&'a Claims>,
}

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// A policy rule that matched.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'p> {
    pub policy: &'p Policy,
    /// Its index in the policy's `rules`.
    pub rule: usize,
}

/// Which step of the decision order decided.
#[derive(Clone, Copy, Debug)]
pub enum DecidedBy<'p> {
    /// A CUSTOM policy matched: denied, as its provider cannot be asked.
    Custom(Matched<'p>),
    Deny(Matched<'p>),
    Allow(Matched<'p>),
    /// No ALLOW policy applies to the workload: allowed.
    NoAllowPolicy,
    /// ALLOW policies apply, none matched: denied.
    NoAllowMatched,
}

/// A decision and its explanation.
#[derive(Debug)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    pub by: DecidedBy<'p>,
    /// Dry-run policies that matched (never enforced).
    pub dry_run: Vec<Matched<'p>>,
    /// AUDIT policies that matched (never change the verdict).
    pub audit: Vec<Matched<'p>>,
}

impl Decision<'_> {
    /// The deciding policy's name, `-` when the default decided.
    pub fn policy(&self) -> &str {
        match self.by {
            DecidedBy::Custom(m) | DecidedBy::Deny(m) | DecidedBy::Allow(m) => &m.policy.name,
            DecidedBy::NoAllowPolicy | DecidedBy::NoAllowMatched => "-",
        }
    }
}

impl fmt::Display for Matched<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} policy {}, rule {}",
            self.policy.action.name(),
            self.policy.name,
            self.rule
        )?;
        if let Some(reason) = &self.policy.rejected {
            write!(f, " (enforced as its most restrictive form: {reason})")?;
        } else if self.policy.action == Action::Custom {
            write!(f, " (CUSTOM is not supported yet: fails closed)")?;
        }
        Ok(())
    }
}

impl fmt::Display for DecidedBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Custom(m) | DecidedBy::Deny(m) | DecidedBy::Allow(m) => m.fmt(f),
            DecidedBy::NoAllowPolicy => f.write_str("no ALLOW policy applies (allowed by default)"),
            DecidedBy::NoAllowMatched => f.write_str("no ALLOW policy matched (denied by default)"),
        }
    }
}

/// The AuthorizationPolicies that apply to one workload, grouped by the step that uses them.
#[derive(Debug, Default)]
pub struct Authorization {
    custom: Vec<Policy>,
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    audit: Vec<Policy>,
    dry_run: Vec<Policy>,
}

impl Authorization {
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut this = Self::default();
        for policy in policies {
            let group = match (policy.dry_run, policy.action) {
                (true, _) => &mut this.dry_run,
                (false, Action::Custom) => &mut this.custom,
                (false, Action::Deny) => &mut this.deny,
                (false, Action::Allow) => &mut this.allow,
                (false, Action::Audit) => &mut this.audit,
            };
            group.push(policy);
        }
        this
    }

    /// Whether no policy applies at all (every connection and request is allowed, nothing is
    /// reported), so callers can skip gathering facts.
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.dry_run.is_empty()
    }

    /// Decides a request (`Some`) or a connection that is not HTTP (`None`).
    pub fn decide<'p>(
        &'p self,
        conn: &ConnectionFacts<'_>,
        request: Option<&RequestFacts<'_>>,
    ) -> Decision<'p> {
        let facts = Facts {
            conn,
            request,
            peer: conn.peer.map(PeerParts::of),
        };
        let first = |policies: &'p [Policy]| policies.iter().find_map(|p| facts.first_match(p));
        let all = |policies: &'p [Policy]| -> Vec<Matched<'p>> {
            policies
                .iter()
                .filter_map(|p| facts.first_match(p))
                .collect()
        };
        let (verdict, by) = if let Some(m) = first(&self.custom) {
            (Verdict::Deny, DecidedBy::Custom(m))
        } else if let Some(m) = first(&self.deny) {
            (Verdict::Deny, DecidedBy::Deny(m))
        } else if self.allow.is_empty() {
            (Verdict::Allow, DecidedBy::NoAllowPolicy)
        } else if let Some(m) = first(&self.allow) {
            (Verdict::Allow, DecidedBy::Allow(m))
        } else {
            (Verdict::Deny, DecidedBy::NoAllowMatched)
        };
        Decision {
            verdict,
            by,
            dry_run: all(&self.dry_run),
            audit: all(&self.audit),
        }
    }
}

/// The direct caller's or the original client's address: the `numTrustedProxies`th address
/// from the right of `X-Forwarded-For` (Envoy's `xff_num_trusted_hops`), or the direct caller
/// when there are not that many or none are trusted.
pub fn remote_ip(headers: &HeaderMap, trusted_hops: u32, peer: IpAddr) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    // Several X-Forwarded-For lines read as one list, in order; hops count from its end.
    let hops = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    headers
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .nth(hops - 1)
        .and_then(|entry| entry.trim().parse().ok())
        .unwrap_or(peer)
}

struct Facts<'f, 'a> {
    conn: &'f ConnectionFacts<'a>,
    request: Option<&'f RequestFacts<'a>>,
    /// The peer identity's parts, split once per decision rather than per rule.
    peer: Option<PeerParts<'a>>,
}

#[derive(Clone, Copy)]
struct PeerParts<'a> {
    principal: &'a str,
    trust_domain: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

impl<'a> PeerParts<'a> {
    fn of(id: &'a SpiffeId) -> Self {
        Self {
            principal: id.principal(),
            trust_domain: id.trust_domain(),
            namespace: id.namespace(),
            service_account: id.service_account(),
        }
    }
}

impl Facts<'_, '_> {
    /// The first rule of `policy` that matches, for this kind of traffic.
    fn first_match<'p>(&self, policy: &'p Policy) -> Option<Matched<'p>> {
        let rule = match self.request {
            Some(_) => policy
                .http
                .iter()
                .enumerate()
                .find(|(_, rule)| self.rule(rule))
                .map(|(i, _)| i),
            None => policy
                .tcp
                .iter()
                .find(|(_, rule)| self.rule(rule))
                .map(|(i, _)| *i),
        }?;
        Some(Matched { policy, rule })
    }

    fn rule(&self, rule: &Rule) -> bool {
        (rule.from.is_empty() || rule.from.iter().any(|s| self.source(s)))
            && (rule.to.is_empty() || rule.to.iter().any(|o| self.operation(o)))
            && rule.when.iter().all(|c| self.condition(c))
    }

    fn source(&self, s: &Source) -> bool {
        let peer = self.peer;
        let remote = self.request.map_or(self.conn.source.ip(), |r| r.remote_ip);
        strings(&s.principals, peer.map(|p| p.principal))
            && strings(&s.namespaces, peer.map(|p| p.namespace))
            && check(&s.service_accounts, peer, |(ns, sa), peer| {
                peer.namespace == &**ns && peer.service_account == &**sa
            })
            && strings(
                &s.request_principals,
                self.jwt().map(|claims| claims.principal.as_str()),
            )
            && blocks(&s.ip_blocks, self.conn.source.ip())
            && blocks(&s.remote_ip_blocks, remote)
    }

    fn operation(&self, o: &Operation) -> bool {
        let request = self.request;
        check(&o.hosts, request.map(|r| r.host), |p, host| {
            p.matches_ignoring_case(host)
        }) && check(&o.ports, Some(self.conn.destination.port()), |p, port| {
            *p == port
        }) && strings(&o.methods, request.map(|r| r.method))
            && check(&o.paths, request.map(|r| r.path), |p, path| p.matches(path))
    }

    fn condition(&self, c: &Condition) -> bool {
        let peer = self.peer;
        match c {
            Condition::Header(name, field) => match self.request {
                Some(r) => any_value(field, || {
                    r.headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                }),
                None => strings(field, None),
            },
            Condition::SourceIp(field) => blocks(field, self.conn.source.ip()),
            Condition::RemoteIp(field) => blocks(
                field,
                self.request.map_or(self.conn.source.ip(), |r| r.remote_ip),
            ),
            Condition::DestinationIp(field) => blocks(field, self.conn.destination.ip()),
            Condition::DestinationPort(field) => {
                check(field, Some(self.conn.destination.port()), |p, port| {
                    *p == port
                })
            }
            Condition::SourceNamespace(field) => strings(field, peer.map(|p| p.namespace)),
            Condition::SourcePrincipal(field) => strings(field, peer.map(|p| p.principal)),
            Condition::SourceServiceAccount(field) => check(field, peer, |p, peer| {
                p.matches_joined(peer.namespace, peer.service_account)
            }),
            Condition::SourceTrustDomain(field) => strings(field, peer.map(|p| p.trust_domain)),
            Condition::Sni(field) => strings(field, self.conn.sni),
            Condition::AuthPrincipal(field) => {
                strings(field, self.jwt().map(|claims| claims.principal.as_str()))
            }
            Condition::AuthAudiences(field) => self.claim(field, &["aud"]),
            Condition::AuthPresenter(field) => self.claim(field, &["azp"]),
            Condition::AuthClaim(path, field) => self.claim(field, path),
        }
    }

    /// Whether the JWT claim at `path` passes `field`; no JWT or no such claim is a missing
    /// value.
    fn claim<K: AsRef<str>>(&self, field: &Field<StrMatch>, path: &[K]) -> bool {
        match self.jwt().and_then(|claims| claims.get(path)) {
            Some(value) => any_value(field, || claim_strings(value)),
            None => strings(field, None),
        }
    }

    fn jwt(&self) -> Option<&Claims> {
        self.request.and_then(|r| r.jwt)
    }
}

/// Whether `value` passes `field`: one of its values matches and none of its `not` values do.
/// A missing value matches no value (and so passes every `not` list).
fn check<T, V: Copy>(field: &Field<T>, value: Option<V>, matches: impl Fn(&T, V) -> bool) -> bool {
    match value {
        Some(value) => {
            (field.any.is_empty() || field.any.iter().any(|p| matches(p, value)))
                && !field.none.iter().any(|p| matches(p, value))
        }
        None => field.any.is_empty(),
    }
}

fn strings(field: &Field<StrMatch>, value: Option<&str>) -> bool {
    check(field, value, StrMatch::matches)
}

fn blocks(field: &Field<IpNet>, ip: IpAddr) -> bool {
    check(field, Some(ip), |block, ip| block.contains(&ip))
}

/// For a key with several values (a repeated header, a list claim): one value matches `values`,
/// and no value matches `notValues`; no value at all is a missing value.
fn any_value<'v, I: Iterator<Item = &'v str>>(
    field: &Field<StrMatch>,
    values: impl Fn() -> I,
) -> bool {
    if values().next().is_none() {
        return strings(field, None);
    }
    (field.any.is_empty() || values().any(|v| field.any.iter().any(|p| p.matches(v))))
        && !values().any(|v| field.none.iter().any(|p| p.matches(v)))
}
