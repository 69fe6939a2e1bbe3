//! One local pod: its network namespace, hosts file, volumes and processes, run as a kubelet
//! runs the pod spec admission returned (see [`super::containers`]): for an injected pod,
//! `istio-init` (`remora-init`) to completion, then the app's containers and the `istio-proxy`
//! sidecar (`remora-proxy` as uid 1337 with the environment and volumes injection gave it).

use std::{
    ffi::{OsStr, OsString},
    fs, io,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::Signal;
use remora_api::proto::config::Snapshot;
use remora_injector::{config::well_known::SIDECAR_STATUS_ANNOTATION, token::TokenIssuer};

use super::{
    bins::Binaries,
    containers::{ContainerPlan, PodRun},
    expand,
    hosts::EtcNetns,
    kube_proxy,
    netns::{exec_in, run_checked, CommandError},
    network::PodNetwork,
    plan::PodPlan,
    probe,
    process::{as_user, Process, ProcessError},
    volumes,
    wait::WaitError,
};

/// The sidecar container's name in an injected pod (and its log's name here).
pub const SIDECAR: &str = "istio-proxy";
/// Istio's `istio-token` projected volume lives 12 hours (`expirationSeconds: 43200`).
const TOKEN_TTL: Duration = Duration::from_secs(43_200);
/// The longest grace period a stopping pod gets (a manifest may say anything up to `i64::MAX`).
const MAX_GRACE_SECONDS: i64 = 24 * 60 * 60;
/// How often a wait for a sidecar's config asks whether the sidecar rejected it.
const ASK_REJECTED_EVERY: Duration = Duration::from_millis(500);
/// The sidecar's admin endpoint with the snapshot it runs (`{"snapshot": ...}`).
const CONFIG_DUMP_URL: &str = "http://127.0.0.1:15000/config_dump";
/// Variables of the launcher's environment passed on to everything a pod runs.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG"];
/// Variables passed on to Remora's own programs (the sidecar, `remora-init`), for debugging.
const REMORA_INHERITED_ENV: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {pod}: {what}: {source}")]
    Io {
        pod: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("pod {pod}: {source}")]
    Command {
        pod: String,
        #[source]
        source: CommandError,
    },
    #[error("pod {pod}: {source}")]
    Process {
        pod: String,
        #[source]
        source: ProcessError,
    },
    #[error("pod {pod}: its sidecar rejected the current config: {reason}")]
    Rejected { pod: String, reason: String },
    #[error("pod {pod}: reading its sidecar's config dump: {message}")]
    ConfigDump { pod: String, message: String },
    #[error("pod {pod}: {source}")]
    Wait {
        pod: String,
        #[source]
        source: Box<WaitError>,
    },
}

/// A pod as users and tests see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    /// The Deployment it is a replica of.
    pub deployment: String,
    pub service_account: String,
    pub ip: Ipv4Addr,
    /// Its network namespace, for `ip netns exec`.
    pub netns: String,
    /// Logs (`<container>.log`, `istio-proxy.log`), secrets; its containers' working directory.
    pub dir: PathBuf,
    pub sidecar: bool,
}

impl LocalPod {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `argv` to run in the pod (as root, seeing the pod's network and hosts file).
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        exec_in(&self.netns, argv)
    }

    /// The pid of its sidecar (the `remora-proxy` among the processes in its network
    /// namespace), for benchmarks and tests that watch its memory or descriptors.
    pub fn sidecar_pid(&self) -> Result<Option<u32>, CommandError> {
        let out = run_checked(Command::new("ip").args(["netns", "pids", &self.netns]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "remora-proxy")
            }))
    }

    /// Runs `argv` in the pod to completion, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> io::Result<Output> {
        self.command(argv).stdin(Stdio::null()).output()
    }

    /// Runs `argv` in the pod, failing unless it succeeds.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output, CommandError> {
        run_checked(&mut self.command(argv))
    }

    /// What container `name` (or [`SIDECAR`]) printed so far.
    pub fn log(&self, container: &str) -> String {
        fs::read_to_string(self.log_path(container)).unwrap_or_default()
    }

    /// What the sidecar printed so far.
    pub fn sidecar_log(&self) -> String {
        self.log(SIDECAR)
    }

    pub fn log_path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.log"))
    }

    /// The snapshot its sidecar runs, as its admin `/config_dump` shows it.
    pub fn sidecar_snapshot(&self) -> Result<Snapshot, PodError> {
        let failed = |message: String| PodError::ConfigDump {
            pod: self.id(),
            message,
        };
        let out = self
            .exec(&["curl", "-sS", "-m", "2", CONFIG_DUMP_URL])
            .map_err(|e| failed(format!("running curl: {e}")))?;
        if !out.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        let mut dump: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("not JSON: {e}")))?;
        let snapshot = dump
            .get_mut("snapshot")
            .ok_or_else(|| failed("no snapshot in it".to_owned()))?
            .take();
        serde_json::from_value(snapshot).map_err(|e| failed(format!("snapshot: {e}")))
    }

    /// Where its service-account token is kept on the host (for root only; its sidecar sees
    /// it at `/var/run/secrets/tokens/istio-token`).
    pub fn token_path(&self) -> PathBuf {
        volumes::token_path(&self.dir)
    }
}

/// What starting a pod needs from its cluster.
pub struct StartContext<'a> {
    pub bins: &'a Binaries,
    /// kube-proxy's rules (`iptables-restore` input).
    pub service_nat: &'a str,
    pub tokens: &'a TokenIssuer,
    pub roots_pem: &'a str,
    pub timeout: Duration,
}

/// A pod and everything it owns; dropping it stops its processes, then removes its hosts file
/// and namespace.
pub struct RunningPod {
    // Fields drop in order: processes before the namespace they run in.
    /// Each running container's process, by container name, in start order.
    processes: Vec<(String, Process)>,
    etc: EtcNetns,
    _network: PodNetwork,
    pub info: LocalPod,
    /// What the manifests asked for (before admission).
    pub plan: PodPlan,
    /// The pod as admission left it: what runs, and what is recorded.
    pub admitted: Pod,
    run: PodRun,
    /// The kube-proxy rules installed, once started.
    service_nat: Option<String>,
    /// Whether every process started and became ready.
    ready: bool,
    /// When its current service-account token was minted.
    token_minted: Option<Instant>,
}

impl RunningPod {
    /// A pod not started yet, with its namespace, address and hosts file in place, to run
    /// `run` (worked out from `admitted`).
    pub fn new(
        plan: PodPlan,
        admitted: Pod,
        run: PodRun,
        network: PodNetwork,
        etc: EtcNetns,
        dir: PathBuf,
    ) -> Self {
        let sidecar = admitted
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION));
        let info = LocalPod {
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            deployment: plan.deployment.clone(),
            service_account: plan.service_account().to_owned(),
            ip: network.ip,
            netns: network.netns.name().to_owned(),
            dir,
            sidecar,
        };
        Self {
            processes: Vec::new(),
            etc,
            _network: network,
            info,
            plan,
            admitted,
            run,
            service_nat: None,
            ready: false,
            token_minted: None,
        }
    }

    /// Whether [`RunningPod::start`] succeeded: its sidecar is ready and its containers
    /// listen, so it may be sent traffic.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Marks the pod as going away: from now on it is recorded not ready, so its endpoints
    /// leave the EndpointSlices before it stops.
    pub fn withdraw(&mut self) {
        self.ready = false;
    }

    /// Asks every process to stop (SIGTERM to each, at once, as the kubelet does): the
    /// sidecar drains, the apps finish what they are doing. Dropping the pod kills what is
    /// left.
    pub fn terminate(&mut self) {
        for (_, process) in &self.processes {
            if let Err(error) = process.signal(Signal::SIGTERM) {
                tracing::debug!(pod = %self.info.id(), %error, "SIGTERM");
            }
        }
    }

    /// Whether every process has exited.
    pub fn exited(&mut self) -> bool {
        self.processes
            .iter_mut()
            .all(|(_, process)| process.exited().is_some())
    }

    /// `terminationGracePeriodSeconds` (Kubernetes' default: 30 s), at most a day.
    pub fn grace_period(&self) -> Duration {
        let seconds = self
            .admitted
            .spec
            .as_ref()
            .and_then(|spec| spec.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds.clamp(0, MAX_GRACE_SECONDS)).unwrap_or(0))
    }

    /// Replaces the pod's hosts file (for commands started from now on).
    pub fn write_hosts(&self, text: &str) -> io::Result<()> {
        self.etc.write_hosts(text)
    }

    /// Writes the pod's volumes, minting a fresh service-account token for any that holds one.
    fn write_volumes(&mut self, tokens: &TokenIssuer, roots_pem: &str) -> Result<(), PodError> {
        let info = &self.info;
        let mint = || {
            tokens
                .mint(
                    &info.namespace,
                    &info.service_account,
                    &info.name,
                    TOKEN_TTL,
                )
                .map_err(|e| format!("minting its service-account token: {e}"))
        };
        let secrets = volumes::Secrets {
            mint: &mint,
            roots_pem,
        };
        volumes::write(
            &info.dir,
            &self.run.volumes,
            |volume| self.run.owner_of(volume),
            &secrets,
        )
        .map_err(|source| PodError::Io {
            pod: info.id(),
            what: "writing its volumes",
            source,
        })?;
        self.token_minted = Some(Instant::now());
        Ok(())
    }

    /// Replaces the pod's token once 80 % of its lifetime has passed, as the kubelet
    /// refreshes projected tokens, so certificates can still be renewed in a long session.
    pub fn refresh_token(&mut self, tokens: &TokenIssuer, roots_pem: &str) -> Result<(), PodError> {
        match self.token_minted {
            Some(minted)
                if minted.elapsed() >= TOKEN_TTL.mul_f64(0.8)
                    && volumes::has_token(&self.run.volumes) =>
            {
                self.write_volumes(tokens, roots_pem)
            }
            _ => Ok(()),
        }
    }

    /// Runs the pod as a kubelet does: its volumes written; init containers in order, each to
    /// completion (a native sidecar started and waited for until ready instead); kube-proxy's
    /// rules; then every container started in order and each waited for until ready.
    pub fn start(&mut self, cx: &StartContext<'_>) -> Result<(), PodError> {
        self.write_volumes(cx.tokens, cx.roots_pem)?;
        for init in self.run.init.clone() {
            if init.keeps_running {
                self.start_container(&init, cx.bins)?;
                self.wait_ready(&init, cx.timeout)?;
            } else {
                self.run_to_completion(&init, cx)?;
            }
        }
        self.route_services(cx.service_nat)?;
        let containers = self.run.containers.clone();
        for container in &containers {
            self.start_container(container, cx.bins)?;
        }
        for container in &containers {
            self.wait_ready(container, cx.timeout)?;
        }
        self.ready = true;
        Ok(())
    }

    /// Waits until the pod's sidecar runs `expected` (whatever its version), the snapshot the
    /// control plane computes for it from what is on disk now; fails at once when `rejected`
    /// says why the sidecar refused it (asked now and then, not on every look). Nothing to wait
    /// for in a pod without a sidecar or not started.
    pub fn wait_for_snapshot(
        &mut self,
        expected: &Snapshot,
        timeout: Duration,
        mut rejected: impl FnMut() -> Option<String>,
    ) -> Result<(), PodError> {
        let Some((_, sidecar)) = self
            .processes
            .iter_mut()
            .find(|(name, _)| name == SIDECAR)
            .filter(|_| self.info.sidecar)
        else {
            return Ok(());
        };
        let info = &self.info;
        let mut rejection = None;
        let mut asked: Option<Instant> = None;
        sidecar
            .wait_until(
                "waiting for the sidecar to receive the current config",
                timeout,
                || {
                    let runs = info.sidecar_snapshot().is_ok_and(|mut running| {
                        running.version.clear();
                        running == *expected
                    });
                    if runs || asked.is_some_and(|at| at.elapsed() < ASK_REJECTED_EVERY) {
                        return runs;
                    }
                    asked = Some(Instant::now());
                    rejection = rejected();
                    rejection.is_some()
                },
            )
            .map_err(|source| PodError::Wait {
                pod: info.id(),
                source: Box::new(source),
            })?;
        match rejection {
            Some(reason) => Err(PodError::Rejected {
                pod: info.id(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Installs `table` (kube-proxy's rules) unless the pod already has exactly these rules.
    /// In a pod with a sidecar they go after `remora-init`'s, which stay: the app's
    /// connections are captured before they meet them (the sidecar handles cluster IPs
    /// itself), so only the sidecar's own connections to a cluster IP (`PASSTHROUGH`
    /// balancing) are forwarded by them, as by kube-proxy's rules on a node.
    fn route_services(&mut self, table: &str) -> Result<(), PodError> {
        if self.service_nat.as_deref() == Some(table) {
            return Ok(());
        }
        let pod = self.info.id();
        let path = self.info.dir.join("kube-proxy.rules");
        let (text, flags): (String, &[&str]) = match (self.info.sidecar, &self.service_nat) {
            (false, _) => (table.to_owned(), &[]),
            // The jump to the chain once; afterwards only the chain is replaced.
            (true, None) => (table.to_owned(), &["--noflush"]),
            (true, Some(_)) => (kube_proxy::without_jump(table), &["--noflush"]),
        };
        fs::write(&path, text).map_err(|source| PodError::Io {
            pod: pod.clone(),
            what: "writing its Service rules",
            source,
        })?;
        let mut argv = vec![OsStr::new("iptables-restore")];
        argv.extend(flags.iter().map(OsStr::new));
        argv.push(path.as_os_str());
        self.info
            .run(&argv)
            .map_err(|source| PodError::Command { pod, source })?;
        self.service_nat = Some(table.to_owned());
        Ok(())
    }

    /// Updates the Service rules of a started pod.
    pub fn update_service_routes(&mut self, table: &str) -> Result<(), PodError> {
        if self.service_nat.is_some() {
            self.route_services(table)?;
        }
        Ok(())
    }

    /// The process of `container`, ready to spawn: its command line (`$(VAR)`s expanded, the
    /// program resolved), as its user, with its volumes bound and its environment.
    fn command(&self, container: &ContainerPlan, bins: &Binaries) -> Result<Command, PodError> {
        let env = expand::environment(&container.env, IpAddr::V4(self.info.ip));
        let mut argv: Vec<OsString> = expand::command_line(&container.argv, &env)
            .into_iter()
            .map(OsString::from)
            .collect();
        let ours = bins.resolve(&mut argv[0]);
        if let Some((uid, gid)) = container.user {
            argv = as_user(uid, gid, &argv);
        }
        let argv =
            volumes::bind_and_exec(&self.info.dir, &container.mounts, argv).map_err(|source| {
                PodError::Io {
                    pod: self.info.id(),
                    what: "creating its mount points",
                    source,
                }
            })?;
        let mut cmd = self.info.command(&argv);
        cmd.env_clear()
            .envs(inherited(INHERITED_ENV))
            .env("HOSTNAME", &self.info.name)
            .envs(env)
            .current_dir(
                container
                    .working_dir
                    .as_ref()
                    .map_or(self.info.dir.clone(), PathBuf::from),
            );
        if ours {
            cmd.envs(inherited(REMORA_INHERITED_ENV));
        }
        Ok(cmd)
    }

    /// Runs init container `container` to completion, its output in its log; fails unless it
    /// succeeds.
    fn run_to_completion(
        &mut self,
        container: &ContainerPlan,
        cx: &StartContext<'_>,
    ) -> Result<(), PodError> {
        let pod = self.info.id();
        let mut cmd = self.command(container, cx.bins)?;
        let out = run_checked(cmd.stdin(Stdio::null()));
        let log = match &out {
            Ok(out) => [out.stdout.as_slice(), &out.stderr].concat(),
            Err(e) => e.to_string().into_bytes(),
        };
        let _ = fs::write(self.info.log_path(&container.name), log);
        out.map(drop)
            .map_err(|source| PodError::Command { pod, source })
    }

    fn start_container(
        &mut self,
        container: &ContainerPlan,
        bins: &Binaries,
    ) -> Result<(), PodError> {
        let cmd = self.command(container, bins)?;
        let name = format!("{}/{}", self.info.id(), container.name);
        let process =
            Process::spawn(&name, cmd, &self.info.log_path(&container.name)).map_err(|source| {
                PodError::Process {
                    pod: self.info.id(),
                    source,
                }
            })?;
        self.processes.push((container.name.clone(), process));
        Ok(())
    }

    /// Waits until started container `container` is ready (its probe, else its ports).
    fn wait_ready(&mut self, container: &ContainerPlan, timeout: Duration) -> Result<(), PodError> {
        let (pod, netns, ip) = (self.info.id(), self.info.netns.clone(), self.info.ip);
        let Some((_, process)) = self
            .processes
            .iter_mut()
            .rev()
            .find(|(name, _)| *name == container.name)
        else {
            return Ok(());
        };
        let what = format!("waiting for container {} to be ready", container.name);
        process
            .wait_until(&what, timeout, || {
                probe::ready(&netns, ip, &container.ready)
            })
            .map_err(|source| PodError::Wait {
                pod,
                source: Box::new(source),
            })
    }
}

/// The launcher's own values of `names` that are set.
fn inherited(names: &'static [&'static str]) -> impl Iterator<Item = (&'static str, OsString)> {
    names
        .iter()
        .filter_map(|name| Some((*name, std::env::var_os(name)?)))
}
