//! `remora-soak`: a Remora pair under steady load for minutes, through what a long-lived mesh
//! lives through: certificates rotated every two minutes, a config push every minute, clients
//! that come and go. A local cluster (the launcher, with its control plane) runs a client pod
//! and an nginx app pod, both with sidecars; `oha` sends `--rate` requests per second, a tenth
//! of them on a new connection each. Every 10 s the sidecars' RSS and open descriptors are
//! sampled; the run passes when no request failed and neither sets a high in the last minute
//! more than 10% above the highest from minute 2 on. Not in CI (it runs for minutes):
//! `scripts/soak.sh`.

use std::{
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use clap::Parser;
use remora_bench::{load, nginx, procstat};
use remora_local::{Cluster, LocalPod, Options};

#[derive(Parser)]
#[command(name = "remora-soak", about = "A Remora pair under load for minutes")]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Requests per second, all told.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Keep the cluster's state directory (logs) afterwards.
    #[arg(long)]
    keep: bool,
}

/// The app's port, behind Service `app.soak` port `http`.
const APP_PORT: u16 = 8080;
/// Certificates live four minutes, so the sidecars renew them every two (at half their life).
const CERT_TTL: &str = "240s";
/// How often the sidecars' memory and descriptors are sampled.
const SAMPLE: Duration = Duration::from_secs(10);
/// From when growth counts: the first minutes fill pools and caches.
const SETTLED: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("remora-soak-")
        .disable_cleanup(args.keep)
        .tempdir()?;
    write_manifests(dir.path())?;
    let cluster = Cluster::up(
        &dir.path().join("manifests"),
        Options {
            name: "rmr-soak".to_owned(),
            keep_state: args.keep,
            ..Options::default()
        },
    )?;
    let client = cluster
        .first_pod("soak", "client")
        .context("no client pod")?
        .clone();
    let server = cluster
        .first_pod("soak", "app")
        .context("no app pod")?
        .clone();
    let sidecars = [
        ("client", sidecar_pid(&client)?),
        ("server", sidecar_pid(&server)?),
    ];
    let duration = Duration::from_secs(args.minutes * 60);
    let url = format!("http://app.soak:{APP_PORT}/");
    eprintln!(
        "soak: {} req/s for {} min, certificates renewed every 2 min, a push every minute",
        args.rate, args.minutes
    );

    let done = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (done, manifests) = (done.clone(), dir.path().join("manifests"));
        thread::spawn(move || push_every_minute(&manifests, &done))
    };
    let keepalive = {
        let (client, url) = (client.clone(), url.clone());
        let rate = args.rate - args.rate / 10;
        thread::spawn(move || load::open_loop_in(&run_in(&client), &url, rate, 32, duration, true))
    };
    let churn = {
        let (client, url) = (client.clone(), url.clone());
        let rate = args.rate / 10;
        thread::spawn(move || load::open_loop_in(&run_in(&client), &url, rate, 8, duration, false))
    };
    let pods = [&client, &server];
    let first = pods.map(sidecar_state);
    let start = Instant::now();
    let mut rows: Vec<(Duration, Vec<(f64, usize)>)> = Vec::new();
    while start.elapsed() < duration {
        thread::sleep(SAMPLE);
        let sample = sidecars
            .iter()
            .map(|(_, pid)| (procstat::rss_mib(*pid), open_fds(*pid)))
            .collect();
        rows.push((start.elapsed(), sample));
    }
    let keepalive = keepalive
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
        .context("keep-alive load")?;
    let churn = churn
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
        .context("connection churn")?;
    done.store(true, Ordering::Relaxed);
    let pushes = pusher
        .join()
        .map_err(|_| anyhow::anyhow!("the push thread panicked"))??;
    let last = pods.map(sidecar_state);

    println!("| t | client RSS MiB | client fds | server RSS MiB | server fds |");
    println!("|---:|---:|---:|---:|---:|");
    for (at, sample) in &rows {
        let cells: Vec<String> = sample
            .iter()
            .flat_map(|(rss, fds)| [format!("{rss:.1}"), fds.to_string()])
            .collect();
        println!("| {}s | {} |", at.as_secs(), cells.join(" | "));
    }
    println!(
        "\n{} requests kept alive, {} on new connections, all 200 (p99 {:.2} / {:.2} ms); \
         {pushes} config pushes written",
        keepalive.requests, churn.requests, keepalive.p99, churn.p99
    );
    // A run long enough for a renewal and a push must have had both, on both sides.
    let mut exercised = true;
    for (((side, _), first), last) in sidecars.iter().zip(&first).zip(&last) {
        let (first, last) = (first.as_ref(), last.as_ref());
        match (first, last) {
            (Ok(first), Ok(last)) => {
                let accepted = last.accepted - first.accepted;
                let renewed = last.expiry != first.expiry;
                println!(
                    "{side} sidecar: {accepted} snapshots accepted, certificate renewed: {renewed}"
                );
                exercised &= accepted >= 1.0 && renewed;
            }
            _ => {
                println!("{side} sidecar: metrics unreadable ({first:?}, {last:?})");
                exercised = false;
            }
        }
    }
    // Growth is the last minute's high-water mark against the highest seen from minute 2 up
    // to it: pools grow and shrink with the load's phases, a leak sets new highs.
    let mut flat = true;
    let end = rows.last().map_or(Duration::ZERO, |(at, _)| *at);
    for (i, (side, _)) in sidecars.iter().enumerate() {
        let most = |from: Duration, to: Duration| {
            rows.iter()
                .filter(|(at, _)| *at >= from && *at < to)
                .fold((0.0f64, 0.0f64), |(rss, fds), (_, sample)| {
                    (rss.max(sample[i].0), fds.max(sample[i].1 as f64))
                })
        };
        let last_minute = end.saturating_sub(Duration::from_secs(59));
        let settled = most(SETTLED, last_minute);
        let last = most(last_minute, end + SAMPLE);
        if settled.0 == 0.0 {
            continue;
        }
        let rss_growth = last.0 / settled.0 - 1.0;
        let fd_growth = last.1 / settled.1.max(1.0) - 1.0;
        println!(
            "{side} sidecar, last minute's highest sample against the highest from minute 2: \
             RSS {:+.1}%, descriptors {:+.1}%",
            rss_growth * 100.0,
            fd_growth * 100.0
        );
        flat &= rss_growth <= 0.10 && fd_growth <= 0.10;
    }
    ensure!(flat, "a sidecar grew more than 10% after minute 2");
    ensure!(
        exercised || args.minutes < 3,
        "the run saw no certificate renewal or no push on a sidecar"
    );
    drop(cluster);
    Ok(())
}

/// How to run a command in `pod`, for the load generator.
fn run_in(pod: &LocalPod) -> impl Fn(&[&str]) -> anyhow::Result<std::process::Output> + '_ {
    move |argv| Ok(pod.run(argv)?)
}

/// Namespace `soak` with injection, an nginx app answering 1 KB behind Service `app`, a client
/// pod, both sidecars renewing their certificates every two minutes; and the mesh config.
fn write_manifests(dir: &Path) -> anyhow::Result<()> {
    let manifests = dir.join("manifests");
    fs::create_dir_all(&manifests)?;
    let conf_path = nginx::write_config(&dir.join("nginx"), 1, &nginx::one_kilobyte_app(APP_PORT))?;
    let examples = remora_e2e::example_cluster::examples_dir();
    fs::copy(examples.join("mesh.yaml"), manifests.join("mesh.yaml"))?;
    let proxy_config = format!(
        "proxy.istio.io/config: '{{\"proxyMetadata\": {{\"SECRET_TTL\": \"{CERT_TTL}\"}}}}'"
    );
    let pods = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: soak, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: soak}}
spec:
  selector: {{app: app}}
  ports: [{{name: http, port: {APP_PORT}, targetPort: {APP_PORT}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app, namespace: soak}}
spec:
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata:
      labels: {{app: app}}
      annotations: {{{proxy_config}}}
    spec:
      containers:
        - name: nginx
          image: nginx
          command: ["nginx", "-c", "{conf}"]
          ports: [{{containerPort: {APP_PORT}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: soak}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata:
      labels: {{app: client}}
      annotations: {{{proxy_config}}}
    spec:
      containers:
        - name: client
          image: curlimages/curl
          command: ["sleep", "infinity"]
"#,
        conf = conf_path.display(),
    );
    fs::write(manifests.join("soak.yaml"), pods)?;
    fs::write(manifests.join("route.yaml"), route(0))?;
    Ok(())
}

/// The app's VirtualService, its timeout changed by `minute`: each version is a push.
fn route(minute: u64) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: soak}}
spec:
  hosts: [app.soak.svc.cluster.local]
  http:
    - timeout: {}s
      route: [{{destination: {{host: app.soak.svc.cluster.local}}}}]
",
        30 + minute
    )
}

/// Rewrites the route once a minute until `done`; how many times it did.
fn push_every_minute(manifests: &Path, done: &AtomicBool) -> anyhow::Result<u64> {
    let mut pushes = 0;
    let mut next = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(200));
        if Instant::now() >= next {
            pushes += 1;
            remora_local::write_atomic(&manifests.join("route.yaml"), route(pushes).as_bytes())?;
            next += Duration::from_secs(60);
        }
    }
    Ok(pushes)
}

/// The sidecar process of `pod`.
fn sidecar_pid(pod: &LocalPod) -> anyhow::Result<u32> {
    pod.sidecar_pid()?
        .with_context(|| format!("no sidecar in {}", pod.id()))
}

/// What a sidecar's metrics say about its config and certificate.
#[derive(Debug)]
struct SidecarState {
    /// Snapshots it accepted so far.
    accepted: f64,
    /// When the certificate in use expires.
    expiry: f64,
}

fn sidecar_state(pod: &LocalPod) -> anyhow::Result<SidecarState> {
    let out = pod.run(&[
        "curl",
        "-sSf",
        "-m",
        "5",
        "http://127.0.0.1:15090/stats/prometheus",
    ])?;
    let metrics = String::from_utf8_lossy(&out.stdout);
    Ok(SidecarState {
        accepted: remora_e2e::counter(
            &metrics,
            "remora_config_updates_total",
            &[r#"result="accepted""#],
        ),
        expiry: remora_e2e::counter(&metrics, "remora_certificate_expiry_timestamp_seconds", &[]),
    })
}

/// How many descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}
