//! What a directory of manifests asks to run: one [`PodPlan`] per replica of each Deployment,
//! with Istio's injection decision taken and each container's command, environment and ports
//! worked out. Pure (objects in, plans out), so every rule is tested without namespaces.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Container, PodSpec},
};

use super::inject::{self, ProxyConfigError};

/// Kubernetes' namespace and service account when a manifest names none.
pub const DEFAULT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("Deployment {namespace}/{name}: {message}")]
    Deployment {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("Deployment {namespace}/{name}: {source}")]
    ProxyConfig {
        namespace: String,
        name: String,
        #[source]
        source: ProxyConfigError,
    },
}

/// One pod replica to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// The Deployment it is a replica of.
    pub deployment: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The template's spec, with `serviceAccountName` filled in.
    pub spec: PodSpec,
    pub service_account: String,
    /// Whether Istio would inject a sidecar (and `remora-init`).
    pub sidecar: bool,
    /// The sidecar's extra environment (`proxyMetadata`).
    pub sidecar_env: BTreeMap<String, String>,
    pub containers: Vec<ContainerPlan>,
}

/// One container: what to run, with what environment, listening where.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    /// `command` followed by `args`, as written.
    pub argv: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    /// Declared TCP `containerPort`s, waited for after start.
    pub ports: Vec<u16>,
}

/// A container environment value: literal, or from the downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    /// `fieldRef: status.podIP`, known once the pod has its address.
    PodIp,
}

/// The replicas of `deployment` (named `<deployment>-<n>`), given the labels of each Namespace
/// object (by name) and the mesh's `defaultConfig.proxyMetadata`.
pub fn deployment_pods(
    deployment: &Deployment,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    mesh_proxy_metadata: &BTreeMap<String, String>,
) -> Result<Vec<PodPlan>, PlanError> {
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let replicas = usize::try_from(replicas).map_err(|_| PlanError::Deployment {
        namespace: namespace_of(deployment),
        name: deployment.metadata.name.clone().unwrap_or_default(),
        message: "spec.replicas is negative".to_owned(),
    })?;
    replicas_of(
        deployment,
        0..replicas,
        namespace_labels,
        mesh_proxy_metadata,
    )
}

/// Replica number `index` of `deployment`, as [`deployment_pods`] would make it.
pub fn replica(
    deployment: &Deployment,
    index: usize,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    mesh_proxy_metadata: &BTreeMap<String, String>,
) -> Result<PodPlan, PlanError> {
    replicas_of(
        deployment,
        index..index + 1,
        namespace_labels,
        mesh_proxy_metadata,
    )?
    .pop()
    .ok_or_else(|| PlanError::Deployment {
        namespace: namespace_of(deployment),
        name: deployment.metadata.name.clone().unwrap_or_default(),
        message: format!("no replica {index}"),
    })
}

/// The namespace of `deployment` (`default` when unset).
pub fn namespace_of(deployment: &Deployment) -> String {
    deployment
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT.to_owned())
}

fn replicas_of(
    deployment: &Deployment,
    indices: std::ops::Range<usize>,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    mesh_proxy_metadata: &BTreeMap<String, String>,
) -> Result<Vec<PodPlan>, PlanError> {
    let namespace = namespace_of(deployment);
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let fail = |message: String| PlanError::Deployment {
        namespace: namespace.clone(),
        name: name.clone(),
        message,
    };
    let spec = deployment
        .spec
        .as_ref()
        .ok_or_else(|| fail("no spec".to_owned()))?;
    let template = &spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.unwrap_or_default();
    let annotations = meta.annotations.unwrap_or_default();
    let mut pod_spec = template
        .spec
        .clone()
        .ok_or_else(|| fail("spec.template.spec is missing".to_owned()))?;
    let service_account = pod_spec
        .service_account_name
        .clone()
        .or_else(|| pod_spec.service_account.clone())
        .unwrap_or_else(|| DEFAULT.to_owned());
    pod_spec.service_account_name = Some(service_account.clone());
    let empty = BTreeMap::new();
    let sidecar = inject::wants_sidecar(
        namespace_labels.get(&namespace).unwrap_or(&empty),
        &labels,
        &annotations,
    );
    let sidecar_env = if sidecar {
        inject::sidecar_env(mesh_proxy_metadata, &annotations).map_err(|source| {
            PlanError::ProxyConfig {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            }
        })?
    } else {
        BTreeMap::new()
    };

    indices
        .map(|n| {
            let pod_name = format!("{name}-{n}");
            let containers = pod_spec
                .containers
                .iter()
                .map(|c| container(c, &namespace, &pod_name, &service_account))
                .collect::<Result<_, _>>()
                .map_err(&fail)?;
            Ok(PodPlan {
                namespace: namespace.clone(),
                name: pod_name,
                deployment: name.clone(),
                labels: labels.clone(),
                annotations: annotations.clone(),
                spec: pod_spec.clone(),
                service_account: service_account.clone(),
                sidecar,
                sidecar_env: sidecar_env.clone(),
                containers,
            })
        })
        .collect()
}

/// A container as the launcher runs it. The image is ignored, so `command` is required.
fn container(
    c: &Container,
    namespace: &str,
    pod_name: &str,
    service_account: &str,
) -> Result<ContainerPlan, String> {
    let command = c.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(format!(
            "container {:?} has no command; the local launcher ignores images, so it needs \
             `command` (and optionally `args`)",
            c.name
        ));
    }
    let argv = command
        .into_iter()
        .chain(c.args.clone().unwrap_or_default())
        .collect();
    let env = c
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (_, Some(from)) => {
                    let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                    match field {
                        Some("metadata.name") => EnvValue::Literal(pod_name.to_owned()),
                        Some("metadata.namespace") => EnvValue::Literal(namespace.to_owned()),
                        Some("spec.serviceAccountName") => {
                            EnvValue::Literal(service_account.to_owned())
                        }
                        Some("status.podIP") => EnvValue::PodIp,
                        _ => {
                            return Err(format!(
                                "container {:?}: env {:?}: only literal values and fieldRef \
                                 metadata.name, metadata.namespace, spec.serviceAccountName \
                                 and status.podIP are supported locally",
                                c.name, var.name
                            ))
                        }
                    }
                }
                (value, None) => EnvValue::Literal(value.clone().unwrap_or_default()),
            };
            Ok((var.name.clone(), value))
        })
        .collect::<Result<_, _>>()?;
    let ports = c
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    Ok(ContainerPlan {
        name: c.name.clone(),
        argv,
        env,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(yaml: &str) -> Deployment {
        serde_saphyr::from_str(yaml).expect("test Deployment")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
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
      annotations:
        proxy.istio.io/config: '{"proxyMetadata": {"SECRET_TTL": "20s"}}'
    spec:
      serviceAccountName: httpbin
      containers:
        - name: httpbin
          image: docker.io/kennethreitz/httpbin
          command: ["gunicorn", "-b", "0.0.0.0:8080"]
          args: ["httpbin:app"]
          env:
            - {name: A, value: "1"}
            - name: IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - name: POD
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports: [{containerPort: 8080, name: http}]
"#;

    #[test]
    fn replicas_of_an_injected_deployment() {
        let namespaces =
            BTreeMap::from([("demo".to_owned(), labels(&[("istio-injection", "enabled")]))]);
        let pods =
            deployment_pods(&deployment(HTTPBIN), &namespaces, &BTreeMap::new()).expect("valid");
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["httpbin-0", "httpbin-1"]);
        let pod = &pods[1];
        assert!(pod.sidecar);
        assert_eq!(pod.service_account, "httpbin");
        assert_eq!(pod.sidecar_env, labels(&[("SECRET_TTL", "20s")]));
        assert_eq!(
            pod.containers,
            [ContainerPlan {
                name: "httpbin".to_owned(),
                argv: ["gunicorn", "-b", "0.0.0.0:8080", "httpbin:app"]
                    .map(String::from)
                    .to_vec(),
                env: vec![
                    ("A".to_owned(), EnvValue::Literal("1".to_owned())),
                    ("IP".to_owned(), EnvValue::PodIp),
                    ("POD".to_owned(), EnvValue::Literal("httpbin-1".to_owned())),
                ],
                ports: vec![8080],
            }]
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let plain = deployment(
            "metadata: {name: sleep}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
             containers: [{name: sleep, command: [sleep, infinity]}]\n",
        );
        let pods = deployment_pods(&plain, &BTreeMap::new(), &BTreeMap::new()).expect("valid");
        assert_eq!(pods.len(), 1, "one replica by default");
        assert_eq!(pods[0].namespace, "default");
        assert_eq!(pods[0].service_account, "default");
        assert!(!pods[0].sidecar, "no injection label anywhere");

        let image_only = deployment(
            "metadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
             containers: [{name: web, image: nginx}]\n",
        );
        let err = deployment_pods(&image_only, &BTreeMap::new(), &BTreeMap::new())
            .expect_err("no command");
        assert!(err.to_string().contains("needs `command`"), "{err}");
    }
}
