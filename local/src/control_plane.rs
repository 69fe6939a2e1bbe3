//! The control plane of a local cluster: `remora-injector serve` in a pod of its own (namespace
//! `istio-system`, no sidecar, no interception, an address below the ones pods get), reading
//! the user's manifests and the launcher's records, reached by every pod as
//! `istiod.istio-system.svc`. It can be stopped and started again with the same flags and
//! state, which is how the tests show the data plane outliving it.
//!
//! Or, given an API server program ([`ControlPlaneConfig::api_server`]), it runs as in a
//! cluster: that program serves the same directories as a Kubernetes API (and the launcher's
//! CA as the `cacerts` Secret) in the control plane's pod, and `remora-injector serve
//! --kubernetes` reads everything from it. The API server outlives control-plane restarts, as
//! a cluster's does.

use std::{
    ffi::OsString,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::{
    hosts::EtcNetns,
    netns::exec_in,
    network::PodNetwork,
    process::{Process, ProcessError},
    wait::WaitError,
};

/// istiod's HTTP port: `/ready`, `/metrics`, `/debug/*`.
const MONITORING_PORT: u16 = 15014;
/// istiod's webhook port (which the `istiod` Service's port 443 sends to).
const WEBHOOK_PORT: u16 = 15017;
/// The name the webhook's serving certificate is issued for.
const WEBHOOK_HOST: &str = "istiod.istio-system.svc";
/// How long the API server waits for a webhook (Istio's `timeoutSeconds`).
const WEBHOOK_TIMEOUT_SECONDS: &str = "10";
/// istiod's container name, used for its log file.
const CONTAINER: &str = "discovery";
/// Where the API server listens, in the control plane's pod.
const API_SERVER: &str = "127.0.0.1:6443";
/// The control plane's namespace.
const NAMESPACE: &str = "istio-system";
/// Passed on from the launcher's environment.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"];

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control plane: {0}")]
    Process(#[from] ProcessError),
    #[error("control plane: {0}")]
    Wait(#[from] Box<WaitError>),
    #[error("control plane: GET {path}: {message}")]
    Http { path: String, message: String },
    #[error("control plane: writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control plane: POST https://{WEBHOOK_HOST}:{WEBHOOK_PORT}{path}: {message}")]
    Webhook { path: String, message: String },
}

/// One sidecar's line in `/debug/syncz`, as far as the launcher reads it.
#[derive(serde::Deserialize)]
struct SyncStatus {
    pod: String,
    rejected: Option<Rejected>,
}

#[derive(serde::Deserialize)]
struct Rejected {
    version: String,
    reason: String,
}

/// How to run the control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    pub binary: PathBuf,
    /// Read in order: the user's manifests, then the launcher's records.
    pub config_dirs: Vec<PathBuf>,
    pub ca_dir: PathBuf,
    pub token_key: PathBuf,
    /// Where its log goes.
    pub dir: PathBuf,
    /// A Kubernetes API server program to read everything from instead of files (the tests'
    /// fake one), run as `PROGRAM --listen ADDR --config-dir D... --token-key K
    /// --plugged-in-ca DIR --audit FILE`.
    pub api_server: Option<PathBuf>,
}

/// The control plane's pod and, while running, its process.
pub struct ControlPlane {
    process: Option<Process>,
    /// The API server, when it runs as in a cluster.
    api_server: Option<Process>,
    _etc: EtcNetns,
    network: PodNetwork,
    config: ControlPlaneConfig,
}

impl ControlPlane {
    /// The pod, not started yet.
    pub fn new(network: PodNetwork, etc: EtcNetns, config: ControlPlaneConfig) -> Self {
        Self {
            process: None,
            api_server: None,
            _etc: etc,
            network,
            config,
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.network.ip
    }

    pub fn netns(&self) -> &str {
        self.network.netns.name()
    }

    /// The directories it reads its config from, in its order.
    pub fn config_dirs(&self) -> &[PathBuf] {
        &self.config.config_dirs
    }

    pub fn log_path(&self) -> PathBuf {
        self.config.dir.join(format!("{CONTAINER}.log"))
    }

    /// Everything it printed, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts it (unless running) and waits for `/ready`.
    pub fn start(&mut self, timeout: Duration) -> Result<(), ControlPlaneError> {
        let running = self
            .process
            .take()
            .and_then(|mut process| process.exited().is_none().then_some(process));
        let mut process = match running {
            Some(process) => process,
            None => self.spawn()?,
        };
        let (netns, url) = (self.netns().to_owned(), self.url("/ready"));
        let ready = process.wait_until("waiting for the control plane's /ready", timeout, || {
            http_get(&netns, &url).is_ok_and(|(status, _)| status == 200)
        });
        self.process = Some(process);
        ready.map_err(|e| ControlPlaneError::Wait(Box::new(e)))
    }

    fn spawn(&mut self) -> Result<Process, ControlPlaneError> {
        let mut argv: Vec<OsString> = vec![self.config.binary.clone().into(), "serve".into()];
        let mut env: Vec<(&str, OsString)> = INHERITED_ENV
            .iter()
            .filter_map(|name| Some((*name, std::env::var_os(name)?)))
            .collect();
        if self.config.api_server.is_some() {
            let kubeconfig = self.start_api_server()?;
            argv.push("--kubernetes".into());
            env.extend([
                ("KUBECONFIG", kubeconfig.into()),
                ("POD_NAMESPACE", NAMESPACE.into()),
                ("POD_NAME", "istiod".into()),
                // As the install runs it: Istio objects' statuses say whether they were taken.
                ("PILOT_ENABLE_STATUS", "true".into()),
            ]);
        } else {
            for dir in &self.config.config_dirs {
                argv.extend(["--config-dir".into(), dir.into()]);
            }
            argv.extend([
                "--ca-dir".into(),
                self.config.ca_dir.clone().into(),
                "--token-key".into(),
                self.config.token_key.clone().into(),
            ]);
        }
        let mut cmd = exec_in(self.netns(), &argv);
        cmd.env_clear().envs(env);
        Ok(Process::spawn(
            "istio-system/istiod",
            cmd,
            &self.log_path(),
        )?)
    }

    /// Starts the API server unless it runs, and waits until it answers; the kubeconfig that
    /// reaches it.
    fn start_api_server(&mut self) -> Result<PathBuf, ControlPlaneError> {
        let kubeconfig = self.config.dir.join("kubeconfig");
        let running = self
            .api_server
            .as_mut()
            .is_some_and(|p| p.exited().is_none());
        let Some(program) = self.config.api_server.clone().filter(|_| !running) else {
            return Ok(kubeconfig);
        };
        std::fs::write(&kubeconfig, kubeconfig_for(API_SERVER)).map_err(|source| {
            ControlPlaneError::Write {
                path: kubeconfig.clone(),
                source,
            }
        })?;
        let mut argv: Vec<OsString> = vec![program.into(), "--listen".into(), API_SERVER.into()];
        for dir in &self.config.config_dirs {
            argv.extend(["--config-dir".into(), dir.into()]);
        }
        argv.extend([
            "--token-key".into(),
            self.config.token_key.clone().into(),
            "--plugged-in-ca".into(),
            self.config.ca_dir.clone().into(),
            "--audit".into(),
            self.api_audit_path().into(),
        ]);
        let mut cmd = exec_in(self.netns(), &argv);
        cmd.env_clear();
        let log = self.config.dir.join("apiserver.log");
        let mut process = Process::spawn("kube-system/kube-apiserver", cmd, &log)?;
        let (netns, url) = (
            self.netns().to_owned(),
            format!("http://{API_SERVER}/api/v1/namespaces"),
        );
        process
            .wait_until(
                "waiting for the API server",
                Duration::from_secs(10),
                || http_get(&netns, &url).is_ok_and(|(status, _)| status == 200),
            )
            .map_err(|e| ControlPlaneError::Wait(Box::new(e)))?;
        self.api_server = Some(process);
        Ok(kubeconfig)
    }

    /// Where the API server writes each kind of request the control plane made
    /// (`VERB group/resource`), when it runs as in a cluster.
    pub fn api_audit_path(&self) -> PathBuf {
        self.config.dir.join("apiserver-audit.txt")
    }

    /// Stops it: SIGTERM, a grace period, SIGKILL. The API server, if any, keeps running.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// `GET path` on its monitoring port: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>), ControlPlaneError> {
        http_get(self.netns(), &self.url(path)).map_err(|message| ControlPlaneError::Http {
            path: path.to_owned(),
            message,
        })
    }

    /// Why the sidecar of pod `namespace/name` rejected snapshot `version`, if it did (its
    /// last rejection in `/debug/syncz`). Unknown when the page cannot be read: `None`.
    pub fn rejection(&self, pod: &str, version: &str) -> Option<String> {
        let (status, body) = self.get("/debug/syncz").ok()?;
        if status != 200 {
            return None;
        }
        let sidecars: Vec<SyncStatus> = serde_json::from_slice(&body).ok()?;
        sidecars
            .into_iter()
            .filter(|sidecar| sidecar.pod == pod)
            .filter_map(|sidecar| sidecar.rejected)
            .find(|rejected| rejected.version == version)
            .map(|rejected| rejected.reason)
    }

    /// `POST`s `review` (an AdmissionReview) to `path` on its webhook port over HTTPS, as the
    /// API server calls it: the certificate checked against the mesh root for
    /// `istiod.istio-system.svc`. The answer's body, when its status is 200.
    pub fn call_webhook(&self, path: &str, review: &[u8]) -> Result<Vec<u8>, ControlPlaneError> {
        let failed = |message: String| ControlPlaneError::Webhook {
            path: path.to_owned(),
            message,
        };
        let root = self.config.ca_dir.join("root-cert.pem");
        let resolve = format!("{WEBHOOK_HOST}:{WEBHOOK_PORT}:{}", self.ip());
        let url = format!("https://{WEBHOOK_HOST}:{WEBHOOK_PORT}{path}");
        let mut argv: Vec<OsString> = vec!["--cacert".into(), root.into()];
        argv.extend(
            [
                "--resolve",
                &resolve,
                "-m",
                WEBHOOK_TIMEOUT_SECONDS,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
                &url,
            ]
            .map(OsString::from),
        );
        match curl(self.netns(), &argv, review).map_err(failed)? {
            (200, body) => Ok(body),
            (status, body) => Err(failed(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:{MONITORING_PORT}{path}", self.ip())
    }
}

/// `curl` from inside `netns`: the status (0 when nothing answered) and body.
fn http_get(netns: &str, url: &str) -> Result<(u16, Vec<u8>), String> {
    curl(netns, &["-m", "2", url].map(OsString::from), &[])
}

/// `curl -s ARGS` from inside `netns` with `stdin` as its input: the status and body; an error
/// when nothing answered.
fn curl(netns: &str, args: &[OsString], stdin: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut argv: Vec<OsString> = ["curl", "-sS", "-w", "\n%{http_code}"]
        .map(OsString::from)
        .to_vec();
    argv.extend_from_slice(args);
    let mut child = exec_in(netns, &argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running curl: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        // curl reads its input before it answers; a failure shows in its status below.
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running curl: {e}"))?;
    let text = out.stdout;
    let split = text.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&text[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    if status == 0 {
        return Err(format!(
            "no answer ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((status, text[..split].to_vec()))
}

/// A kubeconfig for the API server at `address` (plain HTTP, as the tests' fake one serves).
pub fn kubeconfig_for(address: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: http://{address}\n\
         contexts:\n- name: local\n  context:\n    cluster: local\n    namespace: {NAMESPACE}\n    user: istiod\n\
         current-context: local\nusers:\n- name: istiod\n  user: {{}}\n"
    )
}

/// Whether `dir` looks like a CA directory (has the root certificate).
pub fn has_ca(dir: &Path) -> bool {
    dir.join("root-cert.pem").is_file()
}
