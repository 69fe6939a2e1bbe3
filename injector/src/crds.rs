//! The CustomResourceDefinitions of the Istio kinds Remora reads, for clusters without Istio:
//! made from Remora's own types (kube's `CustomResource` derive), never copied from Istio's.
//!
//! Each kind is served in every version Istio serves it in, `v1` stored. A spec (and status)
//! keeps every field: the API server accepts whatever Istio's CRDs accept, and the control
//! plane, which reads each kind, rejects what it cannot honour naming the field (an API server
//! pruning unknown fields would drop them silently instead).

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    core::crd::{merge_crds, MergeError},
    CustomResourceExt,
};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A spec or status of any shape, kept whole.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Open(Map<String, Value>);

impl JsonSchema for Open {
    fn schema_name() -> Cow<'static, str> {
        "Open".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    }
}

/// Declares the kinds of one API version: `"Kind"(Spec): "group", "version", [short names],
/// "category";` (the derive names the kind's type after the string).
macro_rules! kinds {
    ($($kind:literal($spec:ident): $group:literal, $version:literal, [$($short:literal),*], $category:literal;)*) => {
        $(
            #[derive(kube::CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
            #[kube(
                group = $group,
                version = $version,
                kind = $kind,
                namespaced,
                status = "Open",
                $(shortname = $short,)*
                category = "istio-io",
                category = $category,
                crates(kube_core = "kube::core", k8s_openapi = "k8s_openapi", schemars = "schemars", serde = "serde", serde_json = "serde_json")
            )]
            pub struct $spec(Open);
        )*
    };
}

mod v1 {
    use super::*;

    kinds! {
        "AuthorizationPolicy"(AuthorizationPolicySpec): "security.istio.io", "v1", ["ap"], "security-istio-io";
        "PeerAuthentication"(PeerAuthenticationSpec): "security.istio.io", "v1", ["pa"], "security-istio-io";
        "RequestAuthentication"(RequestAuthenticationSpec): "security.istio.io", "v1", ["ra"], "security-istio-io";
        "VirtualService"(VirtualServiceSpec): "networking.istio.io", "v1", ["vs"], "networking-istio-io";
        "DestinationRule"(DestinationRuleSpec): "networking.istio.io", "v1", ["dr"], "networking-istio-io";
        "ServiceEntry"(ServiceEntrySpec): "networking.istio.io", "v1", ["se"], "networking-istio-io";
        "Sidecar"(SidecarSpec): "networking.istio.io", "v1", [], "networking-istio-io";
        "Telemetry"(TelemetrySpec): "telemetry.istio.io", "v1", ["telemetry"], "telemetry-istio-io";
    }
}

mod v1beta1 {
    use super::*;

    kinds! {
        "AuthorizationPolicy"(AuthorizationPolicySpec): "security.istio.io", "v1beta1", ["ap"], "security-istio-io";
        "PeerAuthentication"(PeerAuthenticationSpec): "security.istio.io", "v1beta1", ["pa"], "security-istio-io";
        "RequestAuthentication"(RequestAuthenticationSpec): "security.istio.io", "v1beta1", ["ra"], "security-istio-io";
        "VirtualService"(VirtualServiceSpec): "networking.istio.io", "v1beta1", ["vs"], "networking-istio-io";
        "DestinationRule"(DestinationRuleSpec): "networking.istio.io", "v1beta1", ["dr"], "networking-istio-io";
        "ServiceEntry"(ServiceEntrySpec): "networking.istio.io", "v1beta1", ["se"], "networking-istio-io";
        "Sidecar"(SidecarSpec): "networking.istio.io", "v1beta1", [], "networking-istio-io";
    }
}

mod v1alpha3 {
    use super::*;

    kinds! {
        "VirtualService"(VirtualServiceSpec): "networking.istio.io", "v1alpha3", ["vs"], "networking-istio-io";
        "DestinationRule"(DestinationRuleSpec): "networking.istio.io", "v1alpha3", ["dr"], "networking-istio-io";
        "ServiceEntry"(ServiceEntrySpec): "networking.istio.io", "v1alpha3", ["se"], "networking-istio-io";
        "Sidecar"(SidecarSpec): "networking.istio.io", "v1alpha3", [], "networking-istio-io";
    }
}

mod v1alpha1 {
    use super::*;

    kinds! {
        "Telemetry"(TelemetrySpec): "telemetry.istio.io", "v1alpha1", ["telemetry"], "telemetry-istio-io";
    }
}

/// Every CRD, one per kind with all its served versions, `v1` stored.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, MergeError> {
    let kinds: [Vec<CustomResourceDefinition>; 8] = [
        vec![
            v1::AuthorizationPolicy::crd(),
            v1beta1::AuthorizationPolicy::crd(),
        ],
        vec![
            v1::PeerAuthentication::crd(),
            v1beta1::PeerAuthentication::crd(),
        ],
        vec![
            v1::RequestAuthentication::crd(),
            v1beta1::RequestAuthentication::crd(),
        ],
        vec![
            v1::VirtualService::crd(),
            v1beta1::VirtualService::crd(),
            v1alpha3::VirtualService::crd(),
        ],
        vec![
            v1::DestinationRule::crd(),
            v1beta1::DestinationRule::crd(),
            v1alpha3::DestinationRule::crd(),
        ],
        vec![
            v1::ServiceEntry::crd(),
            v1beta1::ServiceEntry::crd(),
            v1alpha3::ServiceEntry::crd(),
        ],
        vec![
            v1::Sidecar::crd(),
            v1beta1::Sidecar::crd(),
            v1alpha3::Sidecar::crd(),
        ],
        vec![v1::Telemetry::crd(), v1alpha1::Telemetry::crd()],
    ];
    kinds
        .into_iter()
        .map(|versions| {
            let mut crd = merge_crds(versions, "v1")?;
            // Istio's objects may leave `spec` out (an AuthorizationPolicy that allows nothing).
            for version in &mut crd.spec.versions {
                if let Some(schema) = version
                    .schema
                    .as_mut()
                    .and_then(|s| s.open_api_v3_schema.as_mut())
                {
                    schema.required = None;
                }
            }
            Ok(crd)
        })
        .collect()
}

/// Why the CRDs could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum CrdsError {
    #[error("merging the versions of a kind: {0}")]
    Merge(#[from] MergeError),
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// Every CRD as one multi-document YAML file, as `manifests/crds.yaml` holds it.
pub fn crds_yaml() -> Result<String, CrdsError> {
    let mut text = String::from(HEADER);
    for crd in crds()? {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(&crd).map_err(|e| CrdsError::Yaml(e.to_string()))?);
    }
    Ok(text)
}

const HEADER: &str =
    "# The CustomResourceDefinitions of the Istio kinds Remora reads, for clusters without\n\
# Istio. Written by `remoractl crds > manifests/crds.yaml`; do not edit.\n";

#[cfg(test)]
mod tests;
