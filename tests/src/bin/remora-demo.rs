//! `remora-demo`: brings up a two-pod mesh on this machine (no cluster needed), sends one plain
//! `curl` from the `sleep` pod to httpbin through both sidecars, and prints what httpbin saw.
//! With `--keep` the mesh stays up until Ctrl-C, for poking at by hand.

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use remora_e2e::two_pods::{TwoPods, TwoPodsOptions};

#[derive(Parser)]
#[command(
    name = "remora-demo",
    about = "Run a two-pod Remora mesh locally (needs root)"
)]
struct Args {
    /// Keep the mesh running after the request until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Take SIGINT/SIGTERM as events to wait for, so the mesh is always torn down by Drop.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block().context("blocking SIGINT/SIGTERM")?;

    println!("Starting pods `httpbin` and `sleep`, each with remora-init rules and a sidecar...");
    let pods = TwoPods::start("demo", &TwoPodsOptions::default())?;
    println!(
        "  httpbin  {}  (network namespace {})\n  sleep    {}  (network namespace {})",
        pods.server.ip, pods.server.netns, pods.client.ip, pods.client.netns
    );
    let url_path = "/get?show_env=1";
    println!(
        "\n$ ip netns exec {} curl http://{}:8000{url_path}",
        pods.client.netns, pods.server.ip
    );
    let response = pods.curl(&pods.client, url_path, &[])?;
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

    if args.keep {
        println!(
            "\nThe mesh is up. Try:\n  ip netns exec {} curl -s http://{}:8000/headers\n  \
             ip netns exec {} curl -s http://127.0.0.1:15090/stats/prometheus\n\
             Logs and certificates: {}\nPress Ctrl-C to tear it down.",
            pods.client.netns,
            pods.server.ip,
            pods.client.netns,
            pods.mesh.dir().display()
        );
        stop.wait().context("waiting for Ctrl-C")?;
        println!("Tearing down...");
    }
    Ok(())
}
