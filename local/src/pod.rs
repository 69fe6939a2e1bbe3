//! One local pod: its network namespace, hosts file and processes, started in the order a
//! kubelet runs an injected pod: `istio-init` (`remora-init`), the `istio-proxy` sidecar
//! (`remora-proxy` as uid 1337 with the environment and secrets Istio's injection gives it),
//! then, once the sidecar is ready, each container's `command`/`args`.

use std::{
    ffi::{OsStr, OsString},
    fs, io,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use remora_api::proto::config::Snapshot;
use remora_injector::token::{TokenError, TokenIssuer};

use super::{
    bins::Binaries,
    expand,
    hosts::EtcNetns,
    kube_proxy,
    netns::{exec_in, run_checked, CommandError},
    network::{Network, PodNetwork},
    plan::PodPlan,
    probe,
    process::{as_proxy_user, Process, ProcessError},
    secrets,
    wait::WaitError,
};

/// The sidecar container's name in an injected pod (and its log's name here).
pub const SIDECAR: &str = "istio-proxy";
/// The init container's name (and its log's name here).
const INIT: &str = "istio-init";
/// Istio's `istio-token` projected volume lives 12 hours (`expirationSeconds: 43200`).
const TOKEN_TTL: Duration = Duration::from_secs(43_200);
/// The longest grace period a stopping pod gets (a manifest may say anything up to `i64::MAX`).
const MAX_GRACE_SECONDS: i64 = 24 * 60 * 60;
/// How often a wait for a sidecar's config asks whether the sidecar rejected it.
const ASK_REJECTED_EVERY: Duration = Duration::from_millis(500);
/// The sidecar's admin endpoint with the snapshot it runs (`{"snapshot": ...}`).
const CONFIG_DUMP_URL: &str = "http://127.0.0.1:15000/config_dump";
/// Binds the pod's secrets over `/var/run/secrets` in the private mount namespace `ip netns
/// exec` made, then becomes the sidecar. `$0` is the secrets directory, `$@` the sidecar.
const BIND_SECRETS_AND_EXEC: &str = r#"mount --bind "$0" /var/run/secrets && exec "$@""#;
/// Variables of the launcher's environment passed on to everything a pod runs.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG"];
/// Variables passed on to sidecars, for debugging them.
const SIDECAR_INHERITED_ENV: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];

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
    #[error("pod {pod}: minting its service-account token: {source}")]
    Token {
        pod: String,
        #[source]
        source: TokenError,
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
        secrets::token_path(&self.dir)
    }
}

/// What starting a pod needs from its cluster.
pub struct StartContext<'a> {
    pub bins: &'a Binaries,
    /// kube-proxy's rules for pods without a sidecar (`iptables-restore` input).
    pub service_nat: &'a str,
    pub network: &'a Network,
    pub tokens: &'a TokenIssuer,
    pub roots_pem: &'a str,
    /// The mesh's trust domain, which the sidecar's identity is in (`TRUST_DOMAIN`).
    pub trust_domain: &'a str,
    pub timeout: Duration,
}

/// A pod and everything it owns; dropping it stops its processes, then removes its hosts file
/// and namespace.
pub struct RunningPod {
    // Fields drop in order: processes before the namespace they run in.
    processes: Vec<Process>,
    etc: EtcNetns,
    _network: PodNetwork,
    pub info: LocalPod,
    pub plan: PodPlan,
    /// The kube-proxy rules installed, for a started pod without a sidecar.
    service_nat: Option<String>,
    /// Whether every process started and became ready.
    ready: bool,
    /// When the sidecar's current token was minted.
    token_minted: Option<Instant>,
}

impl RunningPod {
    /// A pod not started yet, with its namespace, address and hosts file in place.
    pub fn new(plan: PodPlan, network: PodNetwork, etc: EtcNetns, dir: PathBuf) -> Self {
        let info = LocalPod {
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            deployment: plan.deployment.clone(),
            service_account: plan.service_account.clone(),
            ip: network.ip,
            netns: network.netns.name().to_owned(),
            dir,
            sidecar: plan.sidecar,
        };
        Self {
            processes: Vec::new(),
            etc,
            _network: network,
            info,
            plan,
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
        for process in &self.processes {
            if let Err(error) = process.signal(Signal::SIGTERM) {
                tracing::debug!(pod = %self.info.id(), %error, "SIGTERM");
            }
        }
    }

    /// Whether every process has exited.
    pub fn exited(&mut self) -> bool {
        self.processes
            .iter_mut()
            .all(|process| process.exited().is_some())
    }

    /// `terminationGracePeriodSeconds` (Kubernetes' default: 30 s), at most a day.
    pub fn grace_period(&self) -> Duration {
        let seconds = self
            .plan
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds.clamp(0, MAX_GRACE_SECONDS)).unwrap_or(0))
    }

    /// Replaces the pod's hosts file (for commands started from now on).
    pub fn write_hosts(&self, text: &str) -> io::Result<()> {
        self.etc.write_hosts(text)
    }

    /// Runs the pod: init and sidecar when injected, then its containers, each waited for.
    /// Mints the sidecar's token and writes it with the mesh root; returns the directory to
    /// bind over `/var/run/secrets`.
    fn write_secrets(
        &mut self,
        tokens: &TokenIssuer,
        roots_pem: &str,
    ) -> Result<PathBuf, PodError> {
        let pod = self.info.id();
        let token = tokens
            .mint(
                &self.info.namespace,
                &self.info.service_account,
                &self.info.name,
                TOKEN_TTL,
            )
            .map_err(|source| PodError::Token {
                pod: pod.clone(),
                source,
            })?;
        let dir =
            secrets::write(&self.info.dir, &token, roots_pem).map_err(|source| PodError::Io {
                pod,
                what: "writing its secrets",
                source,
            })?;
        self.token_minted = Some(Instant::now());
        Ok(dir)
    }

    /// Replaces the sidecar's token once 80 % of its lifetime has passed, as the kubelet
    /// refreshes projected tokens, so certificates can still be renewed in a long session.
    pub fn refresh_token(&mut self, tokens: &TokenIssuer, roots_pem: &str) -> Result<(), PodError> {
        match self.token_minted {
            Some(minted) if minted.elapsed() >= TOKEN_TTL.mul_f64(0.8) => {
                self.write_secrets(tokens, roots_pem).map(drop)
            }
            _ => Ok(()),
        }
    }

    pub fn start(&mut self, cx: &StartContext<'_>) -> Result<(), PodError> {
        if self.plan.sidecar {
            self.start_sidecar(cx)?;
        }
        self.route_services(cx.service_nat)?;
        for index in 0..self.plan.containers.len() {
            self.start_container(index, cx.timeout)?;
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
        let Some(sidecar) = self.processes.first_mut().filter(|_| self.plan.sidecar) else {
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
        let (text, flags): (String, &[&str]) = match (self.plan.sidecar, &self.service_nat) {
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

    fn start_sidecar(&mut self, cx: &StartContext<'_>) -> Result<(), PodError> {
        let pod = self.info.id();
        let init = cx.network.run_init(&cx.bins.init, &self.info.netns);
        let log = match &init {
            Ok(out) => [out.stdout.as_slice(), &out.stderr].concat(),
            Err(e) => e.to_string().into_bytes(),
        };
        let _ = fs::write(self.info.log_path(INIT), log);
        init.map_err(|source| PodError::Command {
            pod: pod.clone(),
            source,
        })?;

        let secrets_dir = self.write_secrets(cx.tokens, cx.roots_pem)?;
        let io_error = |what| {
            let pod = pod.clone();
            move |source| PodError::Io { pod, what, source }
        };
        secrets::ensure_mount_point().map_err(io_error("creating /var/run/secrets"))?;

        let mut argv: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            BIND_SECRETS_AND_EXEC.into(),
            secrets_dir.into(),
        ];
        let mut sidecar: Vec<OsString> = vec![cx.bins.proxy.clone().into()];
        // As Istio's injection template passes `concurrency` to the proxy.
        if let Some(workers) = self.plan.sidecar_config.concurrency {
            sidecar.extend(["--concurrency".into(), workers.to_string().into()]);
        }
        argv.extend(as_proxy_user(&sidecar));
        let mut cmd = self.info.command(&argv);
        cmd.env_clear()
            .envs(inherited(INHERITED_ENV))
            .envs(inherited(SIDECAR_INHERITED_ENV))
            .env("POD_NAME", &self.info.name)
            .env("POD_NAMESPACE", &self.info.namespace)
            .env("SERVICE_ACCOUNT", &self.info.service_account)
            .env("INSTANCE_IP", self.info.ip.to_string())
            .env("CA_ADDR", remora_api::DEFAULT_CA_ADDR)
            .env("TRUST_DOMAIN", cx.trust_domain)
            .envs(&self.plan.sidecar_config.env);
        let netns = self.info.netns.clone();
        let process = self.spawn(SIDECAR, cmd)?;
        process
            .wait_until("waiting for the sidecar to be ready", cx.timeout, || {
                probe::sidecar_ready(&netns)
            })
            .map_err(|source| PodError::Wait {
                pod,
                source: Box::new(source),
            })
    }

    fn start_container(&mut self, index: usize, timeout: Duration) -> Result<(), PodError> {
        let container = self.plan.containers[index].clone();
        let env = expand::environment(&container.env, IpAddr::V4(self.info.ip));
        let mut cmd = self
            .info
            .command(&expand::command_line(&container.argv, &env));
        cmd.env_clear()
            .envs(inherited(INHERITED_ENV))
            .env("HOSTNAME", &self.info.name)
            .envs(env)
            .current_dir(&self.info.dir);
        let (pod, netns) = (self.info.id(), self.info.netns.clone());
        let process = self.spawn(&container.name, cmd)?;
        for port in container.ports {
            process
                .wait_until(
                    &format!(
                        "waiting for container {} to listen on {port}",
                        container.name
                    ),
                    timeout,
                    || probe::listening(&netns, port),
                )
                .map_err(|source| PodError::Wait {
                    pod: pod.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    fn spawn(&mut self, container: &str, cmd: Command) -> Result<&mut Process, PodError> {
        let name = format!("{}/{container}", self.info.id());
        let process =
            Process::spawn(&name, cmd, &self.info.log_path(container)).map_err(|source| {
                PodError::Process {
                    pod: self.info.id(),
                    source,
                }
            })?;
        self.processes.push(process);
        Ok(self.processes.last_mut().expect("just pushed"))
    }
}

/// The launcher's own values of `names` that are set.
fn inherited(names: &'static [&'static str]) -> impl Iterator<Item = (&'static str, OsString)> {
    names
        .iter()
        .filter_map(|name| Some((*name, std::env::var_os(name)?)))
}
