//! `remora-scale-bench`: the control plane at scale. A synthetic cluster (`--pods` Pods behind
//! `--services` Services, `--policies` AuthorizationPolicies and VirtualServices) served by the
//! tests' fake Kubernetes API server, `remora-injector serve --kubernetes` reading it, and
//! `--sidecars` simulated sidecars, each with its own certificate from the CA, subscribed over
//! real gRPC + mTLS. It reports how long the initial push takes (all sidecars subscribing at
//! once, until the last has acknowledged its first push), the control plane's memory, the
//! pushes' sizes, and what one Service's endpoint change (written through the API) costs: how
//! many sidecars are sent a push, how many bytes, and how long until the last arrives. One real
//! sidecar subscribes too, for its memory and the CPU it spends taking the change. `--scoped`
//! adds a `Sidecar` per namespace that keeps each workload to its own namespace's Services.

mod real;
mod registry;
mod sidecar;

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::Parser;
use remora_api::{proto::config::Node, SpiffeId};
use remora_bench::procstat;
use remora_e2e::{
    apiserver::{self, free_port},
    Binaries, Process,
};
use remora_injector::token::TokenIssuer;
use rustls::RootCertStore;
use tokio::{sync::mpsc, time::Instant};

use real::RealSidecar;
use registry::Size;
use sidecar::{Received, Sidecar};

/// How long the initial push may take before the bench reports it incomplete.
const INITIAL_PUSH_LIMIT: Duration = Duration::from_secs(300);

#[derive(Parser)]
#[command(name = "remora-scale-bench", about = "The control plane at scale")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// AuthorizationPolicies and VirtualServices, half each.
    #[arg(long, default_value_t = 500)]
    policies: usize,
    #[arg(long, default_value_t = 1_000)]
    sidecars: usize,
    /// A Sidecar resource per namespace (`egress: [{hosts: ["./*"]}]`).
    #[arg(long)]
    scoped: bool,
    /// Keep the working directory (the registry, the logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.sidecars <= args.pods && args.services > 0,
        "--sidecars must be at most --pods, and --services more than 0"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn ready(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-m", "2", "-o", "/dev/null", url])
        .status()
        .is_ok_and(|s| s.success())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let size = Size {
        pods: args.pods,
        services: args.services,
        policies: args.policies,
        scoped: args.scoped,
    };
    let bins = Binaries::get()?;
    let dir = tempfile::Builder::new()
        .prefix("remora-scale-")
        .disable_cleanup(args.keep)
        .tempdir()?;
    if args.keep {
        eprintln!("working directory: {}", dir.path().display());
    }
    let registry = dir.path().join("registry");
    fs::create_dir(&registry)?;
    fs::copy(
        remora_e2e::example_cluster::examples_dir().join("mesh.yaml"),
        registry.join("mesh.yaml"),
    )?;
    write_files(&registry, "objects", &registry::objects(size))?;
    write_files(&registry, "endpoints", &registry::endpoint_slices(size))?;
    let issuer = TokenIssuer::load_or_generate(dir.path())?;

    let api = apiserver::spawn(
        dir.path(),
        &registry,
        &TokenIssuer::public_key_path(dir.path()),
        None,
    )?;
    let api_port = api.port;

    let (grpc, http, webhook) = (free_port()?, free_port()?, free_port()?);
    let mut injector = Command::new(bins.dir.join("remora-injector"));
    injector
        .args(["serve", "--kubernetes"])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
        .env("KUBECONFIG", &api.kubeconfig)
        // `REMORA_SCALE_LOG` (a `RUST_LOG` filter) for the control plane's log, kept with --keep.
        .env(
            "RUST_LOG",
            std::env::var("REMORA_SCALE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        );
    let started = Instant::now();
    let mut injector = Process::spawn("istiod", injector, &dir.path().join("istiod.log"))?;
    let ready_url = format!("http://127.0.0.1:{http}/ready");
    injector.wait_until("the control plane", Duration::from_secs(300), || {
        ready(&ready_url)
    })?;
    let catalog_ready = started.elapsed();
    let rss_ready = procstat::peak_rss_mib(injector.pid());

    // The mesh root, as sidecars get it: the root ConfigMap the control plane publishes.
    let root_url =
        format!("http://127.0.0.1:{api_port}/api/v1/namespaces/ns-0/configmaps/istio-ca-root-cert");
    let (roots, roots_pem) = wait_for_root(&root_url).await?;
    let addr: SocketAddr = format!("127.0.0.1:{grpc}").parse()?;

    let mut sidecars = Vec::with_capacity(args.sidecars);
    for index in 0..args.sidecars {
        let pod = registry::pod(size, index);
        let token = dir.path().join(format!("token-{index}"));
        let minted = issuer.mint(
            &pod.namespace,
            &pod.service_account,
            &pod.name,
            Duration::from_secs(3600),
        )?;
        fs::write(&token, minted)?;
        sidecars.push(Arc::new(Sidecar {
            index,
            id: SpiffeId::new("cluster.local", &pod.namespace, &pod.service_account)?,
            node: Node {
                pod_name: pod.name,
                namespace: pod.namespace,
                ip: pod.ip,
            },
            token,
        }));
    }

    // Certificates first (as sidecars have them before they subscribe), 64 at a time.
    let issuing = Instant::now();
    let mut certs = Vec::with_capacity(sidecars.len());
    for batch in sidecars.chunks(64) {
        let fetches = batch.iter().map(|sidecar| {
            let (sidecar, roots) = (sidecar.clone(), roots.clone());
            tokio::spawn(async move { sidecar.certificate(addr, roots).await })
        });
        for fetch in fetches.collect::<Vec<_>>() {
            certs.push(fetch.await??);
        }
    }
    let issued = issuing.elapsed();

    // Everyone subscribes at once.
    let (reports, mut received) = mpsc::unbounded_channel::<Received>();
    // Set once measuring is over, when the control plane goes away under the sidecars.
    let stopping = Arc::new(AtomicBool::new(false));
    let subscribing = Instant::now();
    for (sidecar, cert) in sidecars.iter().zip(certs) {
        let (sidecar, roots, reports) = (sidecar.clone(), roots.clone(), reports.clone());
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let subscribed = sidecar.subscribe(addr, roots, cert, reports).await;
            if let (Err(e), false) = (subscribed, stopping.load(Ordering::Relaxed)) {
                eprintln!("sidecar {}: {e:#}", sidecar.index);
            }
        });
    }
    let mut first: BTreeMap<usize, Received> = BTreeMap::new();
    let deadline = subscribing + INITIAL_PUSH_LIMIT;
    while first.len() < sidecars.len() {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(report)) => {
                first.entry(report.sidecar).or_insert(report);
            }
            Ok(None) => anyhow::bail!("every sidecar stopped"),
            Err(_) => break,
        }
    }
    if first.len() < sidecars.len() {
        println!(
            "initial push NOT complete: {} of {} sidecars had their first snapshot after {} s",
            first.len(),
            sidecars.len(),
            INITIAL_PUSH_LIMIT.as_secs()
        );
    }
    let initial = first
        .values()
        .map(|r| r.at.duration_since(subscribing))
        .max()
        .unwrap_or_default();
    let sizes: Vec<usize> = first.values().map(|r| r.bytes).collect();
    let total_initial: usize = sizes.iter().sum();
    let rss_pushed = procstat::peak_rss_mib(injector.pid());

    // One real sidecar beside them, for a pod no simulated one stands for when there is one.
    let real_pod = registry::pod(size, args.sidecars % args.pods);
    let real_token = dir.path().join("token-real");
    fs::write(
        &real_token,
        issuer.mint(
            &real_pod.namespace,
            &real_pod.service_account,
            &real_pod.name,
            Duration::from_secs(3600),
        )?,
    )?;
    let real_started = Instant::now();
    let mut real = RealSidecar::start(&bins, dir.path(), grpc, &real_pod, &real_token, &roots_pem)?;
    let real_version = real.wait_for_config(None, Duration::from_secs(120))?;
    let real_first = real_started.elapsed();
    // Let any push still under way settle before the change; by then the sidecar has given
    // back what putting its first config together took (its allocator purges after ~1 s).
    drain(&mut received, Duration::from_secs(2)).await;
    let (real_peak, real_rss) = (
        procstat::peak_rss_mib(real.pid()),
        procstat::rss_mib(real.pid()),
    );

    // One Service's endpoints change: one address more, written through the API.
    let patch = dir.path().join("patch.json");
    fs::write(&patch, registry::endpoints_patch(size, 0, 1))?;
    let real_cpu = procstat::cpu_nanos(real.pid());
    let changed_at = Instant::now();
    let patched = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PATCH"])
        .args(["-H", "Content-Type: application/merge-patch+json"])
        .arg("--data-binary")
        .arg(format!("@{}", patch.display()))
        .arg(format!(
            "http://127.0.0.1:{api_port}{}",
            registry::slice_path(0)
        ))
        .status()?;
    anyhow::ensure!(
        patched.success(),
        "the endpoint change was refused: {patched}"
    );
    let pushed = drain(&mut received, Duration::from_secs(3)).await;
    real.wait_for_config(Some(&real_version), Duration::from_secs(30))?;
    let real_update = procstat::cpu_nanos(real.pid()).saturating_sub(real_cpu);
    let touched: BTreeMap<usize, usize> = pushed.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.sidecar).or_default() += r.bytes;
        m
    });
    let last = pushed
        .iter()
        .map(|r| r.at.duration_since(changed_at))
        .max()
        .unwrap_or_default();

    println!("| control plane at scale | value |");
    println!("|---|---:|");
    println!(
        "| pods / services / policies+routes / sidecars{} | {} / {} / {} / {} |",
        if size.scoped {
            ", a Sidecar per namespace"
        } else {
            ""
        },
        size.pods,
        size.services,
        size.policies,
        sidecars.len()
    );
    println!(
        "| catalog ready (start to /ready) | {:.2} s |",
        catalog_ready.as_secs_f64()
    );
    println!(
        "| certificates for every sidecar (64 at a time) | {:.2} s |",
        issued.as_secs_f64()
    );
    println!(
        "| initial push: all subscribe at once, until the last first push | {:.2} s |",
        initial.as_secs_f64()
    );
    println!(
        "| first push per sidecar, mean / max | {:.1} / {:.1} KiB |",
        total_initial as f64 / sizes.len().max(1) as f64 / 1024.0,
        sizes.iter().max().copied().unwrap_or_default() as f64 / 1024.0
    );
    println!(
        "| initial push, bytes in all | {:.1} MiB |",
        total_initial as f64 / 1048576.0
    );
    println!("| control-plane peak RSS: catalog ready / after the initial push | {rss_ready:.0} / {rss_pushed:.0} MiB |");
    println!(
        "| one endpoint change: sidecars sent a push (of {}) | {} |",
        sidecars.len(),
        touched.len()
    );
    let change_bytes = touched.values().sum::<usize>();
    println!(
        "| one endpoint change: bytes sent, in all / per sidecar sent to | {:.1} KiB / {} B |",
        change_bytes as f64 / 1024.0,
        change_bytes / touched.len().max(1)
    );
    println!(
        "| one endpoint change: API write to the last push received | {:.0} ms |",
        last.as_secs_f64() * 1000.0
    );
    println!(
        "| real sidecar: first config / RSS peak / RSS 2 s later | {:.2} s / {real_peak:.1} MiB / {real_rss:.1} MiB |",
        real_first.as_secs_f64()
    );
    println!(
        "| real sidecar: CPU taking the endpoint change | {:.1} ms |",
        real_update as f64 / 1e6
    );
    stopping.store(true, Ordering::Relaxed);
    drop(injector);
    drop(api);
    Ok(())
}

/// Writes `files` as `<prefix>-<n>.yaml` in `dir`.
fn write_files(dir: &std::path::Path, prefix: &str, files: &[String]) -> anyhow::Result<()> {
    for (n, text) in files.iter().enumerate() {
        fs::write(dir.join(format!("{prefix}-{n}.yaml")), text)?;
    }
    Ok(())
}

/// What arrives until `quiet` passes with nothing.
async fn drain(received: &mut mpsc::UnboundedReceiver<Received>, quiet: Duration) -> Vec<Received> {
    let mut got = Vec::new();
    while let Ok(Some(report)) = tokio::time::timeout(quiet, received.recv()).await {
        got.push(report);
    }
    got
}

/// The mesh root once the control plane has published it, and its PEM.
async fn wait_for_root(url: &str) -> anyhow::Result<(RootCertStore, String)> {
    for _ in 0..600 {
        let out = Command::new("curl").args(["-sf", url]).output()?;
        if out.status.success() {
            let map: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            if let Some(pem) = map["data"]["root-cert.pem"].as_str() {
                let mut roots = RootCertStore::empty();
                for cert in remora_proxy::identity::parse_certs(pem.as_bytes())
                    .map_err(anyhow::Error::msg)?
                {
                    roots.add(cert)?;
                }
                return Ok((roots, pem.to_owned()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the control plane never published the root at {url}")
}
