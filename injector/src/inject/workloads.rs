//! Injection of manifests, as `istioctl kube-inject` does it (`remoractl kube-inject` is this
//! plus files): a multi-document YAML stream in, the same stream out with every Pod and every
//! workload's pod template injected (Deployment, ReplicaSet, StatefulSet, DaemonSet,
//! ReplicationController, Job, CronJob, and the items of a `List`), in document order. Every
//! other document is passed through as written. A pod that opts out (or runs on the host's
//! network, or lives in a namespace Kubernetes owns) is left as it is, with a note saying why.
//! One bad document fails the whole stream, so nothing half-injected is ever printed.

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Pod, PodTemplateSpec, ReplicationController},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Metadata, Resource,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::{InjectError, Injector, Workload};

/// Why a manifest stream cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: not valid YAML: {reason}")]
    Syntax { document: usize, reason: String },
    #[error("document {document} ({object}): {reason}")]
    Object {
        document: usize,
        object: String,
        reason: String,
    },
    #[error("document {document} ({object}): {source}")]
    Inject {
        document: usize,
        object: String,
        #[source]
        source: InjectError,
    },
}

/// A stream, injected, and a note for each pod left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub text: String,
    pub skipped: Vec<String>,
}

/// Injects every pod (template) in the `---`-separated `text`.
pub fn inject_manifests(injector: &Injector, text: &str) -> Result<Injected, ManifestError> {
    let mut out = String::new();
    let mut skipped = Vec::new();
    for (index, raw) in split_documents(text).into_iter().enumerate() {
        let document = index + 1;
        let value: Value = serde_saphyr::from_str(raw).map_err(|e| ManifestError::Syntax {
            document,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let mut doc = Doc {
            injector,
            document,
            skipped: &mut skipped,
        };
        match doc.object(&value)? {
            Some(injected) => out.push_str(&injected),
            None => {
                out.push_str(raw.trim_end_matches('\n'));
                out.push('\n');
            }
        }
        out.push_str("---\n");
    }
    Ok(Injected { text: out, skipped })
}

/// The documents of a YAML stream, as written: split at `---` lines.
fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            documents.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents
        .into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

struct Doc<'a> {
    injector: &'a Injector,
    document: usize,
    skipped: &'a mut Vec<String>,
}

impl Doc<'_> {
    /// `value` injected as YAML, or `None` when it is not a kind that has pods (or a `List`
    /// holding none).
    fn object(&mut self, value: &Value) -> Result<Option<String>, ManifestError> {
        let kind = (
            value["apiVersion"].as_str().unwrap_or_default(),
            value["kind"].as_str().unwrap_or_default(),
        );
        let yaml = match kind {
            ("v1", "Pod") => self.typed::<Pod>(value, |pod| Some(PodParts::Pod(pod)))?,
            ("v1", "ReplicationController") => self
                .typed::<ReplicationController>(value, |rc| {
                    rc.spec.as_mut()?.template.as_mut().map(PodParts::Template)
                })?,
            ("apps/v1", "Deployment") => self.typed::<Deployment>(value, |d| {
                d.spec.as_mut().map(|s| PodParts::Template(&mut s.template))
            })?,
            ("apps/v1", "ReplicaSet") => self.typed::<ReplicaSet>(value, |r| {
                r.spec.as_mut()?.template.as_mut().map(PodParts::Template)
            })?,
            ("apps/v1", "StatefulSet") => self.typed::<StatefulSet>(value, |s| {
                s.spec.as_mut().map(|s| PodParts::Template(&mut s.template))
            })?,
            ("apps/v1", "DaemonSet") => self.typed::<DaemonSet>(value, |d| {
                d.spec.as_mut().map(|s| PodParts::Template(&mut s.template))
            })?,
            ("batch/v1", "Job") => self.typed::<Job>(value, |j| {
                j.spec.as_mut().map(|s| PodParts::Template(&mut s.template))
            })?,
            ("batch/v1", "CronJob") => self.typed::<CronJob>(value, |c| {
                let job = c.spec.as_mut()?.job_template.spec.as_mut()?;
                Some(PodParts::Template(&mut job.template))
            })?,
            ("v1", "List") => {
                let Some(items) = value["items"].as_array() else {
                    return Ok(None);
                };
                let mut injected = Vec::with_capacity(items.len());
                let mut changed = false;
                for item in items {
                    match self.object(item)? {
                        Some(yaml) => {
                            changed = true;
                            let item: Value = serde_saphyr::from_str(&yaml).map_err(|e| {
                                self.object_error(
                                    item,
                                    format!("re-reading the injected item: {e}"),
                                )
                            })?;
                            injected.push(item);
                        }
                        None => injected.push(item.clone()),
                    }
                }
                if !changed {
                    return Ok(None);
                }
                let mut list = value.clone();
                list["items"] = Value::Array(injected);
                Some(to_yaml(&list).map_err(|e| self.object_error(value, e))?)
            }
            _ => None,
        };
        Ok(yaml)
    }

    /// Reads `value` as `T`, injects the pod `pod_of` finds in it, and writes it back.
    fn typed<T>(
        &mut self,
        value: &Value,
        pod_of: impl FnOnce(&mut T) -> Option<PodParts<'_>>,
    ) -> Result<Option<String>, ManifestError>
    where
        T: DeserializeOwned + Serialize + Resource + Metadata<Ty = ObjectMeta>,
    {
        let mut object: T = serde_json::from_value(value.clone())
            .map_err(|e| self.object_error(value, e.to_string()))?;
        let meta = object.metadata().clone();
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let described = describe(T::KIND, &namespace, &name);
        let workload = Workload {
            name,
            namespace: namespace.clone(),
            kind: T::KIND.to_owned(),
            api_version: T::API_VERSION.to_owned(),
        };
        let Some(parts) = pod_of(&mut object) else {
            return Err(self.object_error(value, "spec.template is required".to_owned()));
        };
        let injected = match parts {
            PodParts::Pod(pod) => {
                let workload = Workload::of_pod(pod, &namespace);
                self.inject_pod(pod, &workload, &described)?
            }
            PodParts::Template(template) => {
                let mut pod = Pod {
                    metadata: template.metadata.clone().unwrap_or_default(),
                    spec: template.spec.clone(),
                    ..Pod::default()
                };
                let pod_namespace = pod.metadata.namespace.clone().unwrap_or(namespace);
                let workload = Workload {
                    namespace: pod_namespace,
                    ..workload
                };
                let injected = self.inject_pod(&mut pod, &workload, &described)?;
                if injected {
                    template.metadata = Some(pod.metadata);
                    template.spec = pod.spec;
                }
                injected
            }
        };
        if !injected {
            return Ok(None);
        }
        to_yaml(&object)
            .map(Some)
            .map_err(|e| self.object_error(value, e))
    }

    /// Injects `pod` in place unless it opts out; whether it was injected.
    fn inject_pod(
        &mut self,
        pod: &mut Pod,
        workload: &Workload,
        described: &str,
    ) -> Result<bool, ManifestError> {
        let empty = Default::default();
        let meta: &ObjectMeta = &pod.metadata;
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let required = self.injector.required(
            &workload.namespace,
            meta.labels.as_ref().unwrap_or(&empty),
            meta.annotations.as_ref().unwrap_or(&empty),
            host_network,
        );
        if let Err(why) = required {
            self.skipped
                .push(format!("Skipping injection because {described} {why}"));
            return Ok(false);
        }
        *pod = self
            .injector
            .inject(pod, workload)
            .map_err(|source| ManifestError::Inject {
                document: self.document,
                object: described.to_owned(),
                source,
            })?;
        Ok(true)
    }

    fn object_error(&self, value: &Value, reason: String) -> ManifestError {
        ManifestError::Object {
            document: self.document,
            object: describe(
                value["kind"].as_str().unwrap_or("object"),
                value["metadata"]["namespace"].as_str().unwrap_or_default(),
                value["metadata"]["name"].as_str().unwrap_or_default(),
            ),
            reason,
        }
    }
}

/// Where a workload keeps its pod.
enum PodParts<'a> {
    Pod(&'a mut Pod),
    Template(&'a mut PodTemplateSpec),
}

/// `Kind "namespace/name"`, as messages name an object.
fn describe(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{kind} {name:?}")
    } else {
        format!("{kind} \"{namespace}/{name}\"")
    }
}

fn to_yaml<T: Serialize>(object: &T) -> Result<String, String> {
    serde_saphyr::to_string(object).map_err(|e| format!("writing YAML: {e}"))
}

#[cfg(test)]
mod tests;
