//! The pod metadata injection adds, as Istio's does: the workload a pod belongs to (from its
//! owner, as istiod derives it), the canonical service labels, the mTLS label, the default
//! container annotations, the revision, and the `sidecar.istio.io/status` record of what was
//! added (which a later injection strips before injecting again).

use std::{collections::BTreeMap, sync::LazyLock};

use k8s_openapi::api::core::v1::Pod;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::well_known::SIDECAR_STATUS_ANNOTATION;

/// A pod's workload: a Deployment, a CronJob, ... or the pod itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub kind: String,
    pub api_version: String,
}

/// A Job a CronJob made: `<cronjob>-<schedule time>`.
static CRONJOB_JOB: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(.+)-\d{8,10}$").unwrap_or_else(|e| panic!("the job name pattern: {e}"))
});

impl Workload {
    /// The workload of `pod` in `namespace`, as istiod's `GetDeployMetaFromPod` finds it: a
    /// generated pod's controller, with a ReplicaSet's `-<pod-template-hash>` cut off (its
    /// Deployment) and a CronJob's Job mapped to the CronJob; else the pod itself.
    pub fn of_pod(pod: &Pod, namespace: &str) -> Self {
        let meta = &pod.metadata;
        let mut workload = Self {
            name: meta.name.clone().unwrap_or_default(),
            namespace: namespace.to_owned(),
            kind: "Pod".to_owned(),
            api_version: "v1".to_owned(),
        };
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true));
        if let (Some(_), Some(owner)) = (&meta.generate_name, controller) {
            workload.name = owner.name.clone();
            workload.kind = owner.kind.clone();
            workload.api_version = owner.api_version.clone();
            let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key));
            if owner.kind == "ReplicaSet" {
                if let Some(hash) = label("pod-template-hash") {
                    if let Some(name) = owner.name.strip_suffix(&format!("-{hash}")) {
                        workload.name = name.to_owned();
                        workload.kind = "Deployment".to_owned();
                    }
                }
            } else if owner.kind == "Job" {
                if let Some(captures) = CRONJOB_JOB.captures(&owner.name) {
                    workload.name = captures[1].to_owned();
                    workload.kind = "CronJob".to_owned();
                    workload.api_version = "batch/v1".to_owned();
                }
            }
        }
        if workload.name.is_empty() {
            workload.name = meta.name.clone().unwrap_or_default();
        }
        workload
    }

    /// `ISTIO_META_OWNER`: `kubernetes://apis/<apiVersion>/namespaces/<ns>/<kind>s/<name>`.
    pub fn owner(&self) -> String {
        let namespace = if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        };
        format!(
            "kubernetes://apis/{}/namespaces/{namespace}/{}s/{}",
            self.api_version,
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }
}

/// What an injection added, as `sidecar.istio.io/status` records it (Istio's JSON, key order
/// and `null` for an empty list included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub init_containers: Option<Vec<String>>,
    pub containers: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub image_pull_secrets: Option<Vec<String>>,
    pub revision: String,
}

impl Status {
    /// The status a pod carries, if it was injected before and the record can be read.
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<Self> {
        annotations
            .get(SIDECAR_STATUS_ANNOTATION)
            .and_then(|text| serde_json::from_str(text).ok())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The labels injection adds: `security.istio.io/tlsMode` and the canonical service name and
/// revision ([`canonical_service`], [`canonical_revision`]), each kept if the pod set it.
pub fn add_labels(labels: &mut BTreeMap<String, String>, workload: &Workload) {
    let name = canonical_service(labels, &workload.name);
    let revision = canonical_revision(labels);
    labels
        .entry("security.istio.io/tlsMode".to_owned())
        .or_insert_with(|| "istio".to_owned());
    labels.insert("service.istio.io/canonical-name".to_owned(), name);
    labels.insert("service.istio.io/canonical-revision".to_owned(), revision);
}

/// The first of `keys` that `labels` sets to something.
fn first_label(labels: &BTreeMap<String, String>, keys: [&str; 3]) -> Option<String> {
    keys.iter()
        .find_map(|key| labels.get(*key).filter(|v| !v.is_empty()).cloned())
}

/// A pod's canonical service, as Istio's injection template names it: its own
/// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else its
/// workload's name (at most 63 characters, without leading or trailing `-`, `_`, `.`).
pub fn canonical_service(labels: &BTreeMap<String, String>, workload: &str) -> String {
    let name = first_label(
        labels,
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or_else(|| workload.to_owned());
    let name: String = name.chars().take(63).collect();
    name.trim_matches(|c| matches!(c, '-' | '_' | '.'))
        .to_owned()
}

/// A pod's canonical revision: `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    first_label(
        labels,
        [
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or_else(|| "latest".to_owned())
}

/// The annotations injection adds besides the status: the revision, and the first app
/// container as `kubectl`'s default (unless the pod names one).
pub fn add_annotations(
    annotations: &mut BTreeMap<String, String>,
    revision: &str,
    first_app_container: Option<&str>,
) {
    annotations.insert("istio.io/rev".to_owned(), revision.to_owned());
    if let Some(app) = first_app_container {
        for key in [
            "kubectl.kubernetes.io/default-logs-container",
            "kubectl.kubernetes.io/default-container",
        ] {
            annotations
                .entry(key.to_owned())
                .or_insert_with(|| app.to_owned());
        }
    }
}
