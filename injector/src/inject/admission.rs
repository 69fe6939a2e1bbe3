//! The admission webhook's decision, without the HTTP: an `admission.k8s.io/v1`
//! `AdmissionReview` of a Pod CREATE in, the review's response out (a base64 JSON patch from
//! the pod as sent to the pod injected, `uid` echoed), as istiod answers it. A pod the webhook
//! must not inject is allowed unchanged; a pod it cannot inject (a bad annotation) is refused
//! with the reason, as Istio refuses it; a review that is not one (malformed, another kind or
//! version) is an error the HTTP layer answers with 400.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Injector, Workload};

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// Why a body is not a review the webhook answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    #[error("apiVersion {0:?}: only admission.k8s.io/v1 AdmissionReviews are answered")]
    Version(String),
    #[error("{0}: only Pods are injected")]
    Kind(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: String,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    version: String,
    kind: String,
}

/// Where the webhook was asked to inject for (`/inject/cluster/<id>/net/<network>`, Istio's
/// path parameters), overriding the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams {
    pub cluster: Option<String>,
    pub network: Option<String>,
}

impl PathParams {
    /// The parameters of `path` (`/inject` has none; `--slash--` stands for `/` in a value).
    pub fn of(path: &str) -> Self {
        let mut params = Self::default();
        let rest = path
            .trim_end_matches('/')
            .splitn(3, '/')
            .nth(2)
            .unwrap_or_default();
        let parts: Vec<&str> = rest.split('/').collect();
        for pair in parts.chunks(2) {
            if let [key, value] = pair {
                let value = value.replace("--slash--", "/");
                match *key {
                    "cluster" => params.cluster = Some(value),
                    "net" => params.network = Some(value),
                    _ => {}
                }
            }
        }
        params
    }
}

/// The response to the review in `body` (JSON), as the whole `AdmissionReview` to send back.
pub fn review(injector: &Injector, body: &[u8], params: &PathParams) -> Result<Value, ReviewError> {
    let review: Review =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.kind != KIND {
        return Err(ReviewError::Malformed(format!("kind {:?}", review.kind)));
    }
    if review.api_version != API_VERSION {
        return Err(ReviewError::Version(review.api_version));
    }
    let request = review
        .request
        .ok_or_else(|| ReviewError::Malformed("no request".to_owned()))?;
    let gvk = &request.kind;
    if !(gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod") {
        let group = if gvk.group.is_empty() {
            "core"
        } else {
            &gvk.group
        };
        return Err(ReviewError::Kind(format!(
            "{group}/{}/{}",
            gvk.version, gvk.kind
        )));
    }
    let object = request
        .object
        .ok_or_else(|| ReviewError::Malformed("request.object: missing".to_owned()))?;
    let mut pod: Pod = serde_json::from_value(object)
        .map_err(|e| ReviewError::Malformed(format!("request.object: {e}")))?;
    pod.metadata.managed_fields = None;
    let response = |extra: Value| {
        let mut response = json!({"uid": request.uid, "allowed": true});
        if let (Value::Object(response), Value::Object(extra)) = (&mut response, extra) {
            response.extend(extra);
        }
        json!({"apiVersion": API_VERSION, "kind": KIND, "response": response})
    };
    let namespace = if request.namespace.is_empty() {
        pod.metadata.namespace.clone().unwrap_or_default()
    } else {
        request.namespace.clone()
    };
    let empty = Default::default();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let required = injector.required(
        &namespace,
        pod.metadata.labels.as_ref().unwrap_or(&empty),
        pod.metadata.annotations.as_ref().unwrap_or(&empty),
        host_network,
    );
    if required.is_err() {
        return Ok(response(json!({})));
    }
    let workload = Workload::of_pod(&pod, &namespace);
    let adjusted;
    let injector = if *params == PathParams::default() {
        injector
    } else {
        adjusted = injector.for_cluster(params.cluster.as_deref(), params.network.as_deref());
        &adjusted
    };
    let injected = match injector.inject(&pod, &workload) {
        Ok(mut injected) => {
            // The webhook's own additions (kube-inject leaves them out, as istioctl does).
            let annotations = injected
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            for (key, value) in injector.injected_annotations() {
                annotations.insert(key.clone(), value.clone());
            }
            injected
        }
        Err(error) => {
            return Ok(response(json!({
                "allowed": false,
                "status": {"metadata": {}, "message": format!("failed to inject the sidecar: {error}")},
            })))
        }
    };
    // Both sides as this crate writes a Pod, so the patch holds only what injection changed
    // (fields of the sent object this crate does not model are never touched).
    let before = serde_json::to_value(&pod)
        .map_err(|e| ReviewError::Malformed(format!("request.object: {e}")))?;
    let after = serde_json::to_value(&injected)
        .map_err(|e| ReviewError::Malformed(format!("the injected pod: {e}")))?;
    let patch = serde_json::to_vec(&json_patch::diff(&before, &after))
        .map_err(|e| ReviewError::Malformed(format!("the patch: {e}")))?;
    Ok(response(json!({
        "patch": base64::engine::general_purpose::STANDARD.encode(patch),
        "patchType": "JSONPatch",
    })))
}

#[cfg(test)]
mod tests;
