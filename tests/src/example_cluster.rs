//! The end-to-end tests' face of the local cluster launcher: the repository's `examples/`
//! (its top-level files, plus the subdirectories a test asks for) copied to a scratch directory
//! (so a test can edit manifests while the mesh runs), brought up with freshly built binaries,
//! plus what tests do to it: curl through it, read a sidecar's admin and metrics, and time how
//! long a change takes to reach a sidecar.

use std::{
    fs,
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use parking_lot::{Mutex, MutexGuard};
use remora_local::{wait, write_atomic, Cluster, LocalPod, Options};
use tempfile::TempDir;

use crate::{two_pods::CurlResult, Binaries};

/// One example cluster at a time per test binary: each runs a control plane, sidecars and
/// httpbin, and the timing these tests measure means little on an overloaded machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The repository's example app.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Deployment `client/plain`: a pod outside the mesh, as a user opts one out (a YAML document,
/// after a `---`, to write on its own or after other documents).
pub const POD_WITHOUT_SIDECAR: &str = r#"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: plain
  namespace: client
spec:
  selector:
    matchLabels: {app: plain}
  template:
    metadata:
      labels: {app: plain, sidecar.istio.io/inject: "false"}
    spec:
      containers:
        - name: plain
          image: curlimages/curl
          command: ["sleep", "infinity"]
"#;

/// The port of [`echo_app`].
pub const ECHO_PORT: u16 = 9000;

/// An echo server (the client speaks first) in namespace `demo` (with a sidecar), as
/// `echo.demo:9000`, its Service port named `port_name` (which says whether, and what, it
/// declares): YAML documents to write on their own or after a `---`.
pub fn echo_app(port_name: &str) -> String {
    let server = crate::two_pods::fixture("echo_server.py");
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: echo, namespace: demo}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo, labels: {{app: echo}}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: {port_name}, port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: demo}}
spec:
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      serviceAccountName: echo
      containers:
        - name: echo
          image: python
          command: ["python3", "{server}", "{ECHO_PORT}"]
          ports: [{{containerPort: {ECHO_PORT}}}]
"#
    )
}

pub struct ExampleCluster {
    // Fields drop in order: the cluster, then its manifests (the control plane reads them
    // until it stops), then the lock.
    pub cluster: Cluster,
    manifests: TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl ExampleCluster {
    /// Brings up a copy of the top-level files of `examples/` (the demo app and `mesh.yaml`;
    /// its subdirectories, such as `zero-trust/`, are left out). `name` keeps namespaces and
    /// files of concurrent test binaries apart.
    pub fn up(name: &str) -> anyhow::Result<Self> {
        Self::up_with(name, |_| Ok(()))
    }

    /// Like [`ExampleCluster::up`], after `edit` has changed the copied manifests.
    pub fn up_with(
        name: &str,
        edit: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::up_with_dirs(name, &[], edit)
    }

    /// Like [`ExampleCluster::up_with`], with the subdirectories `dirs` of `examples/` (e.g.
    /// `"zero-trust"`) copied too, each under its own name beside the top-level files.
    pub fn up_with_dirs(
        name: &str,
        dirs: &[&str],
        edit: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::bring_up(name, dirs, edit, None)
    }

    /// Like [`ExampleCluster::up_with_dirs`], with the control plane run as in a cluster:
    /// `remora-injector serve --kubernetes` against the tests' fake API server, which serves
    /// the manifests and the launcher's records.
    pub fn up_on_api_server(
        name: &str,
        dirs: &[&str],
        edit: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let api_server = Binaries::get()?.fake_apiserver;
        Self::bring_up(name, dirs, edit, Some(api_server))
    }

    fn bring_up(
        name: &str,
        dirs: &[&str],
        edit: impl FnOnce(&Path) -> anyhow::Result<()>,
        api_server: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        crate::require_root()?;
        let turn = ONE_AT_A_TIME.lock();
        let bins = Binaries::get()?.launcher()?;
        let prefix = format!("rmr-{name}");
        let manifests = tempfile::Builder::new()
            .prefix(&format!("{prefix}-manifests-"))
            .tempdir()
            .context("creating a directory for the manifests")?;
        copy_dir(&examples_dir(), manifests.path(), false)?;
        for dir in dirs {
            copy_dir(&examples_dir().join(dir), &manifests.path().join(dir), true)?;
        }
        edit(manifests.path())?;
        let cluster = Cluster::up(
            manifests.path(),
            Options {
                name: prefix,
                keep_state: std::env::var_os("REMORA_KEEP_LOGS").is_some(),
                binaries: Some(bins),
                api_server,
                ..Options::default()
            },
        )?;
        // A manifest a test meant to run but the launcher skipped would otherwise surface later
        // as a missing pod.
        anyhow::ensure!(
            cluster.skipped().is_empty(),
            "Deployments not run: {:?}",
            cluster.skipped()
        );
        Ok(Self {
            cluster,
            manifests,
            _turn: turn,
        })
    }

    /// The copied manifests the control plane reads.
    pub fn manifests(&self) -> &Path {
        self.manifests.path()
    }

    /// The first replica of Deployment `name`.
    pub fn pod(&self, deployment: &str) -> anyhow::Result<LocalPod> {
        self.cluster
            .deployment(deployment)
            .first()
            .map(|pod| (*pod).clone())
            .with_context(|| format!("no pod of Deployment {deployment}"))
    }

    /// The first replica of Deployment `deployment` in `namespace`, for manifests where
    /// several namespaces have a Deployment of that name.
    pub fn pod_in(&self, namespace: &str, deployment: &str) -> anyhow::Result<LocalPod> {
        self.cluster
            .first_pod(namespace, deployment)
            .cloned()
            .with_context(|| format!("no pod of Deployment {namespace}/{deployment}"))
    }

    /// Writes manifest `file` (a path relative to the manifests, its directory existing) with
    /// `text`, atomically, as a user adding or replacing a file would; the control plane
    /// follows it as it follows any edit.
    pub fn write(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let path = self.manifests().join(file);
        write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// Replaces `from` with `to` in manifest `file`, as a user editing it would.
    pub fn edit(&self, file: &str, from: &str, to: &str) -> anyhow::Result<()> {
        edit_file(&self.manifests().join(file), from, to)
    }
}

/// Replaces `from` (which must occur) with `to` in `path`, atomically (through a temporary
/// file renamed over it), so the watching control plane never reads half an edit.
pub fn edit_file(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if !text.contains(from) {
        bail!("{} does not contain {from:?}", path.display());
    }
    write_atomic(path, text.replace(from, to).as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Copies `from` into `to`: its files, and with `recurse` its subdirectories too.
fn copy_dir(from: &Path, to: &Path, recurse: bool) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let target = to.join(path.file_name().context("a directory entry has a name")?);
        if path.is_dir() {
            if recurse {
                copy_dir(&path, &target, recurse)?;
            }
        } else {
            fs::copy(&path, &target)
                .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
        }
    }
    Ok(())
}

/// `curl <url>` from `pod`, as its app would (through its sidecar).
pub fn curl(pod: &LocalPod, url: &str) -> anyhow::Result<CurlResult> {
    let out = pod
        .exec(&["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", url])
        .with_context(|| format!("running curl in {}", pod.id()))?;
    Ok(CurlResult::from_output(&out))
}

/// Requests from a pod, one at a time with a pause between them, as a steady trickle of
/// traffic through whatever the test changes meanwhile; [`SteadyLoad::finish`] says how many
/// were sent and which failed.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u32, Vec<String>)>,
}

impl SteadyLoad {
    /// Starts `curl <url>` from `pod` every `pause` (plus the request's own time).
    pub fn start(pod: &LocalPod, url: &str, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, pod, url) = (stop.clone(), pod.clone(), url.to_owned());
            thread::spawn(move || {
                let (mut sent, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    match curl(&pod, &url) {
                        Ok(response) if response.status == 200 => {}
                        Ok(response) => failed.push(format!("request {sent}: {response:?}")),
                        Err(e) => failed.push(format!("request {sent}: {e:#}")),
                    }
                    thread::sleep(pause);
                }
                (sent, failed)
            })
        };
        Self { stop, thread }
    }

    /// Stops the load: how many requests were sent, and each that failed.
    pub fn finish(self) -> anyhow::Result<(u32, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))
    }
}

/// `GET http://127.0.0.1:<port><path>` inside `pod` (a sidecar's admin or metrics), failing
/// unless it answers 2xx.
pub fn local_get(pod: &LocalPod, port: u16, path: &str) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = pod.run(&["curl", "-sSf", "-m", "5", &url])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The sidecar's Prometheus text (`:15090/stats/prometheus`).
pub fn sidecar_metrics(pod: &LocalPod) -> anyhow::Result<String> {
    local_get(pod, 15090, "/stats/prometheus")
}

/// Polls `check` until it holds; how long that took, or an error after `timeout` (or the
/// first error `check` returns).
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let outcome = wait::poll(timeout, || match check() {
        Ok(true) => ControlFlow::Break(Ok(start.elapsed())),
        Ok(false) => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(Err(e)),
    });
    outcome.unwrap_or_else(|| bail!("{what}: not within {timeout:?}"))
}

/// Fails unless the control plane took every manifest as written (a rejected policy is
/// enforced in its most restrictive form and a rejected route is not applied, either of which
/// would make a test's checks meaningless).
pub fn ensure_accepted(mesh: &ExampleCluster) -> anyhow::Result<()> {
    let rejected: Vec<String> = mesh
        .cluster
        .rejected()
        .iter()
        .map(|r| format!("{}: {}", r.object, r.reason))
        .collect();
    ensure!(
        rejected.is_empty(),
        "rejected by the control plane:\n{}",
        rejected.join("\n")
    );
    Ok(())
}

/// What the control plane rejects now (`/debug/rejections`), for the message of a check that
/// failed after a manifest was written while the mesh runs.
pub fn rejections(mesh: &ExampleCluster) -> String {
    match mesh.cluster.rejections() {
        Ok(Some(rejected)) => format!("the control plane rejects: {rejected}"),
        Ok(None) => "the control plane serves no /debug/rejections".to_owned(),
        Err(e) => format!("asking the control plane what it rejects: {e}"),
    }
}
