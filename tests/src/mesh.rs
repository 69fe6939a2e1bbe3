//! A hand-wired mesh with no control plane: pods on the launcher's network
//! ([`remora_local::Network`]), certificates issued directly from a CA the test
//! holds, and sidecars started from static bootstrap files. Tests use it to set up what a
//! control plane would never produce (a foreign CA, a wrong identity, a chosen snapshot).
//!
//! Layout (all inside namespaces this mesh creates; nothing touches the host's network):
//! - namespace `<prefix>-sw` holds bridge `br0`;
//! - each pod is namespace `<prefix>-<pod>` with `eth0` (a veth whose peer is on `br0`), a /32
//!   address in 198.18.0.0/16 and a single route, 198.18.0.0/15 via `eth0`;
//! - `remora-init` runs in each pod with the injector's default arguments, and the sidecar runs
//!   as uid/gid 1337 with its bootstrap, certificates and log in the pod's directory.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::Context;
use parking_lot::Mutex;
use remora_api::{
    proto::config::{Endpoint, Snapshot},
    Bootstrap, FileIdentity, IdentitySource, ProxyMetadata, SpiffeId,
};
use remora_injector::ca::{Authority, DEFAULT_WORKLOAD_TTL};
use remora_local::{
    as_proxy_user, exec_in, probe, run_checked, Network, PodNetwork, Process, PROXY_UID,
};

use crate::{bins::Binaries, capture::Capture};

pub const TRUST_DOMAIN: &str = remora_api::DEFAULT_TRUST_DOMAIN;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which CA signs a sidecar's certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertOrigin {
    /// The mesh CA, as every well-behaved sidecar.
    #[default]
    Mesh,
    /// A CA the rest of the mesh does not trust. The sidecar itself trusts both roots, so any
    /// refusal observed is its peer's doing.
    Foreign,
}

/// How to start one sidecar.
#[derive(Clone, Debug, Default)]
pub struct SidecarOptions {
    /// Mesh endpoints this sidecar may call, with the identity each must present.
    pub endpoints: Vec<(SocketAddr, SpiffeId)>,
    pub cert: CertOrigin,
    /// How long the sidecar drains on SIGTERM (the proxy's default when `None`).
    pub drain_duration: Option<Duration>,
    /// The policies of the sidecar's own workload.
    pub security: Option<remora_api::proto::config::Security>,
    /// Services this sidecar may call (with their routes), and the workloads behind them.
    pub services: Vec<remora_api::proto::config::Service>,
    pub workloads: Vec<remora_api::proto::config::Workload>,
    /// What the sidecar records (Istio's defaults when `None`).
    pub telemetry: Option<remora_api::proto::config::Telemetry>,
}

/// A pod: a network namespace with an address on the mesh bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Set in a dual-stack mesh.
    pub ip6: Option<Ipv6Addr>,
    pub namespace: String,
    pub service_account: String,
    pub dir: PathBuf,
}

pub struct Mesh {
    // Fields drop in order: processes before the namespaces they run in.
    processes: Mutex<Vec<Process>>,
    pods: Mutex<Vec<PodNetwork>>,
    network: Network,
    prefix: String,
    dir: PathBuf,
    bins: Binaries,
    ca: Authority,
    foreign_ca: Authority,
}

impl Mesh {
    /// Creates an empty IPv4 mesh. `name` keeps concurrent meshes (one per test) apart.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        Self::create(name, false)
    }

    /// Creates an empty mesh whose pods also get an IPv6 address (in 2001:2::/48, the IPv6
    /// benchmarking range) and `remora-init --dual-stack`.
    pub fn new_dual_stack(name: &str) -> anyhow::Result<Self> {
        Self::create(name, true)
    }

    fn create(name: &str, dual_stack: bool) -> anyhow::Result<Self> {
        crate::require_root()?;
        let bins = Binaries::get()?;
        let prefix = format!("rmr-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let network = Network::create(&format!("{prefix}-sw"), dual_stack)?;
        Ok(Self {
            processes: Mutex::new(Vec::new()),
            pods: Mutex::new(Vec::new()),
            network,
            prefix,
            dir,
            bins,
            ca: Authority::generate(TRUST_DOMAIN)?,
            foreign_ca: Authority::generate(TRUST_DOMAIN)?,
        })
    }

    /// Adds a pod and installs `remora-init`'s rules in it, ready for a sidecar.
    pub fn add_pod(
        &self,
        name: &str,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<Pod> {
        self.create_pod(name, namespace, service_account, true)
    }

    /// Adds a pod outside the mesh (as `sidecar.istio.io/inject: "false"`): no rules, no sidecar.
    pub fn add_pod_without_sidecar(
        &self,
        name: &str,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<Pod> {
        self.create_pod(name, namespace, service_account, false)
    }

    fn create_pod(
        &self,
        name: &str,
        namespace: &str,
        service_account: &str,
        intercept: bool,
    ) -> anyhow::Result<Pod> {
        let net = self.network.add_pod(&format!("{}-{name}", self.prefix))?;
        if intercept {
            run_init(&self.bins.init, net.netns.name(), self.network.dual_stack())
                .context("running remora-init")?;
        }

        let dir = self.dir.join(name);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let pod = Pod {
            name: name.to_owned(),
            netns: net.netns.name().to_owned(),
            ip: net.ip,
            ip6: net.ip6,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            dir,
        };
        self.pods.lock().push(net);
        Ok(pod)
    }

    /// The SPIFFE identity a pod's sidecar runs as.
    pub fn identity(pod: &Pod) -> anyhow::Result<SpiffeId> {
        Ok(SpiffeId::new(
            TRUST_DOMAIN,
            &pod.namespace,
            &pod.service_account,
        )?)
    }

    /// Starts `pod`'s sidecar and waits until it reports ready on 15021.
    pub fn start_sidecar(&self, pod: &Pod, options: &SidecarOptions) -> anyhow::Result<()> {
        let id = Self::identity(pod)?;
        let certs = pod.dir.join("certs");
        let issued = match options.cert {
            CertOrigin::Mesh => self.ca.issue(&id, DEFAULT_WORKLOAD_TTL)?,
            CertOrigin::Foreign => {
                let mut cert = self.foreign_ca.issue(&id, DEFAULT_WORKLOAD_TTL)?;
                cert.roots_pem.push_str(self.ca.roots_pem());
                cert
            }
        };
        issued.save(&certs)?;
        for path in [certs.clone(), certs.join("key.pem")] {
            std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        let bootstrap = Bootstrap {
            metadata: ProxyMetadata {
                pod_name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                instance_ip: Some(IpAddr::V4(pod.ip)),
                labels: Default::default(),
            },
            trust_domain: TRUST_DOMAIN.to_owned(),
            identity: IdentitySource::Files(FileIdentity {
                cert_chain: certs.join("cert-chain.pem"),
                key: certs.join("key.pem"),
                roots: certs.join("root-cert.pem"),
            }),
            control_plane: None,
            drain_duration: options.drain_duration,
            concurrency: None,
            app_probers: Default::default(),
            app_metrics: None,
            static_snapshot: Some(Snapshot {
                version: "1".to_owned(),
                endpoints: options
                    .endpoints
                    .iter()
                    .map(|(address, identity)| Endpoint {
                        address: address.to_string(),
                        identity: identity.to_string(),
                        workload: String::new(),
                    })
                    .collect(),
                security: options.security.clone(),
                services: options.services.clone(),
                workloads: options.workloads.clone(),
                telemetry: options.telemetry.clone(),
                ..Snapshot::default()
            }),
        };
        let config = pod.dir.join("bootstrap.yaml");
        fs::write(&config, serde_json::to_string_pretty(&bootstrap)?)?;

        let cmd = exec_in(
            &pod.netns,
            &as_proxy_user(&[
                self.bins.proxy.as_os_str(),
                "--config".as_ref(),
                config.as_os_str(),
            ]),
        );
        self.start_process(
            pod,
            "sidecar",
            cmd,
            "waiting for the sidecar to be ready",
            || probe::sidecar_ready(&pod.netns),
        )
    }

    /// Starts an app process in `pod` and waits until something listens on `port`.
    pub fn start_app(&self, pod: &Pod, name: &str, argv: &[&str], port: u16) -> anyhow::Result<()> {
        self.start_process(
            pod,
            name,
            exec_in(&pod.netns, argv),
            &format!("waiting for {name} to listen on {port}"),
            || probe::listening(&pod.netns, port),
        )
    }

    /// Issues a certificate from the mesh CA for `namespace`/`service_account` (plus DNS
    /// names) into `dir`, as `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    pub fn issue_cert(
        &self,
        namespace: &str,
        service_account: &str,
        dns_names: &[&str],
        dir: &Path,
    ) -> anyhow::Result<()> {
        let id = SpiffeId::new(TRUST_DOMAIN, namespace, service_account)?;
        self.ca
            .issue_with_dns(&id, dns_names, DEFAULT_WORKLOAD_TTL)?
            .save(dir)?;
        Ok(())
    }

    /// The pid of a process started in `pod`.
    pub fn pid(&self, pod: &Pod, name: &str) -> Option<u32> {
        self.with_process(&format!("{}/{name}", pod.name), |p| p.pid())
    }

    /// Starts `cmd` as process `name` of `pod` and waits until `ready` holds, failing early
    /// (with its log) if it exits. The process is kept either way, so it is stopped with the
    /// mesh.
    fn start_process(
        &self,
        pod: &Pod,
        name: &str,
        cmd: std::process::Command,
        what: &str,
        ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let log = pod.dir.join(format!("{name}.log"));
        let mut process = Process::spawn(&format!("{}/{name}", pod.name), cmd, &log)?;
        let started = process.wait_until(what, READY_TIMEOUT, ready);
        self.processes.lock().push(process);
        Ok(started?)
    }

    /// Sends `signal` to a process started in `pod` (e.g. SIGTERM to its sidecar).
    pub fn signal(
        &self,
        pod: &Pod,
        name: &str,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<()> {
        let full = format!("{}/{name}", pod.name);
        Ok(self
            .with_process(&full, |p| p.signal(signal))
            .with_context(|| format!("no process {full}"))??)
    }

    /// Waits up to `timeout` for a process started in `pod` to exit.
    pub fn wait_exit(
        &self,
        pod: &Pod,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let full = format!("{}/{name}", pod.name);
        self.with_process(&full, |p| p.wait_timeout(timeout))
            .with_context(|| format!("no process {full}"))
    }

    fn with_process<T>(&self, full_name: &str, f: impl FnOnce(&mut Process) -> T) -> Option<T> {
        let mut processes = self.processes.lock();
        processes.iter_mut().find(|p| p.name() == full_name).map(f)
    }

    /// What a process started in `pod` printed so far.
    pub fn log(&self, pod: &Pod, name: &str) -> String {
        fs::read_to_string(pod.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts capturing every packet crossing the bridge.
    pub fn capture(&self) -> anyhow::Result<Capture> {
        Capture::start(self.network.switch(), &self.dir.join("bridge.pcap"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.processes.lock().clear();
        self.pods.lock().clear();
        if std::env::var_os("REMORA_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Pod {
    /// Runs `argv` inside the pod as root (an app container's view of the network).
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        exec_in(&self.netns, argv)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in {}", self.name))
    }

    /// Like [`Pod::exec`], failing unless the command succeeds.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<Output> {
        Ok(run_checked(&mut exec_in(&self.netns, argv))?)
    }

    /// The sum of a sidecar counter's samples whose labels include every one of `labels`
    /// (each written `name="value"`).
    pub fn sidecar_counter(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        Ok(counter(&self.sidecar_metrics()?, name, labels))
    }

    /// The Prometheus text a sidecar serves on 15090.
    pub fn sidecar_metrics(&self) -> anyhow::Result<String> {
        let out = self.run(&["curl", "-sS", "http://127.0.0.1:15090/stats/prometheus"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The sum of the samples of counter `name` in Prometheus text whose labels include every one
/// of `labels`.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Installs the sidecar's interception rules in namespace `netns` by running `remora-init`
/// (at `init`) with the arguments Istio's injector gives it, as the `istio-init` container
/// does before any other container starts.
fn run_init(
    init: &std::path::Path,
    netns: &str,
    dual_stack: bool,
) -> Result<std::process::Output, remora_local::CommandError> {
    let mut argv = vec![init.as_os_str()];
    argv.extend(
        remora_init::flags::INJECTOR_DEFAULT_ARGS
            .iter()
            .map(std::ffi::OsStr::new),
    );
    if dual_stack {
        argv.push("--dual-stack".as_ref());
    }
    run_checked(
        // The flag above decides; a stray variable in our environment must not.
        exec_in(netns, &argv).env_remove(remora_init::flags::DUAL_STACK_ENV),
    )
}
