//! Load generators run inside the client pod: `oha` for the open-loop latency run (a fixed
//! request rate with latency correction, so a slow response delays no later request and
//! coordinated omission does not hide tail latency) and `wrk` for the closed-loop saturation run.

use std::{process::Output, time::Duration};

use anyhow::{bail, Context};
use remora_e2e::Pod;

/// Latency percentiles of an open-loop run, in milliseconds, and what it sent.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub requests: u64,
}

/// Sends `rate` requests per second over `connections` connections for `duration`.
pub fn open_loop(
    pod: &Pod,
    url: &str,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let run = |argv: &[&str]| pod.run(argv);
    open_loop_in(&run, url, rate, connections, duration, true)
}

/// [`open_loop`] with `oha` started by `run` (in some pod), on connections kept alive or, without
/// `keep_alive`, one new connection per request.
pub fn open_loop_in(
    run: &dyn Fn(&[&str]) -> anyhow::Result<Output>,
    url: &str,
    rate: u32,
    connections: u32,
    duration: Duration,
    keep_alive: bool,
) -> anyhow::Result<Latency> {
    let (rate, connections) = (rate.to_string(), connections.to_string());
    let seconds = format!("{}s", duration.as_secs().max(1));
    let mut argv = vec![
        "oha",
        "--no-tui",
        "--output-format",
        "json",
        "--latency-correction",
        "--wait-ongoing-requests-after-deadline",
        "-q",
        &rate,
        "-c",
        &connections,
        "-z",
        &seconds,
    ];
    if !keep_alive {
        argv.push("--disable-keepalive");
    }
    argv.push(url);
    let out = run(&argv)?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("oha's JSON report")?;
    parse_oha(&report)
}

fn parse_oha(report: &serde_json::Value) -> anyhow::Result<Latency> {
    let statuses = report["statusCodeDistribution"]
        .as_object()
        .context("no statusCodeDistribution")?;
    let mut requests = 0;
    for (status, count) in statuses {
        let count = count.as_u64().unwrap_or(0);
        if status != "200" && count > 0 {
            bail!("{count} responses with status {status}: {statuses:?}");
        }
        requests += count;
    }
    let errors = report["errorDistribution"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(|v| v.as_u64()).sum::<u64>());
    if errors > 0 || requests == 0 {
        bail!(
            "{errors} errors, {requests} responses: {}",
            report["errorDistribution"]
        );
    }
    let percentile = |key: &str| -> anyhow::Result<f64> {
        report["latencyPercentiles"][key]
            .as_f64()
            .map(|seconds| seconds * 1000.0)
            .with_context(|| format!("no latency percentile {key}"))
    };
    Ok(Latency {
        p50: percentile("p50")?,
        p90: percentile("p90")?,
        p99: percentile("p99")?,
        p999: percentile("p99.9")?,
        requests,
    })
}

/// Requests per second `wrk` sustains with `connections` connections for `duration`.
pub fn saturation(
    pod: &Pod,
    url: &str,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let out = pod.run(&[
        "wrk",
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{}s", duration.as_secs().max(1)),
        url,
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(errors) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk saw errors: {errors}\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oha_percentiles_in_milliseconds() {
        let report = serde_json::json!({
            "statusCodeDistribution": {"200": 1000},
            "errorDistribution": {},
            "latencyPercentiles": {"p50": 0.0005, "p90": 0.001, "p99": 0.002, "p99.9": 0.004}
        });
        let latency = parse_oha(&report).expect("valid report");
        assert_eq!(latency.requests, 1000);
        assert!((latency.p50 - 0.5).abs() < 1e-9);
        assert!((latency.p999 - 4.0).abs() < 1e-9);
    }

    #[test]
    fn failed_requests_fail_the_run() {
        let report = serde_json::json!({
            "statusCodeDistribution": {"200": 10, "503": 1},
            "errorDistribution": {},
            "latencyPercentiles": {"p50": 0.0005, "p90": 0.001, "p99": 0.002, "p99.9": 0.004}
        });
        assert!(parse_oha(&report).is_err());
        let report = serde_json::json!({
            "statusCodeDistribution": {"200": 10},
            "errorDistribution": {"connection refused": 3},
            "latencyPercentiles": {"p50": 0.0005, "p90": 0.001, "p99": 0.002, "p99.9": 0.004}
        });
        assert!(parse_oha(&report).is_err());
    }
}
