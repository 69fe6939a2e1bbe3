//! Mutating admission as the API server runs it for the pods the launcher creates: the
//! `MutatingWebhookConfiguration`s say which webhooks a pod is sent to (their rules,
//! `namespaceSelector` and `objectSelector`); each is sent an `admission.k8s.io/v1`
//! AdmissionReview and its answer decides: refused, or the returned JSONPatch applied to the
//! pod. The configuration is the one `manifests/sidecar-injector.yaml` installs (compiled in),
//! unless the user's manifests hold their own, which then replace it, as applying theirs in a
//! cluster would.
//!
//! The decisions are pure ([`Webhooks::for_pod`], [`review`], [`admitted`]); sending the review
//! to the control plane is the caller's (see `control_plane`).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
    core::v1::Pod,
};
use remora_injector::{config::Catalog, inject::selector};
use serde_json::{json, Value};

/// What a cluster's install of Remora registers (`manifests/sidecar-injector.yaml`).
const DEFAULT_CONFIGURATION: (&str, &str) = (
    "manifests/sidecar-injector.yaml",
    include_str!("../../manifests/sidecar-injector.yaml"),
);
/// The label the API server gives every Namespace, naming it (selectable like any other).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The one Service webhooks are served by locally: the control plane's.
const CONTROL_PLANE_SERVICE: (&str, &str) = ("istio-system", "istiod");
/// The Service port the webhook configuration names (443, which the `istiod` Service sends to
/// the control plane's 15017).
const WEBHOOK_SERVICE_PORT: i32 = 443;

/// Why a pod was not admitted, as `kubectl` reports the API server's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("admission webhook {webhook:?} denied the request: {message}")]
    Denied { webhook: String, message: String },
    #[error("failed calling webhook {webhook:?}: {message}")]
    Failed { webhook: String, message: String },
}

/// The webhook configurations in force.
#[derive(Debug, Clone)]
pub struct Webhooks {
    configurations: Vec<MutatingWebhookConfiguration>,
}

impl Webhooks {
    /// Those of the user's manifests (`catalog`), else the one Remora installs.
    pub fn of(catalog: &Catalog) -> Self {
        let own: Vec<_> = catalog
            .accepted()
            .webhook_configurations()
            .cloned()
            .collect();
        if own.is_empty() {
            Self::installed()
        } else {
            Self {
                configurations: own,
            }
        }
    }

    /// The configuration `manifests/sidecar-injector.yaml` installs.
    pub fn installed() -> Self {
        let (origin, text) = DEFAULT_CONFIGURATION;
        let catalog = Catalog::build(vec![(origin.to_owned(), text.to_owned())]);
        Self {
            configurations: catalog
                .accepted()
                .webhook_configurations()
                .cloned()
                .collect(),
        }
    }

    /// The webhooks a new `pod` in a namespace with `namespace_labels` is sent to, in order:
    /// those whose rules cover creating pods and whose selectors both match.
    pub fn for_pod<'a>(
        &'a self,
        namespace_labels: &BTreeMap<String, String>,
        pod: &Pod,
    ) -> Vec<&'a MutatingWebhook> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let mut namespace_labels = namespace_labels.clone();
        namespace_labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace);
        let no_labels = BTreeMap::new();
        let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
        let selects = |selector: &Option<_>, labels: &BTreeMap<String, String>| {
            selector
                .as_ref()
                .is_none_or(|s| selector::matches(s, labels).unwrap_or(false))
        };
        self.configurations
            .iter()
            .flat_map(|configuration| configuration.webhooks.iter().flatten())
            .filter(|webhook| creates_pods(webhook))
            .filter(|webhook| selects(&webhook.namespace_selector, &namespace_labels))
            .filter(|webhook| selects(&webhook.object_selector, pod_labels))
            .collect()
    }
}

/// Whether one of `webhook`'s rules covers `CREATE` of core `v1` `pods`.
fn creates_pods(webhook: &MutatingWebhook) -> bool {
    let has = |list: &Option<Vec<String>>, value: &str| {
        list.iter()
            .flatten()
            .any(|item| item == value || item == "*")
    };
    webhook.rules.iter().flatten().any(|rule| {
        has(&rule.operations, "CREATE")
            && has(&rule.api_groups, "")
            && has(&rule.api_versions, "v1")
            && has(&rule.resources, "pods")
    })
}

/// The path to send `webhook`'s reviews to on the control plane's webhook port: it must name
/// the `istiod` Service in `istio-system` on port 443 (the only one served locally).
pub fn path_of(webhook: &MutatingWebhook) -> Result<String, AdmissionError> {
    let failed = |message: String| AdmissionError::Failed {
        webhook: webhook.name.clone(),
        message,
    };
    let service = webhook.client_config.service.as_ref().ok_or_else(|| {
        failed(
            "clientConfig: only a service reference (istiod in istio-system) is served locally"
                .to_owned(),
        )
    })?;
    let (namespace, name) = CONTROL_PLANE_SERVICE;
    let port = service.port.unwrap_or(WEBHOOK_SERVICE_PORT);
    if (service.namespace.as_str(), service.name.as_str(), port)
        != (namespace, name, WEBHOOK_SERVICE_PORT)
    {
        return Err(failed(format!(
            "clientConfig.service: {}/{}:{port}: only {namespace}/{name}:{WEBHOOK_SERVICE_PORT} \
             (the control plane) serves webhooks locally",
            service.namespace, service.name
        )));
    }
    Ok(service.path.clone().unwrap_or_else(|| "/".to_owned()))
}

/// The AdmissionReview the API server sends for creating `pod`, with request `uid`.
pub fn review(pod: &Pod, uid: &str) -> Vec<u8> {
    let pods = json!({"group": "", "version": "v1", "resource": "pods"});
    let kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": pods,
            "requestKind": kind,
            "requestResource": pods,
            "name": pod.metadata.name,
            "namespace": pod.metadata.namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
    .to_string()
    .into_bytes()
}

/// `pod` as webhook `webhook`'s answer `body` to the review with `uid` leaves it: refused, or
/// patched with the JSONPatch it returned (unchanged without one).
pub fn admitted(pod: &Pod, webhook: &str, uid: &str, body: &[u8]) -> Result<Pod, AdmissionError> {
    let failed = |message: String| AdmissionError::Failed {
        webhook: webhook.to_owned(),
        message,
    };
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
    let response = answer
        .get("response")
        .ok_or_else(|| failed("the answer has no response".to_owned()))?;
    if response.get("uid").and_then(Value::as_str) != Some(uid) {
        return Err(failed(format!(
            "the response's uid is not the request's ({uid})"
        )));
    }
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        let message = response
            .pointer("/status/message")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(AdmissionError::Denied {
            webhook: webhook.to_owned(),
            message: message.to_owned(),
        });
    }
    let Some(patch) = response.get("patch").and_then(Value::as_str) else {
        return Ok(pod.clone());
    };
    if response.get("patchType").and_then(Value::as_str) != Some("JSONPatch") {
        return Err(failed("patchType: only JSONPatch is defined".to_owned()));
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| failed(format!("patch: not base64: {e}")))?;
    let patch: json_patch::Patch = serde_json::from_slice(&patch)
        .map_err(|e| failed(format!("patch: not a JSONPatch: {e}")))?;
    let mut object =
        serde_json::to_value(pod).map_err(|e| failed(format!("the pod as JSON: {e}")))?;
    json_patch::patch(&mut object, &patch)
        .map_err(|e| failed(format!("patch: does not apply: {e}")))?;
    serde_json::from_value(object).map_err(|e| failed(format!("the patched pod: {e}")))
}

#[cfg(test)]
mod tests;
