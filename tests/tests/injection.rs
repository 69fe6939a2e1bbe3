//! `remoractl kube-inject` as users run it: its output is valid Kubernetes (checked by the
//! Python `kubernetes-validate`, strict, against the API version the control plane models), it
//! injects every kind it should, and a bad input prints nothing and fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{ensure, Context};
use remora_e2e::{two_pods::fixture, Binaries};

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
