//! DestinationRules: the object as kept once read (host resolved, policies translated), and the
//! policy and subsets a client gets for a host's port ([`destination_policy`]). Which rule that is
//! is [`lookup`]'s question; a `trafficPolicy` is [`policy`]'s, its blocks [`settings`]'.

mod lookup;
mod policy;
mod settings;

use std::collections::{BTreeMap, BTreeSet};

use remora_api::proto::config as proto;

use super::{
    checks::{check_labels, check_wildcard_domain, export_to, is_dns1123_label, Problems},
    hosts::resolve_host,
    sidecar::sidecar_problems,
    spec::DestinationRuleSpec,
    Client, Meta,
};
use lookup::{lookup, Consolidated};
use policy::{traffic_policy, Policy};

/// A DestinationRule as kept: checked, its host resolved.
#[derive(Debug, Clone)]
pub(crate) struct DestinationRule {
    meta: Meta,
    pub(super) host: String,
    /// `exportTo` as written (`.` kept), `{.}` for a rule with a workload selector, which Istio
    /// never exports; empty: the mesh default, everywhere.
    export_to: BTreeSet<String>,
    selector: Option<BTreeMap<String, String>>,
    policy: Option<Policy>,
    subsets: Vec<SubsetRule>,
}

impl DestinationRule {
    /// The label keys its `workloadSelector` looks at.
    pub(crate) fn label_keys(&self) -> impl Iterator<Item = &str> {
        self.selector
            .iter()
            .flat_map(|s| s.keys().map(String::as_str))
    }

    /// Only visible in its own namespace (Istio's `isPrivateOnly`).
    fn private_only(&self) -> bool {
        self.export_to.len() == 1
            && (self.export_to.contains(".") || self.export_to.contains(&self.meta.namespace))
    }

    /// Among the rules a client of its own namespace looks at first.
    fn namespace_local(&self) -> bool {
        self.export_to.is_empty()
            || ["*", ".", self.meta.namespace.as_str()]
                .iter()
                .any(|e| self.export_to.contains(*e))
    }
}

#[derive(Debug, Clone)]
struct SubsetRule {
    name: String,
    labels: BTreeMap<String, String>,
    policy: Option<Policy>,
}

/// The DestinationRule policy for `hostname` port `port` as `client` sees it: the port's
/// policy, and every subset with its policy merged over the port's.
///
/// This is Istio's lookup: rules are consolidated per namespace and host (the oldest rule
/// with a policy gives it, subsets are pooled, rules with other `exportTo` or selectors stay
/// apart);
/// the client looks in its own namespace first, then among what the host's namespace exports
/// to it, then among what the root namespace does, each time at the most specific host only;
/// of what it finds, a rule of its own namespace whose workload selector it matches wins, else
/// the last found without a selector.
pub(crate) fn destination_policy(
    rules: &[&DestinationRule],
    hostname: &str,
    port: u16,
    client: &Client,
) -> (Option<proto::TrafficPolicy>, Vec<proto::Subset>) {
    let hostname = hostname.to_ascii_lowercase();
    let mut sorted = rules.to_vec();
    sorted.sort_by(|a, b| {
        b.selector
            .is_some()
            .cmp(&a.selector.is_some())
            .then_with(|| a.meta.precedence(&b.meta))
    });
    match lookup(&sorted, &hostname, client) {
        Some(rule) => rule.for_port(port),
        None => (None, Vec::new()),
    }
}

/// Checks a DestinationRule and keeps it with its host resolved and its policies translated.
pub(super) fn read(meta: Meta, spec: DestinationRuleSpec) -> Result<DestinationRule, String> {
    let mut p = Problems::default();
    let host = spec.host.unwrap_or_default();
    if let Err(e) = check_wildcard_domain(&host) {
        p.add("spec.host", e);
    }
    let selector = spec.workload_selector.map(|selector| {
        let labels = selector.match_labels.unwrap_or_default();
        for (key, value) in &labels {
            let path = format!("spec.workloadSelector.matchLabels.{key}");
            if key.is_empty() {
                p.add(&path, "the label name must not be empty");
            }
            if key.contains('*') || value.contains('*') {
                p.add(&path, "wildcards are not supported in selectors");
            }
        }
        labels
    });
    let policy = spec
        .traffic_policy
        .map(|policy| traffic_policy(policy, "spec.trafficPolicy", &mut p));
    let mut names = BTreeSet::new();
    let subsets = spec
        .subsets
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, subset)| {
            let path = format!("spec.subsets[{i}]");
            let name = subset.name.unwrap_or_default();
            if name.is_empty() {
                p.add(&format!("{path}.name"), "required");
            } else if !is_dns1123_label(&name) {
                p.add(
                    &format!("{path}.name"),
                    format!("{name:?} is not a subset name"),
                );
            }
            if !names.insert(name.clone()) {
                p.add(&format!("{path}.name"), format!("{name:?} is listed twice"));
            }
            let labels = subset.labels.unwrap_or_default();
            check_labels(&labels, &format!("{path}.labels"), &mut p);
            let policy = subset
                .traffic_policy
                .map(|policy| traffic_policy(policy, &format!("{path}.trafficPolicy"), &mut p));
            SubsetRule {
                name,
                labels,
                policy,
            }
        })
        .collect();
    let mut export_to = export_to(
        &spec.export_to.unwrap_or_default(),
        &meta.namespace,
        selector.is_some(),
        "spec.exportTo",
        &mut p,
    );
    if selector.is_some() {
        export_to = BTreeSet::from([".".to_owned()]);
    }
    let host = resolve_host(&host, &meta.namespace);
    let rule = DestinationRule {
        meta,
        host,
        export_to,
        selector,
        policy,
        subsets,
    };
    if p.0.is_empty() {
        check_policies_with_sidecar(&rule, &mut p);
    }
    p.finish(rule)
}

/// The sidecar's check (see [`sidecar_problems`]) of a DestinationRule's policies, on each port
/// it names and on one it does not.
fn check_policies_with_sidecar(rule: &DestinationRule, p: &mut Problems) {
    let mut numbers: BTreeSet<u16> = rule
        .policy
        .iter()
        .flat_map(|policy| &policy.ports)
        .chain(
            rule.subsets
                .iter()
                .filter_map(|s| s.policy.as_ref())
                .flat_map(|policy| &policy.ports),
        )
        .filter_map(|(number, _)| u16::try_from(*number).ok())
        .collect();
    if let Some(other) = (1..=u16::MAX).find(|n| !numbers.contains(n)) {
        numbers.insert(other);
    }
    let alone = Consolidated {
        first: rule,
        export_to: &rule.export_to,
        policy: rule.policy.as_ref().map(|policy| (policy, &rule.meta)),
        subsets: rule.subsets.iter().map(|s| (s, &rule.meta)).collect(),
    };
    let ports = numbers
        .into_iter()
        .map(|number| {
            let (traffic_policy, subsets) = alone.for_port(number);
            proto::ServicePort {
                port: u32::from(number),
                traffic_policy,
                subsets,
                ..Default::default()
            }
        })
        .collect();
    for (path, problem) in sidecar_problems(ports) {
        p.add("spec", format!("the sidecar refuses it: {path}: {problem}"));
    }
}
