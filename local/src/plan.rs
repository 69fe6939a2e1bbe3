//! What a directory of manifests asks to run: one [`PodPlan`] per replica of each Deployment,
//! with Istio's injection decision taken and each container's command, environment and ports
//! worked out. Pure (objects in, plans out), so every rule is tested without namespaces.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Container, PodSpec, PodTemplateSpec},
};
use remora_injector::config::{
    cluster_ip::fnv1a64,
    well_known::{namespace_of, service_account_of},
    Catalog, ProxyConfigError, SidecarConfig,
};

use remora_injector::inject::decision::{self as inject, Candidate};

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
    #[error("Deployment {namespace}/{name}: spec.template.{source}")]
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
    /// The `pod-template-hash` of its template: its ReplicaSet is `<deployment>-<hash>`.
    pub template_hash: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The template's spec, with `serviceAccountName` filled in.
    pub spec: PodSpec,
    pub service_account: String,
    /// Whether Istio would inject a sidecar (and `remora-init`).
    pub sidecar: bool,
    /// What injection renders into the sidecar container (`proxyMetadata`, `concurrency`).
    pub sidecar_config: SidecarConfig,
    pub containers: Vec<ContainerPlan>,
}

/// One container: what to run, with what environment, listening where.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    /// `command` followed by `args`, as written: `$(NAME)` references are expanded at start
    /// ([`super::expand`]), once `status.podIP` has a value.
    pub argv: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    /// Declared TCP `containerPort`s, waited for after start.
    pub ports: Vec<u16>,
}

/// A container environment value: written, or from the downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// `value`, as written: it may refer to variables listed before it as `$(NAME)`.
    Value(String),
    /// A `fieldRef` known when planning (`metadata.name`, ...), used as is.
    Field(String),
    /// `fieldRef: status.podIP`, known once the pod has its address.
    PodIp,
}

/// The replicas of `deployment` (named `<deployment>-<n>`), with the Namespaces and mesh
/// config of `catalog`: what the tests compare against (the launcher plans replica by replica).
#[cfg(test)]
pub fn deployment_pods(
    deployment: &Deployment,
    catalog: &Catalog,
) -> Result<Vec<PodPlan>, PlanError> {
    replicas_of(deployment, 0..replica_count(deployment)?, catalog)
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
pub fn replica(
    deployment: &Deployment,
    index: usize,
    catalog: &Catalog,
) -> Result<PodPlan, PlanError> {
    replicas_of(deployment, index..index + 1, catalog)?
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
    catalog: &Catalog,
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
    let labels = meta.labels.unwrap_or_default();
    let annotations = meta.annotations.unwrap_or_default();
    let mut pod_spec = template
        .spec
        .clone()
        .ok_or_else(|| failure(deployment, "spec.template.spec", "required".to_owned()))?;
    let service_account = service_account_of(&pod_spec).to_owned();
    pod_spec.service_account_name = Some(service_account.clone());
    let no_labels = BTreeMap::new();
    let sidecar = inject::wants_sidecar(Candidate {
        namespace: &namespace,
        namespace_labels: catalog
            .accepted()
            .namespace(&namespace)
            .and_then(|ns| ns.metadata.labels.as_ref())
            .unwrap_or(&no_labels),
        labels: &labels,
        annotations: &annotations,
        host_network: pod_spec.host_network.unwrap_or(false),
    });
    let sidecar_config = if sidecar {
        catalog
            .accepted()
            .sidecar_config(Some(&annotations))
            .map_err(|source| PlanError::ProxyConfig {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?
    } else {
        SidecarConfig::default()
    };

    indices
        .map(|n| {
            let pod_name = format!("{name}-{n}");
            let containers = pod_spec
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    container(c, &namespace, &pod_name, &service_account).map_err(
                        |(field, message)| {
                            failure(
                                deployment,
                                &format!("spec.template.spec.containers[{i}].{field}"),
                                message,
                            )
                        },
                    )
                })
                .collect::<Result<_, _>>()?;
            Ok(PodPlan {
                namespace: namespace.clone(),
                name: pod_name,
                deployment: name.clone(),
                template_hash: template_hash.clone(),
                labels: labels.clone(),
                annotations: annotations.clone(),
                spec: pod_spec.clone(),
                service_account: service_account.clone(),
                sidecar,
                sidecar_config: sidecar_config.clone(),
                containers,
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

/// A container as the launcher runs it. The image is ignored, so `command` is required. An
/// error names the field below the container and what is wrong with it.
fn container(
    c: &Container,
    namespace: &str,
    pod_name: &str,
    service_account: &str,
) -> Result<ContainerPlan, (String, String)> {
    let command = c.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err((
            "command".to_owned(),
            "required locally: the launcher ignores images, so it runs `command` (and \
             `args`) as written"
                .to_owned(),
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
        .enumerate()
        .map(|(i, var)| {
            let value = match (&var.value, &var.value_from) {
                (_, Some(from)) => {
                    let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                    match field {
                        Some("metadata.name") => EnvValue::Field(pod_name.to_owned()),
                        Some("metadata.namespace") => EnvValue::Field(namespace.to_owned()),
                        Some("spec.serviceAccountName") => {
                            EnvValue::Field(service_account.to_owned())
                        }
                        Some("status.podIP") => EnvValue::PodIp,
                        _ => {
                            return Err((
                                format!("env[{i}].valueFrom"),
                                format!(
                                    "{:?}: only literal values and fieldRef metadata.name, \
                                     metadata.namespace, spec.serviceAccountName and \
                                     status.podIP are supported locally",
                                    var.name
                                ),
                            ))
                        }
                    }
                }
                (value, None) => EnvValue::Value(value.clone().unwrap_or_default()),
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

    /// A catalog of `(file, text)` documents, as the control plane would read them.
    fn catalog(files: &[(&str, &str)]) -> Catalog {
        let catalog = Catalog::build(
            files
                .iter()
                .map(|(origin, text)| ((*origin).to_owned(), (*text).to_owned()))
                .collect(),
        );
        assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
        catalog
    }

    fn deployment(yaml: &str) -> Deployment {
        serde_saphyr::from_str(yaml).expect("test Deployment")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const DEMO: &str =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio-injection: enabled}}\n";

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
        let catalog = catalog(&[
            ("/m/ns.yaml", DEMO),
            (
                "/m/mesh.yaml",
                "defaultConfig: {proxyMetadata: {SECRET_TTL: 1h, OTHER: x}, concurrency: 2}",
            ),
        ]);
        let pods = deployment_pods(&deployment(HTTPBIN), &catalog).expect("valid");
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["httpbin-0", "httpbin-1"]);
        let pod = &pods[1];
        assert!(pod.sidecar);
        assert_eq!(pod.service_account, "httpbin");
        assert_eq!(
            pod.sidecar_config,
            SidecarConfig {
                env: labels(&[("SECRET_TTL", "20s"), ("OTHER", "x")]),
                concurrency: Some(2),
            },
            "the pod's proxyMetadata over the mesh's"
        );
        assert_eq!(
            pod.containers,
            [ContainerPlan {
                name: "httpbin".to_owned(),
                argv: ["gunicorn", "-b", "0.0.0.0:8080", "httpbin:app"]
                    .map(String::from)
                    .to_vec(),
                env: vec![
                    ("A".to_owned(), EnvValue::Value("1".to_owned())),
                    ("IP".to_owned(), EnvValue::PodIp),
                    ("POD".to_owned(), EnvValue::Field("httpbin-1".to_owned())),
                ],
                ports: vec![8080],
            }]
        );
        let third = replica(&deployment(HTTPBIN), 2, &catalog).expect("valid");
        assert_eq!(third.name, "httpbin-2");
    }

    #[test]
    fn defaults_and_refusals() {
        let empty = catalog(&[]);
        let plain = deployment(
            "metadata: {name: sleep}\nspec:\n  selector: {}\n  template:\n    spec:\n      \
             serviceAccountName: ''\n      containers: [{name: sleep, command: [sleep, infinity]}]\n",
        );
        let pods = deployment_pods(&plain, &empty).expect("valid");
        assert_eq!(pods.len(), 1, "one replica by default");
        assert_eq!(pods[0].namespace, "default");
        assert_eq!(pods[0].service_account, "default", "empty means unset");
        assert_eq!(
            pods[0].spec.service_account_name.as_deref(),
            Some("default")
        );
        assert!(!pods[0].sidecar, "no injection label anywhere");

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
                "metadata: {name: web, namespace: demo}\nspec:\n  selector: {}\n  template:\n    \
                 metadata: {annotations: {proxy.istio.io/config: 'proxyMetadata: [1]'}}\n    \
                 spec:\n      containers: [{name: web, command: [web]}]\n",
                "Deployment demo/web: spec.template.metadata.annotations[proxy.istio.io/config]: \
                 proxyMetadata: ",
            ),
        ];
        let demo = catalog(&[("/m/ns.yaml", DEMO)]);
        for (yaml, expected) in refusals {
            let err = deployment_pods(&deployment(yaml), &demo).expect_err(expected);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }
}
