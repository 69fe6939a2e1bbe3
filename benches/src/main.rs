//! `remora-bench`: the same request path three ways in one run (direct, a Remora sidecar pair,
//! an nginx mTLS pair), interleaved round by round because the load generator, the proxies and
//! the app share the machine's cores, and reported as medians with ratios. Needs root (it
//! builds pods with the local mesh harness). `--smoke` runs a few seconds, for CI.

mod paths;
mod report;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use remora_bench::{load, procstat};
use remora_e2e::Mesh;

use crate::report::{PathResult, Round, Setup};

#[derive(Parser)]
#[command(
    name = "remora-bench",
    about = "Compare Remora with direct and an nginx mTLS pair"
)]
struct Args {
    /// Interleaved rounds (each path once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open-loop requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Connections for both load generators.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Seconds measured per open-loop run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of unmeasured load before each open-loop run.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds per saturation run.
    #[arg(long, default_value_t = 10)]
    saturation_seconds: u64,
    /// A few seconds in all: one short round, to check the harness works.
    #[arg(long)]
    smoke: bool,
    /// Start the remora+policies pair without its policies and the remora+routes pair calling
    /// the pod directly: an A/A run, showing how far identical Remora pairs differ on this
    /// machine (the noise under the features' cost).
    #[arg(long)]
    control: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.rounds = 1;
        args.rate = 200;
        args.seconds = 2;
        args.warmup = 1;
        args.saturation_seconds = 1;
    }
    let mesh = Mesh::new("bench")?;
    let paths = paths::build(&mesh, !args.control)?;
    eprintln!(
        "paths ready: {}",
        paths
            .iter()
            .map(|p| format!("{} -> {}", p.kind, p.url))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut results: Vec<PathResult> = paths
        .iter()
        .map(|p| PathResult {
            kind: p.kind,
            rounds: Vec::new(),
            peak_rss_mib: Vec::new(),
        })
        .collect();

    for round in 1..=args.rounds {
        for (path, result) in paths.iter().zip(&mut results) {
            eprintln!("round {round}/{}: {} open loop", args.rounds, path.kind);
            let warmup = Duration::from_secs(args.warmup);
            load::open_loop(&path.client, &path.url, args.rate, args.connections, warmup)
                .with_context(|| format!("{} warm-up", path.kind))?;
            let before: Vec<f64> = path
                .proxies
                .iter()
                .map(|(_, pid)| procstat::cpu_seconds(*pid))
                .collect();
            let latency = load::open_loop(
                &path.client,
                &path.url,
                args.rate,
                args.connections,
                Duration::from_secs(args.seconds),
            )
            .with_context(|| format!("{} open loop", path.kind))?;
            let cpu_us_per_request = path
                .proxies
                .iter()
                .zip(before)
                .map(|((_, pid), before)| {
                    (procstat::cpu_seconds(*pid) - before) * 1e6 / latency.requests as f64
                })
                .collect();
            result.rounds.push(Round {
                latency,
                cpu_us_per_request,
                saturation_rps: 0.0,
            });
        }
        for (path, result) in paths.iter().zip(&mut results) {
            eprintln!("round {round}/{}: {} saturation", args.rounds, path.kind);
            let rps = load::saturation(
                &path.client,
                &path.url,
                args.connections,
                Duration::from_secs(args.saturation_seconds),
            )
            .with_context(|| format!("{} saturation", path.kind))?;
            if let Some(last) = result.rounds.last_mut() {
                last.saturation_rps = rps;
            }
        }
    }
    for (path, result) in paths.iter().zip(&mut results) {
        result.peak_rss_mib = path
            .proxies
            .iter()
            .map(|(_, pid)| procstat::peak_rss_mib(*pid))
            .collect();
    }
    let setup = Setup {
        rate: args.rate,
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds,
        saturation_seconds: args.saturation_seconds,
        control: args.control,
    };
    print!("{}", report::render(&setup, &results));
    Ok(())
}
