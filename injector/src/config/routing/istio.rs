//! Istio's traffic kinds (`networking.istio.io/v1`, `v1beta1` and `v1alpha3` VirtualService and
//! DestinationRule): read and checked as Istio's validation webhook checks them, then translated
//! for one client sidecar into the route model of `routing.proto`: the HTTP route table of a
//! Service port, and the DestinationRule policy and subsets of a host's port.
//!
//! The translation follows what istiod generates for sidecars, not only what the API reference
//! says, since that is what applications meet: which of several VirtualServices for a host a
//! client gets, that a destination naming no port goes to the port the client called, that a
//! fault or mirror without a percentage applies to no request or to every request, that
//! port-level settings replace a DestinationRule's policy wholesale, and how DestinationRules
//! of several namespaces stand in for each other.
//!
//! What the sidecar cannot do yet (CORS, delegation, direct responses, TCP and TLS routes,
//! consistent hashing, TLS origination, most connection settings...) is rejected naming the
//! field rather than ignored: a route table that silently leaves out part of what was asked
//! for sends traffic where nobody meant it to go. Istio's defaults are written out in full
//! (retry conditions, outlier thresholds), so the sidecar never has to guess what an unset
//! field meant.
//!
//! Each kind is kept, looked up and read in its own module ([`virtual_service`],
//! [`destination_rule`]); both read from the objects as written ([`spec`]) with the same checks
//! ([`checks`], [`duration`], [`hosts`]), and both run what they keep through the sidecar's own
//! check ([`sidecar`]).

mod checks;
mod destination_rule;
mod duration;
mod hosts;
mod sidecar;
mod spec;
mod virtual_service;

use std::{cmp::Ordering, collections::BTreeMap};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use serde_json::Value;

pub(crate) use destination_rule::{destination_policy, DestinationRule};
use spec::{parse, DestinationRuleSpec, VirtualServiceSpec};
pub(crate) use virtual_service::{http_table, tcp_table, VirtualService};

/// The API versions the kinds are read in.
pub(crate) const API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

const KINDS: [&str; 2] = ["VirtualService", "DestinationRule"];

/// The gateway name that stands for every sidecar.
const MESH: &str = "mesh";

/// Whether `api_version` `kind` is read here.
pub(crate) fn is_istio_kind(api_version: &str, kind: &str) -> bool {
    API_VERSIONS.contains(&api_version) && KINDS.contains(&kind)
}

/// A traffic object as kept, checked and with its host names resolved.
#[derive(Debug, Clone)]
pub(crate) enum IstioObject {
    VirtualService(VirtualService),
    DestinationRule(Box<DestinationRule>),
}

/// Reads an object of `kind` whose `(namespace, name)` was already found; the error names the
/// field at fault (several problems are joined with `; `).
pub(crate) fn read(
    kind: &str,
    value: Value,
    namespace: &str,
    name: &str,
) -> Result<IstioObject, String> {
    let meta = |metadata: &ObjectMeta| Meta {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        created: metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    match kind {
        "VirtualService" => {
            let (metadata, spec) = parse::<VirtualServiceSpec>(value)?;
            virtual_service::read(meta(&metadata), spec).map(IstioObject::VirtualService)
        }
        "DestinationRule" => {
            let (metadata, spec) = parse::<DestinationRuleSpec>(value)?;
            destination_rule::read(meta(&metadata), spec)
                .map(|dr| IstioObject::DestinationRule(Box::new(dr)))
        }
        other => Err(format!(
            "kind: {other:?} is neither VirtualService nor DestinationRule"
        )),
    }
}

/// A client sidecar the config is computed for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) labels: &'a BTreeMap<String, String>,
    /// The mesh's root namespace (`MeshConfig.rootNamespace`), whose exported
    /// DestinationRules apply mesh-wide.
    pub(crate) root_namespace: &'a str,
}

/// What every object keeps of its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    namespace: String,
    name: String,
    created: Option<Timestamp>,
}

impl Meta {
    /// Istio's order among objects of a kind: the oldest first (one without a creation time
    /// counts as the oldest, as Go's zero time does), then by name, then by namespace.
    fn precedence(&self, other: &Meta) -> Ordering {
        self.created
            .cmp(&other.created)
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.namespace.cmp(&other.namespace))
    }

    fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests;
