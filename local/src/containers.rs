//! A pod spec as the launcher's kubelet runs it, worked out before anything starts: the init
//! containers in order, then the containers, each with its command line, environment
//! (downward-API `fieldRef`s and `resourceFieldRef`s resolved), user, volume mounts and the
//! probe that says it is ready; and the volumes to materialise. Pure (a Pod in, a plan out),
//! so every rule is tested without namespaces, and anything the launcher cannot run is refused
//! here, naming its field, before a pod is created.
//!
//! The launcher ignores images: a container runs its `command` (then `args`), the program
//! looked up among Remora's binaries first (injected containers name `remora-init` and
//! `remora-proxy`, which Remora's images put on `PATH`), then on the launcher's `PATH`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Pod, PodSpec, Probe, ResourceRequirements},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::volumes::{self, Mount, VolumePlan};

/// The node name pods are told they run on (`spec.nodeName`).
pub const NODE_NAME: &str = "remora-local";

/// What the launcher runs for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRun {
    /// Run in order, each to completion, except a native sidecar (`restartPolicy: Always`),
    /// which keeps running and is waited for until ready.
    pub init: Vec<ContainerPlan>,
    /// Started in order, then each waited for until ready.
    pub containers: Vec<ContainerPlan>,
    pub volumes: Vec<VolumePlan>,
}

/// One container: what to run, as whom, with what environment and files, ready when.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    /// `command` followed by `args`, as written: `$(NAME)` references are expanded at start
    /// ([`super::expand`]), once `status.podIP` has a value.
    pub argv: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    /// `runAsUser`/`runAsGroup` (the container's, else the pod's); root when unset.
    pub user: Option<(u32, u32)>,
    pub mounts: Vec<Mount>,
    /// `workingDir`, if set (else the pod's directory).
    pub working_dir: Option<String>,
    /// When it counts as started and ready.
    pub ready: Readiness,
    /// A native sidecar: an init container that keeps running beside the containers.
    pub keeps_running: bool,
}

/// A container environment value: written, or from the downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// `value`, as written: it may refer to variables listed before it as `$(NAME)`.
    Value(String),
    /// A `fieldRef` or `resourceFieldRef` known when planning (`metadata.name`, ...), used as is.
    Field(String),
    /// `fieldRef: status.podIP` (and `status.hostIP`: the node is the pod's own machine and
    /// has no other address pods can reach), known once the pod has its address.
    PodIp,
}

/// What says a container is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Its readiness probe (else its startup probe) succeeds, asked as a kubelet asks.
    Probe(ProbeCheck),
    /// No probe: each declared TCP `containerPort` accepts connections (a kubelet would call
    /// it ready at once; the launcher waits so that nothing is sent to it too early).
    Listening(Vec<u16>),
}

/// A probe's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    Http {
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    Tcp(u16),
    Exec(Vec<String>),
}

/// Why a pod cannot run locally: the field at fault (below `spec.`) and what is wrong.
pub type Unrunnable = (String, String);

impl PodRun {
    /// The plan for `pod` (named, in its namespace, with its service account set).
    pub fn of(pod: &Pod) -> Result<Self, Unrunnable> {
        let spec = pod.spec.as_ref().ok_or_else(|| {
            (
                "spec".to_owned(),
                "required: the pod has nothing to run".to_owned(),
            )
        })?;
        let plan = |field: &str, containers: &[Container]| -> Result<Vec<_>, Unrunnable> {
            containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    container(c, pod, spec)
                        .map_err(|(at, message)| (format!("{field}[{i}].{at}"), message))
                })
                .collect()
        };
        Ok(Self {
            init: plan(
                "initContainers",
                spec.init_containers.as_deref().unwrap_or_default(),
            )?,
            containers: plan("containers", &spec.containers)?,
            volumes: volumes::plan(pod, spec)?,
        })
    }

    /// Every container, init containers first.
    pub fn all(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init.iter().chain(&self.containers)
    }

    /// Who owns the files of volume `name`: the user of the first container that mounts it
    /// and runs as someone.
    pub fn owner_of(&self, volume: &str) -> Option<u32> {
        self.all()
            .filter(|c| c.mounts.iter().any(|m| m.volume == volume))
            .find_map(|c| c.user)
            .map(|(uid, _)| uid)
    }
}

/// A container as the launcher runs it. An error names the field below the container.
fn container(c: &Container, pod: &Pod, spec: &PodSpec) -> Result<ContainerPlan, Unrunnable> {
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
            let value = match &var.value_from {
                None => EnvValue::Value(var.value.clone().unwrap_or_default()),
                Some(from) => {
                    let field = format!("env[{i}].valueFrom");
                    if let Some(selector) = &from.field_ref {
                        field_value(&selector.field_path, pod, spec)
                            .map_err(|message| (format!("{field}.fieldRef.fieldPath"), message))?
                    } else if let Some(selector) = &from.resource_field_ref {
                        let divisor = selector.divisor.as_ref().map(|q| q.0.as_str());
                        let resources = c.resources.as_ref();
                        resource_value(&selector.resource, resources, divisor)
                            .map(EnvValue::Field)
                            .map_err(|message| (format!("{field}.resourceFieldRef"), message))?
                    } else {
                        return Err((
                            field,
                            format!(
                                "{:?}: only literal values, fieldRef and resourceFieldRef are \
                                 available locally (no Secrets or ConfigMaps)",
                                var.name
                            ),
                        ));
                    }
                }
            };
            Ok((var.name.clone(), value))
        })
        .collect::<Result<_, Unrunnable>>()?;
    let ports: Vec<u16> = c
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let probe = c.readiness_probe.as_ref().map(|p| ("readinessProbe", p));
    let ready = match probe.or(c.startup_probe.as_ref().map(|p| ("startupProbe", p))) {
        Some((field, probe)) => Readiness::Probe(
            probe_check(probe, c).map_err(|(at, message)| (format!("{field}.{at}"), message))?,
        ),
        None => Readiness::Listening(ports),
    };
    let mounts = c
        .volume_mounts
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, mount)| {
            if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
                return Err((
                    format!("volumeMounts[{i}].subPath"),
                    "not available locally: mount the whole volume".to_owned(),
                ));
            }
            let declared = spec.volumes.iter().flatten().any(|v| v.name == mount.name);
            if !declared {
                return Err((
                    format!("volumeMounts[{i}].name"),
                    format!("{:?}: no such volume in spec.volumes", mount.name),
                ));
            }
            Ok(Mount {
                volume: mount.name.clone(),
                path: mount.mount_path.clone(),
                read_only: mount.read_only.unwrap_or(false),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ContainerPlan {
        name: c.name.clone(),
        argv,
        env,
        user: user(c, spec),
        mounts,
        working_dir: c.working_dir.clone(),
        ready,
        keeps_running: c.restart_policy.as_deref() == Some("Always"),
    })
}

/// `runAsUser`/`runAsGroup`: the container's, else the pod's; the group defaults to the user.
fn user(c: &Container, spec: &PodSpec) -> Option<(u32, u32)> {
    let own = c.security_context.as_ref();
    let pod = spec.security_context.as_ref();
    let uid = own
        .and_then(|s| s.run_as_user)
        .or(pod.and_then(|s| s.run_as_user))?;
    let gid = own
        .and_then(|s| s.run_as_group)
        .or(pod.and_then(|s| s.run_as_group))
        .unwrap_or(uid);
    Some((u32::try_from(uid).ok()?, u32::try_from(gid).ok()?))
}

/// The value of downward-API field `path` for `pod`.
fn field_value(path: &str, pod: &Pod, spec: &PodSpec) -> Result<EnvValue, String> {
    let meta = &pod.metadata;
    let text = |value: Option<&String>| EnvValue::Field(value.cloned().unwrap_or_default());
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(text(map.and_then(|m| m.get(key))))
    };
    Ok(match path {
        "metadata.name" => text(meta.name.as_ref()),
        "metadata.namespace" => text(meta.namespace.as_ref()),
        "metadata.uid" => text(meta.uid.as_ref()),
        "spec.serviceAccountName" => text(spec.service_account_name.as_ref()),
        "spec.nodeName" => EnvValue::Field(NODE_NAME.to_owned()),
        "status.podIP" | "status.hostIP" => EnvValue::PodIp,
        _ => keyed("metadata.labels", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations", meta.annotations.as_ref()))
            .ok_or_else(|| {
                format!(
                    "{path:?} is not a field the downward API offers (metadata.name, \
                     metadata.namespace, metadata.uid, metadata.labels['KEY'], \
                     metadata.annotations['KEY'], spec.serviceAccountName, spec.nodeName, \
                     status.podIP, status.hostIP)"
                )
            })?,
    })
}

/// A `resourceFieldRef`'s value, as the kubelet computes it: the container's limit (or
/// request) divided by `divisor` and rounded up; an unset limit is the node's capacity (its
/// CPUs; memory is left unlimited, reported as 0).
fn resource_value(
    resource: &str,
    resources: Option<&ResourceRequirements>,
    divisor: Option<&str>,
) -> Result<String, String> {
    let (kind, which) = resource
        .split_once('.')
        .ok_or_else(|| format!("resource {resource:?}: not limits.cpu, requests.memory, ..."))?;
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    }
    .and_then(|map| map.get(which))
    .map(|q| q.0.as_str());
    let value = match (which, set) {
        ("cpu" | "memory", Some(text)) => quantity(text)?,
        ("cpu", None) => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        ("memory", None) => 0.0,
        _ => {
            return Err(format!(
                "resource {resource:?}: only cpu and memory are available locally"
            ))
        }
    };
    let divisor = match divisor {
        Some(text) => quantity(text)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(format!("divisor {divisor}: must be positive"));
    }
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

/// A Kubernetes quantity (`500m`, `2`, `128Mi`, `1G`) as a number.
fn quantity(text: &str) -> Result<f64, String> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| Some((text.strip_suffix(suffix)?, *scale)))
        .unwrap_or((text, 1.0));
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n * scale)
        .ok_or_else(|| format!("{text:?} is not a quantity"))
}

/// A probe's action, its named port resolved among the container's ports.
fn probe_check(probe: &Probe, c: &Container) -> Result<ProbeCheck, Unrunnable> {
    let port = |field: &str, port: &IntOrString| -> Result<u16, Unrunnable> {
        let number = match port {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        };
        number
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or_else(|| {
                (
                    format!("{field}.port"),
                    format!("{port:?}: not a port number nor a named port of the container"),
                )
            })
    };
    if let Some(http) = &probe.http_get {
        return Ok(ProbeCheck::Http {
            port: port("httpGet", &http.port)?,
            path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
            https: http.scheme.as_deref() == Some("HTTPS"),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(ProbeCheck::Tcp(port("tcpSocket", &tcp.port)?));
    }
    if let Some(exec) = &probe.exec {
        return Ok(ProbeCheck::Exec(exec.command.clone().unwrap_or_default()));
    }
    Err((
        "grpc".to_owned(),
        "gRPC probes are not asked locally: let injection rewrite them to the sidecar's \
         status port (the default), or use httpGet, tcpSocket or exec"
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests;
