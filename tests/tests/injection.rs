//! `remoractl kube-inject` as users run it: its output is valid Kubernetes (checked by the
//! Python `kubernetes-validate`, strict, against the API version the control plane models), it
//! injects every kind it should, and a bad input prints nothing and fails; and the local
//! launcher running pods exactly as the webhook injects them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{ensure, Context};
use remora_e2e::{
    example_cluster::{sidecar_metrics, ExampleCluster},
    two_pods::fixture,
    Binaries,
};
use remora_local::LocalPod;

fn remoractl() -> anyhow::Result<PathBuf> {
    Ok(Binaries::get()?.dir.join("remoractl"))
}

fn kube_inject(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(remoractl()?)
        .arg("kube-inject")
        .args(args)
        .output()
        .context("running remoractl kube-inject")
}

/// Validates `file` as Kubernetes 1.33 objects, strictly (no unknown fields).
fn validate(file: &Path) -> anyhow::Result<()> {
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .arg(file)
        .output()
        .context("running kubernetes-validate (scripts/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "kubernetes-validate refused {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn injected_manifests_are_valid_kubernetes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let inputs = [
        fixture("inject/catalogue.yaml"),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../injector/src/inject/testdata/hello.yaml"
        )
        .to_owned(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../injector/src/inject/testdata/job-native.yaml"
        )
        .to_owned(),
    ];
    for (i, input) in inputs.iter().enumerate() {
        let output = dir.path().join(format!("injected-{i}.yaml"));
        let out = kube_inject(&["-f", input, "-o", output.to_str().context("utf-8 path")?])?;
        ensure!(
            out.status.success(),
            "kube-inject {input}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&output)?;
        // Every pod (template) of the catalogue got its sidecar: 6 workloads, 1 in the List.
        if i == 0 {
            ensure!(text.matches("name: istio-proxy").count() == 7, "{text}");
        }
        validate(&output)?;
    }
    Ok(())
}

#[test]
fn a_bad_input_prints_nothing_and_fails() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: a}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  annotations: {traffic.sidecar.istio.io/includeOutboundIPRanges: \"10.0.0.0/40\"}\n\
         spec: {containers: [{name: a}]}\n",
    )?;
    let out = kube_inject(&["-f", bad.to_str().context("utf-8 path")?])?;
    ensure!(!out.status.success(), "accepted a bad annotation");
    ensure!(
        out.stdout.is_empty(),
        "printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("document 2 (Pod \"bad\")")
            && stderr.contains("invalid value '10.0.0.0/40' for annotation 'traffic.sidecar.istio.io/includeOutboundIPRanges'"),
        "{stderr}"
    );
    // From stdin too.
    let mut child = Command::new(remoractl()?)
        .args(["kube-inject", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n",
        )?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success());
    ensure!(String::from_utf8_lossy(&out.stdout).contains("istio-proxy"));
    Ok(())
}

/// `GET http://<pod IP>:<port><path>` from inside `pod`, as the kubelet and Prometheus ask it:
/// the status and body.
fn get_pod_ip(pod: &LocalPod, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("http://{}:{port}{path}", pod.ip);
    let out = pod.exec(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((status.trim().parse().unwrap_or(0), body.to_owned()))
}

/// The launcher runs pods as the webhook injects them: the app's probes answered through the
/// sidecar's status port (and failing when the app's health fails), the app's metrics merged
/// there, a native sidecar ready before the app starts, and a pod injection refuses reported.
#[test]
fn the_launcher_runs_what_the_webhook_injects() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("inject", |dir| {
        std::fs::copy(fixture("inject/launcher.yaml"), dir.join("launcher.yaml"))?;
        Ok(())
    })?;
    let health = mesh.pod_in("probes", "health")?;
    ensure!(health.sidecar, "health got no sidecar");
    for path in ["/app-health/health/readyz", "/app-health/health/livez"] {
        let (status, _) = get_pod_ip(&health, 15020, path)?;
        ensure!(status == 200, "{path}: {status}");
    }
    std::fs::write(health.dir.join("unhealthy"), "")?;
    for path in ["/app-health/health/readyz", "/app-health/health/livez"] {
        let (status, _) = get_pod_ip(&health, 15020, path)?;
        ensure!(status >= 500, "{path} while the app is unhealthy: {status}");
    }
    std::fs::remove_file(health.dir.join("unhealthy"))?;

    let (status, merged) = get_pod_ip(&health, 15020, "/stats/prometheus")?;
    ensure!(status == 200, "merged metrics: {status}");
    ensure!(merged.contains("app_requests_total 7"), "{merged}");
    let own = sidecar_metrics(&health)?;
    let sample = own
        .lines()
        .find(|line| line.starts_with("# TYPE"))
        .context("the sidecar exports nothing")?;
    ensure!(merged.contains(sample), "{sample} missing from {merged}");

    let native = mesh.pod_in("probes", "native")?;
    let seen = std::fs::read_to_string(native.dir.join("proxy-ready-at-start"))?;
    ensure!(
        seen == "200",
        "the app started before the proxy was ready: {seen:?}"
    );

    let refused: Vec<String> = mesh.cluster.refused().map(|e| e.to_string()).collect();
    ensure!(
        refused.len() == 1
            && refused[0].contains("traffic.sidecar.istio.io/excludeInboundPorts")
            && refused[0].contains("notaport"),
        "{refused:?}"
    );
    ensure!(
        mesh.pod_in("probes", "refused").is_err(),
        "a refused pod runs"
    );
    Ok(())
}
