//! The `istio-proxy` container and the volumes it needs, as Istio's template renders them for
//! `remora-proxy`: uid/gid 1337, no capabilities, a read-only root; the downward-API identity
//! variables and Istio's `ISTIO_META_*`; the Prometheus port; readiness and startup probes on
//! 15021; the projected service-account token (audience `istio-ca`), the mesh root ConfigMap
//! and in-memory working space.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
        DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
        ObjectFieldSelector, PodSpec, Probe, ProjectedVolumeSource, ResourceFieldSelector,
        SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};

use super::{resources::proxy_resources, values::Values, InjectError, Workload, PROXY_CONTAINER};

/// The program the sidecar container runs (on the image's `PATH`).
pub const PROXY_COMMAND: &str = "remora-proxy";
/// The sidecar's readiness port (`/healthz/ready`).
const HEALTH_PORT: i32 = 15021;
/// The sidecar's Prometheus port.
const PROMETHEUS_PORT: i32 = 15090;

const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";

/// The volumes injected, in order (the status annotation lists them so).
pub const VOLUMES: [&str; 5] = [
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
];

/// What the sidecar container is built from, besides the values.
pub struct ProxyFacts<'a> {
    pub annotations: &'a BTreeMap<String, String>,
    pub spec: &'a PodSpec,
    pub workload: &'a Workload,
    pub image: String,
    /// `PROXY_CONFIG`: the merged ProxyConfig as JSON.
    pub proxy_config: String,
    pub proxy_metadata: &'a BTreeMap<String, String>,
    pub concurrency: Option<u32>,
    pub trust_domain: &'a str,
    /// The status port the probes and health checks use (0: none).
    pub status_port: u16,
}

/// The sidecar container (its env completed later with the prober and Prometheus settings).
pub fn container(values: &Values, facts: &ProxyFacts<'_>) -> Result<Container, InjectError> {
    let annotations = facts.annotations;
    let proxy = &values.global.proxy;
    let probe_setting = |annotation: &str, default: i32| -> Result<i32, InjectError> {
        match annotations.get(annotation) {
            None => Ok(default),
            Some(value) => value
                .parse::<u32>()
                .ok()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| {
                    InjectError::annotation(annotation, value, "not a number of seconds or tries")
                }),
        }
    };
    let ready = || HTTPGetAction {
        path: Some("/healthz/ready".to_owned()),
        port: IntOrString::Int(HEALTH_PORT),
        ..HTTPGetAction::default()
    };
    let readiness = Probe {
        http_get: Some(ready()),
        initial_delay_seconds: Some(probe_setting(
            READINESS_INITIAL_DELAY,
            proxy.readiness_initial_delay_seconds,
        )?),
        period_seconds: Some(probe_setting(
            READINESS_PERIOD,
            proxy.readiness_period_seconds,
        )?),
        timeout_seconds: Some(3),
        failure_threshold: Some(probe_setting(
            READINESS_FAILURE_THRESHOLD,
            proxy.readiness_failure_threshold,
        )?),
        ..Probe::default()
    };
    let startup = proxy.startup_probe.enabled.then(|| Probe {
        http_get: Some(ready()),
        initial_delay_seconds: Some(0),
        period_seconds: Some(1),
        timeout_seconds: Some(3),
        failure_threshold: Some(proxy.startup_probe.failure_threshold),
        ..Probe::default()
    });
    let probes = facts.status_port != 0;
    Ok(Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(facts.image.clone()),
        image_pull_policy: Some(values.global.image_pull_policy.clone()).filter(|p| !p.is_empty()),
        command: Some(vec![PROXY_COMMAND.to_owned()]),
        args: facts
            .concurrency
            .map(|n| vec!["--concurrency".to_owned(), n.to_string()]),
        env: Some(env(values, facts)),
        ports: Some(vec![ContainerPort {
            container_port: PROMETHEUS_PORT,
            name: Some("http-envoy-prom".to_owned()),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: probes.then_some(readiness),
        startup_probe: startup.filter(|_| probes),
        resources: Some(proxy_resources(values, annotations)?),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(proxy.privileged),
            privileged: Some(proxy.privileged),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(1337),
            run_as_group: Some(1337),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts()),
        ..Container::default()
    })
}

/// The sidecar's environment, in Istio's order.
fn env(values: &Values, facts: &ProxyFacts<'_>) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let resource = |name: &str, what: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: what.to_owned(),
                divisor: Some(Quantity("1".to_owned())),
                ..ResourceFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let app_containers: Vec<&str> = facts
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .filter(|name| *name != PROXY_CONTAINER)
        .collect();
    let cluster = &values.global.multi_cluster.cluster_name;
    let mut env = vec![
        value("PILOT_CERT_PROVIDER", "istiod".to_owned()),
        value("CA_ADDR", values.ca_address()),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("HOST_IP", "status.hostIP"),
        resource("ISTIO_CPU_LIMIT", "limits.cpu"),
        value("PROXY_CONFIG", facts.proxy_config.clone()),
        value("ISTIO_META_POD_PORTS", pod_ports(facts.spec)),
        value("ISTIO_META_APP_CONTAINERS", app_containers.join(",")),
        value(
            "ISTIO_META_CLUSTER_ID",
            if cluster.is_empty() {
                "Kubernetes".to_owned()
            } else {
                cluster.clone()
            },
        ),
        field("ISTIO_META_NODE_NAME", "spec.nodeName"),
        value("ISTIO_META_INTERCEPTION_MODE", "REDIRECT".to_owned()),
    ];
    if !values.global.network.is_empty() {
        env.push(value("ISTIO_META_NETWORK", values.global.network.clone()));
    }
    if !facts.workload.name.is_empty() {
        env.push(value(
            "ISTIO_META_WORKLOAD_NAME",
            facts.workload.name.clone(),
        ));
        env.push(value("ISTIO_META_OWNER", facts.workload.owner()));
    }
    let mesh_id = if values.global.mesh_id.is_empty() {
        facts.trust_domain.to_owned()
    } else {
        values.global.mesh_id.clone()
    };
    env.push(value("ISTIO_META_MESH_ID", mesh_id));
    env.push(value("TRUST_DOMAIN", facts.trust_domain.to_owned()));
    env.extend(
        facts
            .proxy_metadata
            .iter()
            .map(|(name, v)| value(name, v.clone())),
    );
    env
}

/// `ISTIO_META_POD_PORTS`: every app container port, as JSON in Istio's layout.
fn pod_ports(spec: &PodSpec) -> String {
    let ports: Vec<String> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|port| serde_json::to_string(port).unwrap_or_default())
        .collect();
    if ports.is_empty() {
        "[\n]".to_owned()
    } else {
        format!("[\n    {}\n]", ports.join("\n    ,"))
    }
}

fn mounts() -> Vec<VolumeMount> {
    [
        ("istiod-ca-cert", "/var/run/secrets/istio"),
        ("istio-data", "/var/lib/istio/data"),
        ("istio-envoy", "/etc/istio/proxy"),
        ("istio-token", "/var/run/secrets/tokens"),
        ("istio-podinfo", "/etc/istio/pod"),
    ]
    .into_iter()
    .map(|(name, path)| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    })
    .collect()
}

/// The injected volumes, in [`VOLUMES`] order.
pub fn volumes() -> Vec<Volume> {
    let named = |name: &str| Volume {
        name: name.to_owned(),
        ..Volume::default()
    };
    let field = |path: &str, field: &str| DownwardAPIVolumeFile {
        path: path.to_owned(),
        field_ref: Some(ObjectFieldSelector {
            field_path: field.to_owned(),
            ..ObjectFieldSelector::default()
        }),
        ..DownwardAPIVolumeFile::default()
    };
    vec![
        Volume {
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                ..EmptyDirVolumeSource::default()
            }),
            ..named("istio-envoy")
        },
        Volume {
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..named("istio-data")
        },
        Volume {
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    field("labels", "metadata.labels"),
                    field("annotations", "metadata.annotations"),
                ]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..named("istio-podinfo")
        },
        Volume {
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("istio-ca".to_owned()),
                        expiration_seconds: Some(43200),
                        path: "istio-token".to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..named("istio-token")
        },
        Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "istio-ca-root-cert".to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..named("istiod-ca-cert")
        },
    ]
}
