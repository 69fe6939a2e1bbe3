//! `remora-demo`: brings up `examples/` as a local cluster on this machine (no Kubernetes
//! needed): the control plane, httpbin and a `sleep` client, each pod with a sidecar that got
//! its certificate from the mesh CA. Sends one plain `curl http://httpbin.demo:8000/...` from
//! `sleep` (a Service name, resolved to its cluster IP, captured by the sidecar, carried over
//! mTLS) and prints what httpbin saw. Then, with `examples/zero-trust/`, curls team-a's httpbin
//! from team-a's curl (allowed) and team-b's (403 `RBAC: access denied`), each with what
//! `remoractl authz check` says decided it. With `examples/traffic/`, sends 200 requests to the
//! `reviews` canary and counts, as the caller sees them, which version answered (the
//! VirtualService splits 90/10), with what `remoractl route check` says about the route. With
//! `--keep` the cluster stays up until Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context};
use clap::Parser;
use remora_e2e::example_cluster::{curl, examples_dir};
use remora_local::{Binaries, Cluster, LocalPod, Options, Shutdown};

const URL: &str = "http://httpbin.demo:8000/get?show_env=1";
/// team-a's httpbin, which only team-a's curl may call (`examples/zero-trust/policies.yaml`).
const ZERO_TRUST_URL: &str = "http://httpbin.team-a:8000/get";
/// The canary of `examples/traffic/`: a VirtualService splits it 90/10 over v1 and v2.
const CANARY_URL: &str = "http://reviews.shop:9080/";
const CANARY_REQUESTS: usize = 200;

#[derive(Parser)]
#[command(
    name = "remora-demo",
    about = "Run the example app on a local Remora mesh (needs root)"
)]
struct Args {
    /// Keep the mesh running after the request until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// The manifests to bring up.
    #[arg(long, default_value_os_t = examples_dir())]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    remora_e2e::require_root()?;
    // Caught from the start, so even an interrupted bring-up is torn down.
    let mut shutdown = Shutdown::install().context("catching Ctrl-C, SIGTERM and SIGHUP")?;

    let dir = args.dir.canonicalize().unwrap_or_else(|_| args.dir.clone());
    println!(
        "Bringing up {}: the control plane, then each pod with remora-init rules and a sidecar...",
        dir.display()
    );
    let cluster = Cluster::up(
        &args.dir,
        Options {
            name: "rmr-demo".to_owned(),
            ..Options::default()
        },
    )?;
    for skipped in cluster.skipped() {
        println!("  not run: {skipped}");
    }
    println!(
        "  {:<20} {:<14} control plane (network namespace {})",
        "istio-system/istiod",
        cluster.control_plane_ip(),
        cluster.control_plane_netns()
    );
    for pod in cluster.pods() {
        println!(
            "  {:<20} {:<14} {} (network namespace {})",
            pod.id(),
            pod.ip.to_string(),
            if pod.sidecar { "sidecar" } else { "no sidecar" },
            pod.netns
        );
    }
    for service in cluster.services() {
        if let Some(ip) = service.cluster_ip {
            println!(
                "  Service {}.{} -> cluster IP {ip}",
                service.name, service.namespace
            );
        }
    }

    let sleep = first_pod(&cluster, "sleep")?;
    println!("\n$ ip netns exec {} curl {URL}", sleep.netns);
    let response = curl(&sleep, URL)?;
    println!("HTTP {}", response.status);
    let seen: serde_json::Value =
        serde_json::from_str(&response.body).context("httpbin did not answer with JSON")?;
    let xfcc = seen["headers"]["X-Forwarded-Client-Cert"]
        .as_str()
        .context("httpbin saw no X-Forwarded-Client-Cert: the request did not cross the mesh")?;
    println!("httpbin saw X-Forwarded-Client-Cert: {xfcc}");
    let caller = xfcc
        .split(';')
        .find_map(|part| part.strip_prefix("URI="))
        .context("no URI= in X-Forwarded-Client-Cert")?;
    println!("httpbin's caller, proven by mTLS: {caller}");

    // The zero-trust example, when the manifests have it.
    if let (Some(allowed), Some(denied)) = (
        cluster.first_pod("team-a", "curl"),
        cluster.first_pod("team-b", "curl"),
    ) {
        zero_trust(&dir, allowed, denied)?;
    }

    // The canary of the traffic example, when the manifests have it.
    if let Some(client) = cluster.first_pod("shop", "sleep") {
        canary(&dir, client)?;
    }

    if args.keep {
        let httpbin = first_pod(&cluster, "httpbin")?;
        println!(
            "\nThe mesh is up. Try:\n  \
             sudo ip netns exec {sleep} curl -s http://httpbin.demo:8000/headers\n  \
             sudo ip netns exec {sleep} curl -s http://127.0.0.1:15090/stats/prometheus\n  \
             sudo ip netns exec {httpbin} curl -s http://127.0.0.1:15000/certs\n\
             Edit {dir} (e.g. the Service port) and the sidecars follow.\n\
             Records and logs: {state}\nPress Ctrl-C to tear it down.",
            sleep = sleep.netns,
            httpbin = httpbin.netns,
            dir = dir.display(),
            state = cluster.state_dir().display(),
        );
        shutdown.wait();
        println!("Tearing down...");
    }
    Ok(())
}

/// team-a's httpbin called by `allowed` and by `denied`: each answer, and what `remoractl authz
/// check` (the sidecar's own decision, explained) says about the same request.
fn zero_trust(dir: &Path, allowed: &LocalPod, denied: &LocalPod) -> anyhow::Result<()> {
    println!(
        "\nZero trust: team-a's httpbin answers team-a's curl only \
         (AuthorizationPolicy team-a/httpbin-allow-curl)."
    );
    let config_dir = dir.display().to_string();
    for caller in [allowed, denied] {
        println!("\n$ ip netns exec {} curl {ZERO_TRUST_URL}", caller.netns);
        let response = curl(caller, ZERO_TRUST_URL)?;
        if response.status == 200 {
            println!("HTTP 200");
        } else {
            println!("HTTP {}: {}", response.status, response.body.trim());
        }
        let from = format!(
            "spiffe://{}/ns/{}/sa/{}",
            remora_e2e::TRUST_DOMAIN,
            caller.namespace,
            caller.service_account
        );
        let args: [&str; 12] = [
            "authz",
            "check",
            "--config-dir",
            &config_dir,
            "--to",
            "team-a/httpbin",
            "--from",
            &from,
            "--method",
            "GET",
            "--path",
            "/get",
        ];
        remoractl(&args)?;
    }
    Ok(())
}

/// `CANARY_REQUESTS` requests to the reviews canary from `client`, counted by the pod that
/// answered (each answers with its name), and the route `remoractl route check` explains.
fn canary(dir: &Path, client: &LocalPod) -> anyhow::Result<()> {
    println!(
        "\nTraffic: the VirtualService shop/reviews sends 90% of requests to subset v1, 10% to v2 \
         (examples/traffic/canary.yaml)."
    );
    let script = format!("for i in $(seq {CANARY_REQUESTS}); do curl -s -m 5 {CANARY_URL}; done");
    println!(
        "\n$ ip netns exec {} sh -c '{script}' | sort | uniq -c",
        client.netns
    );
    let out = client
        .exec(&["sh", "-c", &script])
        .context("sending the canary requests")?;
    let answers = String::from_utf8_lossy(&out.stdout);
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for pod in answers.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *counts.entry(pod).or_default() += 1;
    }
    for (pod, count) in &counts {
        println!("{count:>7} {pod}");
    }
    let answered: usize = counts.values().sum();
    ensure!(
        answered == CANARY_REQUESTS,
        "{answered} of {CANARY_REQUESTS} canary requests were answered"
    );
    let config_dir = dir.display().to_string();
    let args = [
        "route",
        "check",
        "--config-dir",
        &config_dir,
        "--from",
        "shop/sleep",
        "--url",
        CANARY_URL,
    ];
    remoractl(&args)?;
    Ok(())
}

/// Runs `remoractl args...` as a user would, showing the command and what it printed.
fn remoractl(args: &[&str]) -> anyhow::Result<()> {
    let remoractl = Binaries::locate()?.dir.join("remoractl");
    println!("$ remoractl {}", args.join(" "));
    let out = Command::new(&remoractl)
        .args(args)
        .output()
        .with_context(|| format!("running {}", remoractl.display()))?;
    ensure!(
        out.status.success(),
        "remoractl {} failed ({}): {}",
        args.first().copied().unwrap_or_default(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn first_pod(cluster: &Cluster, deployment: &str) -> anyhow::Result<LocalPod> {
    cluster
        .deployment(deployment)
        .first()
        .map(|pod| (*pod).clone())
        .with_context(|| format!("the manifests have no Deployment {deployment}"))
}
