//! The end-to-end tests' face of the local cluster launcher: the repository's `examples/`
//! copied to a scratch directory (so a test can edit manifests while the mesh runs), brought up
//! with freshly built binaries, plus what tests do to it: curl through it, read a sidecar's
//! admin and metrics, and time how long a change takes to reach a sidecar.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use parking_lot::{Mutex, MutexGuard};
use remora_injector::local::{Cluster, LocalPod, Options};

use crate::{two_pods::CurlResult, Binaries};

/// One example cluster at a time per test binary: each runs a control plane, sidecars and
/// httpbin, and the timing these tests measure means little on an overloaded machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The repository's example app.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub struct ExampleCluster {
    // Fields drop in order: the cluster, then its manifests, then the lock.
    pub cluster: Cluster,
    manifests: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl ExampleCluster {
    /// Brings up a copy of `examples/`. `name` keeps namespaces and files of concurrent test
    /// binaries apart.
    pub fn up(name: &str) -> anyhow::Result<Self> {
        Self::up_with(name, |_| Ok(()))
    }

    /// Like [`ExampleCluster::up`], after `edit` has changed the copied manifests.
    pub fn up_with(
        name: &str,
        edit: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        crate::require_root()?;
        let turn = ONE_AT_A_TIME.lock();
        let bins = Binaries::get()?.launcher()?;
        let prefix = format!("rmr-{name}");
        let manifests =
            std::env::temp_dir().join(format!("{prefix}-{}-manifests", std::process::id()));
        let _ = fs::remove_dir_all(&manifests);
        copy_dir(&examples_dir(), &manifests)?;
        let up = edit(&manifests).and_then(|()| {
            Ok(Cluster::up(
                &manifests,
                Options {
                    name: prefix,
                    keep_state: std::env::var_os("REMORA_KEEP_LOGS").is_some(),
                    binaries: Some(bins),
                    ..Options::default()
                },
            )?)
        });
        let cluster = match up {
            Ok(cluster) => cluster,
            Err(e) => {
                let _ = fs::remove_dir_all(&manifests);
                return Err(e);
            }
        };
        Ok(Self {
            cluster,
            manifests,
            _turn: turn,
        })
    }

    /// The copied manifests the control plane reads.
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// The first replica of Deployment `name`.
    pub fn pod(&self, deployment: &str) -> anyhow::Result<LocalPod> {
        self.cluster
            .deployment(deployment)
            .first()
            .map(|pod| (*pod).clone())
            .with_context(|| format!("no pod of Deployment {deployment}"))
    }

    /// Replaces `from` with `to` in manifest `file`, as a user editing it would.
    pub fn edit(&self, file: &str, from: &str, to: &str) -> anyhow::Result<()> {
        edit_file(&self.manifests.join(file), from, to)
    }
}

impl Drop for ExampleCluster {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.manifests);
    }
}

/// Replaces `from` (which must occur) with `to` in `path`.
pub fn edit_file(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if !text.contains(from) {
        bail!("{} does not contain {from:?}", path.display());
    }
    fs::write(path, text.replace(from, to)).with_context(|| format!("writing {}", path.display()))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let target = to.join(path.file_name().context("a directory entry has a name")?);
        if path.is_dir() {
            copy_dir(&path, &target)?;
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

/// `GET http://127.0.0.1:<port><path>` inside `pod` (a sidecar's admin or metrics), failing
/// unless it answers 2xx.
pub fn local_get(pod: &LocalPod, port: u16, path: &str) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = pod.run(&["curl", "-sSf", "-m", "5", &url])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The sidecar's config dump (admin `GET /config_dump`), parsed.
pub fn config_dump(pod: &LocalPod) -> anyhow::Result<serde_json::Value> {
    let text = local_get(pod, 15000, "/config_dump")?;
    serde_json::from_str(&text).context("/config_dump is not JSON")
}

/// The sidecar's Prometheus text (`:15090/stats/prometheus`).
pub fn sidecar_metrics(pod: &LocalPod) -> anyhow::Result<String> {
    local_get(pod, 15090, "/stats/prometheus")
}

/// Whether any string in `value` contains `needle`, or any number equals it.
pub fn mentions(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains(needle),
        serde_json::Value::Number(n) => n.to_string() == needle,
        serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, needle)),
        serde_json::Value::Object(map) => map.values().any(|v| mentions(v, needle)),
        _ => false,
    }
}

/// Polls `check` every 50 ms until it holds; how long that took, or an error after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            bail!("{what}: not within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
