//! One real sidecar (`remora-proxy`) subscribed to the synthetic cluster's control plane as an
//! injected one would be: its certificate from the CA with its pod's token, its config from
//! discovery. What the bench reads of it is its memory and the CPU it spends taking a change.
//!
//! It runs in a mount namespace of its own, whose `/etc/hosts` gives the control plane's
//! certificate name (`istiod.istio-system.svc`) the loopback address; its listeners are the
//! sidecar ports of this machine's network, so nothing else may hold them while it runs.

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use remora_e2e::{Binaries, Process};

use super::registry::PodInfo;

/// The name the control plane's certificate carries.
const CONTROL_PLANE: &str = "istiod.istio-system.svc";
/// The sidecar's metrics, for the version of the config it runs (`remora_config_version`):
/// its config dump would say the same, but writing a whole registry out as JSON every poll
/// would be what the bench measures of its memory.
const STATS: &str = "http://127.0.0.1:15000/stats/prometheus";

pub struct RealSidecar {
    process: Process,
}

impl RealSidecar {
    /// Starts the sidecar of `pod`, with `token` and the mesh `roots` (PEM), against the control
    /// plane's gRPC port `grpc` on loopback.
    pub fn start(
        bins: &Binaries,
        dir: &Path,
        grpc: u16,
        pod: &PodInfo,
        token: &Path,
        roots: &str,
    ) -> anyhow::Result<Self> {
        let roots_path = dir.join("real-roots.pem");
        fs::write(&roots_path, roots)?;
        let hosts = dir.join("real-hosts");
        let system = fs::read_to_string("/etc/hosts").unwrap_or_default();
        fs::write(&hosts, format!("{system}\n127.0.0.1 {CONTROL_PLANE}\n"))?;
        let address = format!("{CONTROL_PLANE}:{grpc}");
        let bootstrap = serde_json::json!({
            "metadata": {
                "podName": pod.name,
                "namespace": pod.namespace,
                "serviceAccount": pod.service_account,
                "instanceIp": pod.ip,
            },
            "identity": {"ca": {
                "address": address,
                "token": token,
                "roots": roots_path,
                "ttl": "1h",
            }},
            "controlPlane": address,
        });
        let config = dir.join("real-bootstrap.yaml");
        fs::write(&config, bootstrap.to_string())?;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" --config "$3""#)
            .arg("sh")
            .arg(&hosts)
            .arg(bins.dir.join("remora-proxy"))
            .arg(&config)
            .env("RUST_LOG", "warn");
        let process = Process::spawn("real-sidecar", command, &dir.join("real-sidecar.log"))?;
        Ok(Self { process })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The version of the config it runs, once it runs one.
    fn version(&self) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "-m", "2", STATS])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let version = line.strip_prefix("remora_config_version{version=\"")?;
                let (version, value) = version.split_once("\"}")?;
                (value.trim() == "1" && !version.is_empty()).then(|| version.to_owned())
            })
    }

    /// Waits until it runs a config other than `previous`; that config's version.
    pub fn wait_for_config(
        &mut self,
        previous: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            if let Some(version) = self.version().filter(|v| Some(v.as_str()) != previous) {
                return Ok(version);
            }
            if let Some(status) = self.process.exited() {
                anyhow::bail!(
                    "the real sidecar exited ({status}):\n{}",
                    self.process.log()
                );
            }
            if started.elapsed() > timeout {
                return Err(anyhow::anyhow!("not within {timeout:?}")).with_context(|| {
                    format!("the real sidecar's config:\n{}", self.process.log())
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
