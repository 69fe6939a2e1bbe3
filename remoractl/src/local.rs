//! `remoractl local`: bring a directory of manifests up as a local cluster in the foreground
//! (`up`), and run commands in its pods (`exec`).

use std::io::Write;
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use clap::Subcommand;
use remora_local::{Cluster, LocalPod, Options, Rollout, Shutdown};

/// How often `up` re-reads the manifests to follow edits (pods, EndpointSlices, hosts files).
const RESYNC_EVERY: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Run the manifests in DIR (Deployments, Services, Namespaces, Istio resources,
    /// mesh.yaml): the control plane, one network namespace per pod replica, sidecars where
    /// Istio would inject them. Stays in the foreground; Ctrl-C tears everything down.
    Up {
        /// The manifests (searched recursively for *.yaml / *.yml).
        dir: PathBuf,
        /// Keep the CA, token key, records and logs here (default: a temporary directory,
        /// removed on exit). It must be new, empty, or one an earlier run used (marked by its
        /// `.remora-state` file), and not inside DIR.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Seconds the control plane, each sidecar and each app port may take to be ready.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Run a command in a pod of a running `remoractl local up` (as root, in the pod's network
    /// namespace, seeing its hosts file).
    Exec {
        /// The state directory the cluster was started with (`up` prints it).
        #[arg(long)]
        state_dir: PathBuf,
        /// NAMESPACE/POD, e.g. client/sleep-0.
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Up {
            dir,
            state_dir,
            timeout,
        } => up(&dir, state_dir, Duration::from_secs(timeout)),
        LocalCommand::Exec {
            state_dir,
            pod,
            command,
        } => exec(&state_dir, &pod, &command),
    }
}

fn up(dir: &Path, state_dir: Option<PathBuf>, timeout: Duration) -> anyhow::Result<()> {
    require_root()?;
    let mut shutdown = Shutdown::install().context("catching Ctrl-C, SIGTERM and SIGHUP")?;
    println!("Bringing up {} ...", dir.display());
    let options = Options {
        state_dir,
        timeout,
        ..Options::default()
    };
    let mut cluster =
        Cluster::up(dir, options).with_context(|| format!("bringing up {}", dir.display()))?;
    print_summary(&cluster);
    while !shutdown.wait_timeout(RESYNC_EVERY) {
        print_rollout(&cluster.resync());
    }
    // The terminal may be gone (SIGHUP): a failed write must not abort the teardown.
    let _ = writeln!(std::io::stdout(), "Tearing down...");
    Ok(())
}

fn print_summary(cluster: &Cluster) {
    println!(
        "\nControl plane  istio-system/istiod-0  {}  (netns {})",
        cluster.control_plane_ip(),
        cluster.control_plane_netns()
    );
    println!("\nPods:");
    println!(
        "  {:<32} {:<15} {:<44} SIDECAR",
        "NAMESPACE/NAME", "IP", "NETNS"
    );
    for pod in cluster.pods() {
        println!(
            "  {:<32} {:<15} {:<44} {}",
            pod.id(),
            pod.ip.to_string(),
            pod.netns,
            if pod.sidecar { "yes" } else { "no" }
        );
    }
    println!("\nServices:");
    for service in cluster.services() {
        let ports: Vec<String> = service.ports.iter().map(u16::to_string).collect();
        let address = match service.cluster_ip {
            Some(ip) => format!("{ip}:{}", ports.join(",")),
            None => format!("(no cluster IP) ports {}", ports.join(",")),
        };
        println!(
            "  {:<32} {address}",
            format!("{}/{}", service.namespace, service.name)
        );
    }
    print_rejections(cluster);
    print_examples(cluster);
    println!(
        "\nState, records and logs: {}\nPress Ctrl-C to tear it all down.",
        cluster.state_dir().display()
    );
}

/// What a re-read of the manifests changed, if anything (a rollout starts each new pod before
/// it stops an old one).
fn print_rollout(rollout: &Rollout) {
    for pod in &rollout.started {
        println!(
            "started  {:<32} {:<15} netns {}",
            pod.id(),
            pod.ip,
            pod.netns
        );
    }
    for pod in &rollout.stopped {
        println!("stopping {:<32} {}", pod.id(), pod.ip);
    }
    for reason in &rollout.held {
        println!("not changed: {reason}");
    }
    for error in &rollout.failed {
        eprintln!("warning: {error:#}");
    }
}

/// What the control plane rejects (read as it reads it) and the Deployments that cannot run
/// locally, each naming the object and field at fault.
fn print_rejections(cluster: &Cluster) {
    let rejected = cluster.rejected();
    if rejected.is_empty() {
        println!("\nRejected by the control plane: none");
    } else {
        println!("\nRejected by the control plane (not served, not run):");
        for rejection in rejected {
            println!("  {}: {}", rejection.object, rejection.reason);
        }
    }
    let refused: Vec<_> = cluster.refused().collect();
    if !refused.is_empty() {
        println!("\nRefused at admission (not run):");
        for refusal in refused {
            println!("  {refusal}");
        }
    }
    let skipped = cluster.skipped();
    if !skipped.is_empty() {
        println!("\nNot run (cannot run locally):");
        for problem in skipped {
            println!("  {problem}");
        }
    }
}

/// A curl per Service from a pod outside its namespace, and a look at that pod's sidecar.
fn print_examples(cluster: &Cluster) {
    let remoractl = std::env::current_exe()
        .map(|exe| exe.display().to_string())
        .unwrap_or_else(|_| "remoractl".to_owned());
    println!("\nTry:");
    let pods: Vec<&LocalPod> = cluster.pods().collect();
    let mut client = None;
    for service in cluster.services() {
        let (Some(port), Some(_)) = (service.ports.first(), service.cluster_ip) else {
            continue;
        };
        let Some(from) = pods
            .iter()
            .find(|p| p.namespace != service.namespace)
            .or(pods.first())
        else {
            continue;
        };
        println!(
            "  sudo ip netns exec {} curl -s http://{}.{}:{port}/ip",
            from.netns, service.name, service.namespace
        );
        client.get_or_insert(*from);
    }
    if let Some(pod) = client
        .filter(|p| p.sidecar)
        .or(pods.iter().copied().find(|p| p.sidecar))
    {
        println!(
            "  sudo ip netns exec {} curl -s http://127.0.0.1:15090/stats/prometheus",
            pod.netns
        );
        println!(
            "  sudo {remoractl} local exec --state-dir {} {} -- curl -s http://127.0.0.1:15000/config_dump",
            cluster.state_dir().display(),
            pod.id()
        );
    }
}

fn exec(state_dir: &Path, pod: &str, command: &[String]) -> anyhow::Result<()> {
    require_root()?;
    let pods = Cluster::read_index(state_dir)?;
    let Some(found) = pods.iter().find(|p| p.id() == pod) else {
        let known: Vec<String> = pods.iter().map(LocalPod::id).collect();
        bail!("no pod {pod}; the cluster has {}", known.join(", "));
    };
    let error = found.command(command).exec();
    Err(error).with_context(|| format!("running {command:?} in {pod}"))
}

fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        bail!(
            "a local cluster needs root (network namespaces, iptables, running sidecars as uid \
             1337); run with sudo"
        )
    }
}
