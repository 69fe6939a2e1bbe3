//! What a directory of manifests asks to run: one [`PodPlan`] per replica of each Deployment,
//! the Pod its Deployment's controllers would create (named, owned by the ReplicaSet of its
//! template, with its service account set), checked to be runnable locally before it is sent
//! through admission. Pure (objects in, plans out), so every rule is tested without namespaces.

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use remora_injector::config::{
    cluster_ip::fnv1a64,
    well_known::{namespace_of, service_account_of},
};

use super::containers::PodRun;

/// The label a Deployment's ReplicaSet puts on its pods.
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Why a Deployment cannot run locally, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("Deployment {namespace}/{name}: {field}: {message}")]
    Deployment {
        namespace: String,
        name: String,
        field: String,
        message: String,
    },
}

/// One pod replica to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// The Deployment it is a replica of.
    pub deployment: String,
    /// The Pod as the Deployment's controllers create it, before admission.
    pub pod: Pod,
}

impl PodPlan {
    /// Its `serviceAccountName` (always set).
    pub fn service_account(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.as_deref())
            .unwrap_or_default()
    }
}

/// The replicas of `deployment` (named `<deployment>-<n>`): what the tests compare against
/// (the launcher plans replica by replica).
#[cfg(test)]
pub fn deployment_pods(deployment: &Deployment) -> Result<Vec<PodPlan>, PlanError> {
    replicas_of(deployment, 0..replica_count(deployment)?)
}

/// `spec.replicas` (1 when unset).
pub fn replica_count(deployment: &Deployment) -> Result<usize, PlanError> {
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    usize::try_from(replicas).map_err(|_| {
        failure(
            deployment,
            "spec.replicas",
            format!("{replicas} is negative"),
        )
    })
}

/// Replica number `index` of `deployment`, as `deployment_pods` would make it.
pub fn replica(deployment: &Deployment, index: usize) -> Result<PodPlan, PlanError> {
    replicas_of(deployment, index..index + 1)?
        .pop()
        .ok_or_else(|| failure(deployment, "spec.replicas", format!("no replica {index}")))
}

fn failure(deployment: &Deployment, field: &str, message: String) -> PlanError {
    PlanError::Deployment {
        namespace: namespace_of(&deployment.metadata).to_owned(),
        name: deployment.metadata.name.clone().unwrap_or_default(),
        field: field.to_owned(),
        message,
    }
}

fn replicas_of(
    deployment: &Deployment,
    indices: std::ops::Range<usize>,
) -> Result<Vec<PodPlan>, PlanError> {
    let namespace = namespace_of(&deployment.metadata).to_owned();
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let spec = deployment
        .spec
        .as_ref()
        .ok_or_else(|| failure(deployment, "spec", "required".to_owned()))?;
    let template = &spec.template;
    let template_hash = pod_template_hash(template);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(TEMPLATE_HASH_LABEL.to_owned(), template_hash.clone());
    let mut pod_spec = template
        .spec
        .clone()
        .ok_or_else(|| failure(deployment, "spec.template.spec", "required".to_owned()))?;
    pod_spec.service_account_name = Some(service_account_of(&pod_spec).to_owned());
    // As a Deployment's controllers write it: made by the ReplicaSet of its template.
    let replica_set = format!("{name}-{template_hash}");
    let owner = OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "ReplicaSet".to_owned(),
        uid: format!(
            "{:016x}",
            fnv1a64(format!("{namespace}/{replica_set}").as_bytes())
        ),
        name: replica_set.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    indices
        .map(|n| {
            let pod_name = format!("{name}-{n}");
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(pod_name.clone()),
                    generate_name: Some(format!("{replica_set}-")),
                    namespace: Some(namespace.clone()),
                    uid: Some(format!(
                        "{:016x}",
                        fnv1a64(format!("{namespace}/{pod_name}/{template_hash}").as_bytes())
                    )),
                    labels: Some(labels.clone()),
                    annotations: meta.annotations.clone(),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                spec: Some(pod_spec.clone()),
                status: None,
            };
            // The app's own containers must be runnable; what admission adds is checked again.
            PodRun::of(&pod).map_err(|(field, message)| {
                failure(deployment, &format!("spec.template.spec.{field}"), message)
            })?;
            Ok(PodPlan {
                namespace: namespace.clone(),
                name: pod_name,
                deployment: name.clone(),
                pod,
            })
        })
        .collect()
}

/// The `pod-template-hash` a Deployment controller gives the ReplicaSet of `template`: a hash
/// of the template, written in Kubernetes' alphabet for generated names (no vowels, so no
/// words), the same for the same template in every run.
fn pod_template_hash(template: &PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash = fnv1a64(&serde_json::to_vec(template).unwrap_or_default());
    let mut out = String::new();
    for _ in 0..10 {
        let digit = (hash % ALPHABET.len() as u64) as usize;
        out.push(char::from(ALPHABET[digit]));
        hash /= ALPHABET.len() as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(yaml: &str) -> Deployment {
        serde_saphyr::from_str(yaml).expect("test Deployment")
    }

    #[test]
    fn the_template_hash_follows_the_template_only() {
        let template = |image: &str| -> PodTemplateSpec {
            serde_saphyr::from_str(&format!(
                "metadata: {{labels: {{app: a}}}}\nspec: {{containers: [{{name: a, image: {image}}}]}}\n"
            ))
            .expect("template")
        };
        let hash = pod_template_hash(&template("a:1"));
        assert_eq!(hash.len(), 10);
        assert!(
            hash.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{hash}"
        );
        assert_eq!(pod_template_hash(&template("a:1")), hash);
        assert_ne!(pod_template_hash(&template("a:2")), hash);
    }

    const HTTPBIN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata:
      labels: {app: httpbin}
      annotations: {sidecar.istio.io/proxyCPU: 50m}
    spec:
      serviceAccountName: httpbin
      containers:
        - name: httpbin
          image: docker.io/kennethreitz/httpbin
          command: ["gunicorn", "-b", "0.0.0.0:8080"]
          args: ["httpbin:app"]
          ports: [{containerPort: 8080, name: http}]
"#;

    #[test]
    fn replicas_are_pods_as_a_deployments_controllers_create_them() {
        let pods = deployment_pods(&deployment(HTTPBIN)).expect("valid");
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["httpbin-0", "httpbin-1"]);
        let plan = &pods[1];
        assert_eq!(plan.service_account(), "httpbin");
        let meta = &plan.pod.metadata;
        let hash = meta.labels.as_ref().expect("labels")["pod-template-hash"].clone();
        assert_eq!(meta.name.as_deref(), Some("httpbin-1"));
        assert_eq!(meta.namespace.as_deref(), Some("demo"));
        assert_eq!(
            meta.generate_name.as_deref(),
            Some(format!("httpbin-{hash}-").as_str())
        );
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ReplicaSet", format!("httpbin-{hash}").as_str(), Some(true))
        );
        assert_eq!(
            meta.annotations.as_ref().expect("annotations")["sidecar.istio.io/proxyCPU"],
            "50m"
        );
        let third = replica(&deployment(HTTPBIN), 2).expect("valid");
        assert_eq!(third.name, "httpbin-2");
        assert_eq!(
            third.pod.metadata.owner_references, plan.pod.metadata.owner_references,
            "one ReplicaSet"
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let plain = deployment(
            "metadata: {name: sleep}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
             serviceAccountName: ''\n      containers: [{name: sleep, command: [sleep, infinity]}]\n",
        );
        let pods = deployment_pods(&plain).expect("valid");
        assert_eq!(pods.len(), 1, "one replica by default");
        assert_eq!(pods[0].namespace, "default");
        assert_eq!(pods[0].service_account(), "default", "empty means unset");

        let refusals = [
            (
                "metadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
                 containers: [{name: web, image: nginx}]\n",
                "Deployment default/web: spec.template.spec.containers[0].command: required",
            ),
            (
                "metadata: {name: web}\nspec:\n  replicas: -1\n  selector: {}\n  template:\n    \
                 spec:\n      containers: [{name: web, command: [web]}]\n",
                "Deployment default/web: spec.replicas: -1 is negative",
            ),
            (
                "metadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
                 containers:\n        - name: web\n          command: [web]\n          \
                 env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n",
                "Deployment default/web: spec.template.spec.containers[0].env[0].valueFrom: \"A\"",
            ),
            (
                "metadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
                 containers: [{name: web, command: [web]}]\n      \
                 volumes: [{name: data, hostPath: {path: /srv}}]\n",
                "Deployment default/web: spec.template.spec.volumes[0]: \"data\": only emptyDir",
            ),
        ];
        for (yaml, expected) in refusals {
            let err = deployment_pods(&deployment(yaml)).expect_err(expected);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }
}
