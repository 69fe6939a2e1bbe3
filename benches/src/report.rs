//! Medians of the interleaved rounds, printed as one table: Remora next to nginx, both as
//! differences from the direct path where that is what matters (added latency), with ratios.

use std::fmt::Write;

use crate::{load::Latency, paths::Kind};

/// What one round measured on one path.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub latency: Latency,
    /// CPU microseconds per request of each proxy on the path, client side first.
    pub cpu_us_per_request: Vec<f64>,
    pub saturation_rps: f64,
}

/// All rounds of one path, plus its proxies' peak memory.
#[derive(Clone, Debug)]
pub struct PathResult {
    pub kind: Kind,
    pub rounds: Vec<Round>,
    /// Peak RSS of each proxy in MiB, client side first.
    pub peak_rss_mib: Vec<f64>,
}

/// Picks one percentile out of a run's latencies.
type Percentile = fn(&Latency) -> f64;

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl PathResult {
    fn median_of(&self, f: impl Fn(&Round) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }

    fn proxy_cpu(&self, proxy: usize) -> f64 {
        self.median_of(|r| r.cpu_us_per_request.get(proxy).copied().unwrap_or(f64::NAN))
    }
}

/// The setting of the run, for the table's heading.
pub struct Setup {
    pub rate: u32,
    pub connections: u32,
    pub seconds: u64,
    pub rounds: usize,
    pub saturation_seconds: u64,
    /// The remora+policies pair ran without its policies (an A/A run).
    pub control: bool,
}

/// Renders the comparison. `results` holds direct, remora and nginx, in that order.
pub fn render(setup: &Setup, results: &[PathResult]) -> String {
    let find = |kind| results.iter().find(|r: &&PathResult| r.kind == kind);
    let (Some(direct), Some(remora), Some(nginx)) =
        (find(Kind::Direct), find(Kind::Remora), find(Kind::Nginx))
    else {
        return "incomplete results\n".to_owned();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "1 KB responses, {} connections, open loop {} req/s (oha, latency-corrected) for {} s; \
         saturation: wrk closed loop for {} s; medians of {} interleaved rounds\n",
        setup.connections, setup.rate, setup.seconds, setup.saturation_seconds, setup.rounds
    );
    let _ = writeln!(out, "| metric | direct | remora | nginx | remora / nginx |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let percentiles: [(&str, Percentile); 4] = [
        ("p50", |l| l.p50),
        ("p90", |l| l.p90),
        ("p99", |l| l.p99),
        ("p99.9", |l| l.p999),
    ];
    for (name, pick) in percentiles {
        let d = direct.median_of(|r| pick(&r.latency));
        let r = remora.median_of(|r| pick(&r.latency));
        let n = nginx.median_of(|r| pick(&r.latency));
        let _ = writeln!(out, "| {name} latency (ms) | {d:.3} | {r:.3} | {n:.3} | |");
        let _ = writeln!(
            out,
            "| added {name} (ms) | | {:.3} | {:.3} | {} |",
            r - d,
            n - d,
            ratio(r - d, n - d)
        );
    }
    for (proxy, side) in ["client-side", "server-side"].iter().enumerate() {
        let (r, n) = (remora.proxy_cpu(proxy), nginx.proxy_cpu(proxy));
        let _ = writeln!(
            out,
            "| CPU per request, {side} proxy (µs) | | {r:.1} | {n:.1} | {} |",
            ratio(r, n)
        );
    }
    let (r, n) = (
        remora.proxy_cpu(0) + remora.proxy_cpu(1),
        nginx.proxy_cpu(0) + nginx.proxy_cpu(1),
    );
    let _ = writeln!(
        out,
        "| CPU per request, both proxies (µs) | | {r:.1} | {n:.1} | {} |",
        ratio(r, n)
    );
    for (proxy, side) in ["client-side", "server-side"].iter().enumerate() {
        let r = remora.peak_rss_mib.get(proxy).copied().unwrap_or(f64::NAN);
        let n = nginx.peak_rss_mib.get(proxy).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| peak RSS, {side} proxy (MiB) | | {r:.1} | {n:.1} | {} |",
            ratio(r, n)
        );
    }
    let (d, r, n) = (
        direct.median_of(|r| r.saturation_rps),
        remora.median_of(|r| r.saturation_rps),
        nginx.median_of(|r| r.saturation_rps),
    );
    let _ = writeln!(
        out,
        "| saturation (requests/s) | {d:.0} | {r:.0} | {n:.0} | {} |",
        ratio(r, n)
    );
    let features = [
        Feature {
            kind: Kind::RemoraPolicies,
            baseline: Kind::Remora,
            heading: "With a typical policy set on the server sidecar (ALLOW the caller's \
                      principal, DENY /admin* namespace-wide)",
            control: "A/A control: the remora+policies pair ran WITHOUT policies, so its \
                      difference from remora is how far two identical pairs differ here",
            label: "policies / none",
            side: 1,
        },
        Feature {
            kind: Kind::RemoraRoutes,
            baseline: Kind::Remora,
            heading: "Called by a Service's cluster IP and routed by a VirtualService on the \
                      client sidecar (90/10 over two subsets, default retries), against the pair \
                      that calls the pod directly",
            control: "A/A control: the remora+routes pair called the pod directly, so its \
                      difference from remora is how far two identical pairs differ here",
            label: "routes / none",
            side: 0,
        },
        Feature {
            kind: Kind::Remora,
            baseline: Kind::RemoraTelemetryOff,
            heading: "Telemetry as Istio's defaults have it (every standard metric with its full \
                      labels, 1% of requests traced to an OTLP receiver, access logs off) \
                      against the same pair with no metric recorded and no tracing on either \
                      sidecar",
            control: "A/A control: the remora-telemetry-off pair ran WITH its telemetry, so its \
                      difference from remora is how far two identical pairs differ here",
            label: "telemetry / off",
            side: 1,
        },
    ];
    for feature in &features {
        if let (Some(with), Some(baseline)) = (find(feature.kind), find(feature.baseline)) {
            feature_cost(
                &mut out,
                setup.control,
                feature,
                [direct, baseline, nginx, with],
            );
        }
    }
    out
}

/// A Remora pair with one feature on, against one without it.
struct Feature {
    kind: Kind,
    baseline: Kind,
    heading: &'static str,
    /// The heading of an A/A run (`--control`: the feature off).
    control: &'static str,
    label: &'static str,
    /// The proxy doing the feature's work: 0 client-side, 1 server-side.
    side: usize,
}

/// The pair with `feature` against the pair without it (and nginx).
fn feature_cost(out: &mut String, control: bool, feature: &Feature, paths: [&PathResult; 4]) {
    let [direct, remora, nginx, with] = paths;
    let heading = if control {
        feature.control
    } else {
        feature.heading
    };
    let (name, baseline) = (feature.kind, feature.baseline);
    let _ = writeln!(out, "\n{heading}:\n");
    let _ = writeln!(
        out,
        "| metric | {baseline} | {name} | {} | {name} / nginx |",
        feature.label
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let both = |r: &PathResult| r.proxy_cpu(0) + r.proxy_cpu(1);
    let (r, w, n) = (both(remora), both(with), both(nginx));
    let _ = writeln!(
        out,
        "| CPU per request, both proxies (µs) | {r:.1} | {w:.1} | {} | {} |",
        ratio(w, r),
        ratio(w, n)
    );
    let side = feature.side;
    let (r, w, n) = (
        remora.proxy_cpu(side),
        with.proxy_cpu(side),
        nginx.proxy_cpu(side),
    );
    let side_name = if side == 0 {
        "client-side"
    } else {
        "server-side"
    };
    let _ = writeln!(
        out,
        "| CPU per request, {side_name} proxy (µs) | {r:.1} | {w:.1} | {} | {} |",
        ratio(w, r),
        ratio(w, n)
    );
    let d = direct.median_of(|r| r.latency.p99);
    let (r, w, n) = (
        remora.median_of(|r| r.latency.p99) - d,
        with.median_of(|r| r.latency.p99) - d,
        nginx.median_of(|r| r.latency.p99) - d,
    );
    let _ = writeln!(
        out,
        "| added p99 (ms) | {r:.3} | {w:.3} | {} | {} |",
        ratio(w, r),
        ratio(w, n)
    );
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs.abs() < f64::EPSILON || !ours.is_finite() || !theirs.is_finite() {
        "n/a".to_owned()
    } else {
        format!("{:.2}", ours / theirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn table_compares_remora_with_nginx_over_direct() {
        let round = |p50: f64, cpu: f64, rps: f64| Round {
            latency: Latency {
                p50,
                p90: p50,
                p99: p50,
                p999: p50,
                requests: 1000,
            },
            cpu_us_per_request: vec![cpu, cpu],
            saturation_rps: rps,
        };
        let results = [
            PathResult {
                kind: Kind::Direct,
                rounds: vec![round(0.1, 0.0, 9000.0)],
                peak_rss_mib: vec![],
            },
            PathResult {
                kind: Kind::Remora,
                rounds: vec![round(0.3, 20.0, 6000.0)],
                peak_rss_mib: vec![8.0, 8.0],
            },
            PathResult {
                kind: Kind::Nginx,
                rounds: vec![round(0.5, 40.0, 4000.0)],
                peak_rss_mib: vec![10.0, 10.0],
            },
        ];
        let setup = Setup {
            rate: 1000,
            connections: 16,
            seconds: 20,
            rounds: 1,
            saturation_seconds: 10,
            control: false,
        };
        let table = render(&setup, &results);
        assert!(
            table.contains("| added p50 (ms) | | 0.200 | 0.400 | 0.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| CPU per request, both proxies (µs) | | 40.0 | 80.0 | 0.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| saturation (requests/s) | 9000 | 6000 | 4000 | 1.50 |"),
            "{table}"
        );
        assert!(!table.contains("remora+policies"), "{table}");
        let mut with_policies = results.to_vec();
        with_policies.push(PathResult {
            kind: Kind::RemoraPolicies,
            rounds: vec![round(0.31, 21.0, 5900.0)],
            peak_rss_mib: vec![8.0, 8.0],
        });
        let table = render(&setup, &with_policies);
        assert!(
            table.contains("| CPU per request, both proxies (µs) | 40.0 | 42.0 | 1.05 | 0.53 |"),
            "{table}"
        );
        // Telemetry: the default pair against the one recording nothing.
        with_policies.push(PathResult {
            kind: Kind::RemoraTelemetryOff,
            rounds: vec![round(0.31, 16.0, 6100.0)],
            peak_rss_mib: vec![8.0, 8.0],
        });
        let table = render(&setup, &with_policies);
        assert!(
            table.contains("| metric | remora-telemetry-off | remora | telemetry / off |"),
            "{table}"
        );
        assert!(
            table.contains("| CPU per request, both proxies (µs) | 32.0 | 40.0 | 1.25 | 0.50 |"),
            "{table}"
        );
    }
}
