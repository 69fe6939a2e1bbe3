//! Sidecar injection, the transform istiod's webhook and `istioctl kube-inject` make: a pod in,
//! the pod with Remora's init container, sidecar, volumes and metadata out. Pure (no I/O), so
//! the admission webhook, `remoractl kube-inject` and the local launcher run the very same
//! code, and it is tested with tables and golden files.
//!
//! [`Injector::inject`] follows istiod's pipeline: strip an earlier injection (what its status
//! annotation lists), check the annotations, add `istio-init` (`init`) and `istio-proxy`
//! (`proxy`) with their volumes, point Prometheus at the sidecar (`prometheus`), rewrite
//! the app's probes to the status port (`probes`), and record the labels, annotations and
//! status (`metadata`). Injecting an injected pod again gives the same pod.

pub mod admission;
mod decision;
mod init;
pub mod metadata;
pub mod policy;
mod probes;
mod prometheus;
mod proxy;
mod resources;
pub mod selector;
pub mod values;
mod workloads;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};

use crate::config::{
    mesh::{MeshConfig, ProxyConfig},
    well_known::SIDECAR_STATUS_ANNOTATION,
};

pub use init::{INIT_COMMAND, STATUS_PORT_ANNOTATION};
pub use metadata::{Status, Workload};
pub use policy::InjectionPolicy;
pub use proxy::PROXY_COMMAND;
pub use values::Values;
pub use workloads::{inject_manifests, Injected, ManifestError};

/// The injected init container's name.
pub const INIT_CONTAINER: &str = "istio-init";
/// The injected sidecar container's name.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// Per pod: `"true"` runs the sidecar as a native sidecar (an init container that keeps
/// running), `"false"` as a classic one, whatever the values say.
const NATIVE_SIDECAR_ANNOTATION: &str = "sidecar.istio.io/nativeSidecar";

/// Why a pod cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A pod annotation injection reads has a value it cannot use.
    #[error("invalid value '{value}' for annotation '{annotation}': {reason}")]
    Annotation {
        annotation: String,
        value: String,
        reason: String,
    },
    /// The injection values or mesh config cannot be used.
    #[error("injection settings: {0}")]
    Values(String),
}

impl InjectError {
    fn annotation(annotation: &str, value: &str, reason: &str) -> Self {
        Self::Annotation {
            annotation: annotation.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Injection as configured: the injection values and the mesh config.
#[derive(Debug, Clone, Default)]
pub struct Injector {
    values: Values,
    mesh: MeshConfig,
    policy: InjectionPolicy,
}

impl Injector {
    /// Injection with `values` and the mesh config `mesh` (a `mesh.yaml`, or the `mesh` key of
    /// the `istio` ConfigMap; `None`: Istio's defaults).
    pub fn new(values: Values, mesh: Option<&str>) -> Result<Self, InjectError> {
        let mesh = match mesh {
            Some(text) => MeshConfig::parse(text)
                .map_err(|e| InjectError::Values(format!("mesh config: {e}")))?,
            None => MeshConfig::default(),
        };
        Ok(Self {
            values,
            mesh,
            policy: InjectionPolicy::default(),
        })
    }

    /// This injection deciding by `policy` for pods that say nothing.
    pub fn with_policy(mut self, policy: InjectionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Whether a called webhook injects a pod in `namespace` ([`decision::required`] with this
    /// injection's policy); `Err` says why not.
    pub fn required(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        host_network: bool,
    ) -> Result<(), &'static str> {
        decision::required(namespace, labels, annotations, host_network, &self.policy)
    }

    pub(crate) fn with_mesh(values: Values, mesh: MeshConfig) -> Self {
        Self {
            values,
            mesh,
            policy: InjectionPolicy::default(),
        }
    }

    /// This injection for pods of cluster `cluster` on network `network` (the webhook's path
    /// parameters), where given.
    pub fn for_cluster(&self, cluster: Option<&str>, network: Option<&str>) -> Self {
        let mut adjusted = self.clone();
        if let Some(cluster) = cluster {
            adjusted.values.global.multi_cluster.cluster_name = cluster.to_owned();
        }
        if let Some(network) = network {
            adjusted.values.global.network = network.to_owned();
        }
        adjusted
    }

    /// Annotations the webhook adds to every pod it injects (`injectedAnnotations`).
    pub fn injected_annotations(&self) -> &BTreeMap<String, String> {
        &self.policy.injected_annotations
    }

    pub fn values(&self) -> &Values {
        &self.values
    }

    /// `pod` (of `workload`) with its sidecar. The pod's own spec and metadata are kept; an
    /// earlier injection is replaced.
    pub fn inject(&self, pod: &Pod, workload: &Workload) -> Result<Pod, InjectError> {
        let mut pod = pod.clone();
        let mut annotations = pod.metadata.annotations.take().unwrap_or_default();
        let mut labels = pod.metadata.labels.take().unwrap_or_default();
        let mut spec = pod.spec.take().unwrap_or_default();
        let status_port = self.status_port(&annotations)?;
        let previous = strip(&mut spec, &mut annotations, status_port);

        let pod_config = ProxyConfig::of_pod(Some(&annotations)).map_err(|e| {
            InjectError::annotation(
                crate::config::well_known::PROXY_CONFIG_ANNOTATION,
                "",
                &e.to_string(),
            )
        })?;
        let proxy_config = self.mesh.proxy_config(pod_config.as_ref());
        let values = &self.values;
        let init_image = resources::image(values, &values.global.proxy_init.image, &annotations);
        let proxy_image = resources::image(values, &values.global.proxy.image, &annotations);
        let init = init::container(values, &annotations, &init_image)?;
        let mut sidecar = proxy::container(
            values,
            &proxy::ProxyFacts {
                annotations: &annotations,
                spec: &spec,
                workload,
                image: proxy_image,
                proxy_config: proxy_config.to_json(),
                proxy_metadata: &proxy_config.proxy_metadata,
                concurrency: proxy_config.concurrency,
                trust_domain: self.mesh.trust_domain(),
                status_port,
            },
        )?;

        let scrape = prometheus::merge(
            &mut annotations,
            self.mesh.enable_prometheus_merge(),
            status_port,
        )?;
        let scrape = scrape.map(|s| s.to_json()).or(previous
            .scrape
            .filter(|_| prometheus::points_at(&annotations, status_port)));
        let probers = if probes::enabled(values, &annotations) && status_port != 0 {
            probes::rewrite(&mut spec.containers, status_port)
        } else {
            BTreeMap::new()
        };
        let probers = probes::env_value(previous.probers.as_deref(), probers);
        let env = sidecar.env.get_or_insert_with(Vec::new);
        for (name, value) in [
            (prometheus::ANNOTATIONS_ENV, scrape),
            (probes::PROBERS_ENV, probers),
        ] {
            if let Some(value) = value {
                env.push(EnvVar {
                    name: name.to_owned(),
                    value: Some(value),
                    ..EnvVar::default()
                });
            }
        }

        let native = annotations
            .get(NATIVE_SIDECAR_ANNOTATION)
            .map_or(values.sidecar_injector_webhook.native_sidecars, |v| {
                v != "false"
            });
        let hold = proxy_config
            .hold_application_until_proxy_starts
            .unwrap_or(values.global.proxy.hold_application_until_proxy_starts);
        let first_app = spec.containers.first().map(|c| c.name.clone());
        place(&mut spec, init, sidecar, native, hold);
        let mut volumes = proxy::volumes();
        volumes.extend(
            spec.volumes
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|v| !proxy::VOLUMES.contains(&v.name.as_str())),
        );
        spec.volumes = Some(volumes);

        metadata::add_labels(&mut labels, workload);
        metadata::add_annotations(&mut annotations, values.revision(), first_app.as_deref());
        let status = Status {
            init_containers: Some(if native {
                vec![INIT_CONTAINER.to_owned(), PROXY_CONTAINER.to_owned()]
            } else {
                vec![INIT_CONTAINER.to_owned()]
            }),
            containers: (!native).then(|| vec![PROXY_CONTAINER.to_owned()]),
            volumes: Some(proxy::VOLUMES.map(str::to_owned).to_vec()),
            image_pull_secrets: None,
            revision: values.revision().to_owned(),
        };
        annotations.insert(SIDECAR_STATUS_ANNOTATION.to_owned(), status.to_json());
        pod.metadata.labels = Some(labels);
        pod.metadata.annotations = Some(annotations);
        pod.spec = Some(spec);
        Ok(pod)
    }

    /// The status port: the pod's `status.sidecar.istio.io/port`, else the values'.
    fn status_port(&self, annotations: &BTreeMap<String, String>) -> Result<u16, InjectError> {
        match annotations.get(STATUS_PORT_ANNOTATION) {
            None => Ok(self.values.global.proxy.status_port),
            Some(port) => port.parse().map_err(|_| {
                InjectError::annotation(STATUS_PORT_ANNOTATION, port, "not a port number")
            }),
        }
    }
}

/// What an earlier injection left that a new one keeps.
#[derive(Default)]
struct Previous {
    /// Its `ISTIO_KUBE_APP_PROBERS`: the originals of probes rewritten already.
    probers: Option<String>,
    /// Its `ISTIO_PROMETHEUS_ANNOTATIONS`: the app's scrape settings, moved already.
    scrape: Option<String>,
}

/// Removes an earlier injection (the containers its status lists, its status, and the scrape
/// annotations it pointed at the status port), returning what the new one keeps.
fn strip(
    spec: &mut PodSpec,
    annotations: &mut BTreeMap<String, String>,
    status_port: u16,
) -> Previous {
    let Some(status) = Status::of(annotations) else {
        return Previous::default();
    };
    let mut previous = Previous::default();
    let listed = |list: &Option<Vec<String>>, name: &str| {
        list.as_ref()
            .is_some_and(|names| names.iter().any(|n| n == name))
    };
    let mut take_env = |container: &Container| {
        for var in container.env.iter().flatten() {
            match var.name.as_str() {
                probes::PROBERS_ENV => previous.probers.clone_from(&var.value),
                prometheus::ANNOTATIONS_ENV => previous.scrape.clone_from(&var.value),
                _ => {}
            }
        }
    };
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if container.name == PROXY_CONTAINER {
            take_env(container);
        }
    }
    spec.containers
        .retain(|c| !listed(&status.containers, &c.name));
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| !listed(&status.init_containers, &c.name));
    }
    if prometheus::points_at(annotations, status_port) {
        prometheus::forget(annotations);
    }
    annotations.remove(SIDECAR_STATUS_ANNOTATION);
    previous
}

/// Puts the injected containers where Istio does: classic, `istio-init` after the pod's init
/// containers and `istio-proxy` after its containers (first when the app waits for it);
/// native, `istio-init` then `istio-proxy` (restarting always) before the pod's init containers.
fn place(spec: &mut PodSpec, init: Container, mut sidecar: Container, native: bool, hold: bool) {
    let mut inits = spec.init_containers.take().unwrap_or_default();
    if native {
        sidecar.restart_policy = Some("Always".to_owned());
        inits.splice(0..0, [init, sidecar]);
    } else {
        inits.push(init);
        if hold {
            spec.containers.insert(0, sidecar);
        } else {
            spec.containers.push(sidecar);
        }
    }
    spec.init_containers = Some(inits);
}

#[cfg(test)]
mod tests;
