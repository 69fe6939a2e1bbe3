//! The local cluster follows edits to its manifests as a cluster's controllers would: a
//! Deployment scaled, given a new template (with `$(VAR)` references the kubelet would
//! expand), broken, or deleted, while a client keeps sending requests to its Service.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use remora_e2e::example_cluster::{curl, wait_for, ExampleCluster, SteadyLoad};
use remora_local::{LocalPod, Rollout};

const HTTPBIN: &str = "http://httpbin.demo:8000/get";
const HTTPBIN_HOSTNAME: &str = "httpbin.demo.svc.cluster.local";
const COMMAND: &str = r#"          command: ["gunicorn", "-b", "0.0.0.0:8080", "httpbin:app"]"#;
/// The same app listening on `$(PORT)`, which only the kubelet's expansion turns into 8080.
const COMMAND_WITH_PORT_VARIABLE: &str = r#"          env:
            - name: PORT
              value: "8080"
          command: ["gunicorn", "-b", "0.0.0.0:$(PORT)", "httpbin:app"]"#;

/// The endpoint addresses of the httpbin Service in `pod`'s sidecar.
fn httpbin_endpoints(pod: &LocalPod) -> anyhow::Result<BTreeSet<String>> {
    let snapshot = pod.sidecar_snapshot()?;
    Ok(snapshot
        .services
        .iter()
        .filter(|service| service.hostname == HTTPBIN_HOSTNAME)
        .flat_map(|service| &service.ports)
        .flat_map(|port| &port.endpoints)
        .map(|endpoint| endpoint.address.clone())
        .collect())
}

fn names(pods: &[LocalPod]) -> Vec<String> {
    pods.iter().map(LocalPod::id).collect()
}

fn addresses(pods: &[&LocalPod]) -> BTreeSet<String> {
    pods.iter().map(|pod| format!("{}:8080", pod.ip)).collect()
}

/// Re-reads the manifests, printing what changed and how long it took.
fn resync(mesh: &mut ExampleCluster, what: &str) -> Rollout {
    let started = Instant::now();
    let rollout = mesh.cluster.resync();
    println!(
        "{what}: {:?} (started {:?}, stopped {:?}, held {:?}, failed {:?})",
        started.elapsed(),
        names(&rollout.started),
        names(&rollout.stopped),
        rollout.held,
        rollout.failed
    );
    rollout
}

#[test]
fn manifest_edits_roll_out_without_failed_requests() -> anyhow::Result<()> {
    let mut mesh = ExampleCluster::up("rollout")?;
    let sleep = mesh.pod("sleep")?;
    let load = SteadyLoad::start(&sleep, HTTPBIN, Duration::from_millis(50));

    // Scaled up: a second replica, known to the client's sidecar when resync returns.
    mesh.edit("httpbin.yaml", "replicas: 1", "replicas: 2")?;
    let rollout = resync(&mut mesh, "scaled to 2");
    ensure!(names(&rollout.started) == ["demo/httpbin-1"], "{rollout:?}");
    ensure!(
        rollout.stopped.is_empty() && rollout.failed.is_empty(),
        "{rollout:?}"
    );
    let running = mesh.cluster.deployment("httpbin");
    ensure!(httpbin_endpoints(&sleep)? == addresses(&running));

    // A new template: each replica replaced by a new pod, started before the old one stops.
    // The new command listens on $(PORT): had it not been expanded, gunicorn would not start.
    mesh.edit("httpbin.yaml", "version: v1", "version: v2")?;
    mesh.edit("httpbin.yaml", COMMAND, COMMAND_WITH_PORT_VARIABLE)?;
    let rollout = resync(&mut mesh, "new template");
    ensure!(rollout.failed.is_empty(), "{rollout:?}");
    ensure!(
        names(&rollout.started) == ["demo/httpbin-2", "demo/httpbin-3"]
            && names(&rollout.stopped) == ["demo/httpbin-0", "demo/httpbin-1"],
        "{rollout:?}"
    );
    let running = mesh.cluster.deployment("httpbin");
    ensure!(httpbin_endpoints(&sleep)? == addresses(&running));

    // A template that cannot start: the first new pod fails, the old pods keep serving, and
    // the same pod is not tried again before its back-off (10 s at first) has passed.
    mesh.edit(
        "httpbin.yaml",
        r#"command: ["gunicorn", "-b", "0.0.0.0:$(PORT)", "httpbin:app"]"#,
        r#"command: ["false"]"#,
    )?;
    let rollout = resync(&mut mesh, "template that exits");
    ensure!(
        rollout.started.is_empty() && rollout.stopped.is_empty() && rollout.failed.len() == 1,
        "{rollout:?}"
    );
    ensure!(
        format!("{:#}", rollout.failed[0]).contains("exited"),
        "{:#}",
        rollout.failed[0]
    );
    let rollout = resync(&mut mesh, "again");
    ensure!(
        rollout.started.is_empty() && rollout.stopped.is_empty() && rollout.failed.is_empty(),
        "{rollout:?}"
    );
    ensure!(mesh.cluster.deployment("httpbin").len() == 2);

    // An invalid edit is rejected by the control plane; the pods stay as they run.
    mesh.edit("httpbin.yaml", "replicas: 2", "replicas: two")?;
    let rollout = resync(&mut mesh, "invalid replicas");
    ensure!(
        rollout.started.is_empty() && rollout.stopped.is_empty(),
        "{rollout:?}"
    );
    ensure!(
        matches!(rollout.held.as_slice(), [reason]
            if reason.contains("Deployment demo/httpbin") && reason.contains("spec.replicas")),
        "{rollout:?}"
    );
    ensure!(mesh.cluster.deployment("httpbin").len() == 2);

    let (sent, failed) = load.finish()?;
    println!(
        "{sent} requests during the rollouts, {} failed",
        failed.len()
    );
    ensure!(sent >= 20, "only {sent} requests were sent");
    ensure!(failed.is_empty(), "failed requests:\n{}", failed.join("\n"));

    // Deleted from the manifests: its pods go, and the Service has no endpoints left.
    let path = mesh.manifests().join("httpbin.yaml");
    let text = fs::read_to_string(&path)?;
    let deployment = text
        .find("---\napiVersion: apps/v1\nkind: Deployment")
        .context("httpbin.yaml has a Deployment")?;
    fs::write(&path, &text[..deployment])?;
    // Held for one read (an editor may be half-way through writing the file), then gone.
    let rollout = resync(&mut mesh, "Deployment deleted");
    ensure!(
        rollout.stopped.is_empty()
            && matches!(rollout.held.as_slice(), [reason] if reason.contains("no longer")),
        "{rollout:?}"
    );
    let asked = Instant::now();
    let rollout = resync(&mut mesh, "still deleted");
    ensure!(
        names(&rollout.stopped) == ["demo/httpbin-3", "demo/httpbin-2"],
        "{rollout:?}"
    );
    ensure!(mesh.cluster.deployment("httpbin").is_empty());
    ensure!(httpbin_endpoints(&sleep)?.is_empty());
    let response = curl(&sleep, HTTPBIN)?;
    ensure!(response.status != 200, "{response:?}");

    // Asked to stop (SIGTERM), the sidecar drains and the app exits well within the grace
    // period (30 s); the next read then removes what is left of the pods.
    let netns: Vec<PathBuf> = rollout
        .stopped
        .iter()
        .map(|pod| Path::new("/run/netns").join(&pod.netns))
        .collect();
    wait_for(
        "the stopped pods to exit and be removed",
        Duration::from_secs(25),
        || {
            mesh.cluster.resync();
            Ok(netns.iter().all(|path| !path.exists()))
        },
    )?;
    println!(
        "the stopped pods were gone {:?} after they were asked to stop",
        asked.elapsed()
    );
    Ok(())
}
