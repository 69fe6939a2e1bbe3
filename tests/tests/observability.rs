//! Istio's standard metrics as existing tools read them: a real Prometheus (Debian's, in a pod
//! outside the mesh, scraping the sidecars on the pod IP as Istio's `prometheus.io/*`
//! annotations point it: 15020 `/stats/prometheus`) counts what the demo's client sent, and the
//! PromQL that Kiali's graph and metrics pages and Istio's Grafana dashboards issue returns
//! series that name the test pods' workloads, apps, principals and Service. `promtool` checks
//! the exposition itself.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context};
use remora_e2e::example_cluster::{
    curl, ensure_accepted, wait_for, ExampleCluster, POD_WITHOUT_SIDECAR,
};
use remora_local::LocalPod;

/// Requests the test sends through the mesh.
const REQUESTS: usize = 7;

/// Prometheus, running in a pod's network namespace until dropped.
struct Prometheus {
    child: Child,
    pod: LocalPod,
    _data: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus in `pod`, scraping every second the sidecar status port of `targets`.
    fn start(pod: &LocalPod, targets: &[&LocalPod]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let targets: Vec<String> = targets
            .iter()
            .map(|t| format!("'{}:15020'", t.ip))
            .collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: kubernetes-pods\n  \
               metrics_path: /stats/prometheus\n  \
               static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        let path = data.path().join("prometheus.yml");
        std::fs::write(&path, config)?;
        let argv = [
            "prometheus".to_owned(),
            format!("--config.file={}", path.display()),
            format!("--storage.tsdb.path={}", data.path().join("tsdb").display()),
            "--web.listen-address=127.0.0.1:9090".to_owned(),
        ];
        let child = pod
            .command(&argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus (scripts/install-deps.sh installs it)")?;
        let prometheus = Self {
            child,
            pod: pod.clone(),
            _data: data,
        };
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            let ready = prometheus.pod.exec(&[
                "curl",
                "-sf",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "http://127.0.0.1:9090/-/ready",
            ])?;
            Ok(ready.status.success())
        })?;
        Ok(prometheus)
    }

    /// The result of instant query `promql` (`data.result`).
    fn query(&self, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.pod.run(&[
            "curl",
            "-sS",
            "-m",
            "5",
            "--data-urlencode",
            &format!("query={promql}"),
            "http://127.0.0.1:9090/api/v1/query",
        ])?;
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("Prometheus' JSON")?;
        ensure!(answer["status"] == "success", "{promql}: {answer}");
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The value of a query that returns one sample (0 when it returns none).
    fn value(&self, promql: &str) -> anyhow::Result<f64> {
        let result = self.query(promql)?;
        Ok(result
            .first()
            .and_then(|sample| sample["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails unless `promtool check metrics` finds nothing wrong in `text` but the unit of
/// `istio_request_duration_milliseconds`, a name Istio chose (its sidecars draw the same
/// remark).
fn promtool_accepts(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (scripts/install-deps.sh installs it)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let findings =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let unexpected: Vec<&str> = findings
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            *line
                != r#"istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""#
        })
        .collect();
    // Exit 3 is lint findings only; anything else (1: the text did not parse) fails.
    ensure!(
        unexpected.is_empty() && matches!(out.status.code(), Some(0 | 3)),
        "promtool check metrics ({}): {findings}\n{text}",
        out.status
    );
    Ok(())
}

/// Kiali's graph (kiali/kiali `graph/telemetry/istio/istio.go`, `buildNamespaceTrafficMap`):
/// the labels its HTTP queries group by.
const KIALI_GROUP_BY: &str = "source_cluster,source_workload_namespace,source_workload,\
    source_canonical_service,source_canonical_revision,destination_cluster,\
    destination_service_namespace,destination_service,destination_service_name,\
    destination_workload_namespace,destination_workload,destination_canonical_service,\
    destination_canonical_revision,request_protocol,response_code,grpc_response_status,\
    response_flags";

#[test]
fn prometheus_kiali_and_grafana_read_the_sidecars() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("obs", |dir| {
        let path = dir.join("sleep.yaml");
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, text + POD_WITHOUT_SIDECAR)?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let (sleep, httpbin, plain) = (mesh.pod("sleep")?, mesh.pod("httpbin")?, mesh.pod("plain")?);
    let prometheus = Prometheus::start(&plain, &[&sleep, &httpbin])?;
    let get = |path: &str, status: u16| -> anyhow::Result<()> {
        let response = curl(&sleep, &format!("http://httpbin.demo:8000{path}"))?;
        ensure!(response.status == status, "{path}: {response:?}");
        Ok(())
    };
    // One of each first, seen by Prometheus before the rest: a rate (Kiali's graph leaves out
    // edges whose rate is 0) needs a series to grow after it was first scraped.
    get("/status/200", 200)?;
    get("/status/418", 418)?;
    let all = r#"sum(istio_requests_total{reporter="destination",destination_workload="httpbin"})"#;
    let all_sent = r#"sum(istio_requests_total{reporter="source",destination_workload="httpbin"})"#;
    wait_for(
        "Prometheus to see the first requests on both sides",
        Duration::from_secs(30),
        || Ok(prometheus.value(all)? == 2.0 && prometheus.value(all_sent)? == 2.0),
    )?;
    for _ in 1..REQUESTS {
        get("/status/200", 200)?;
    }
    get("/status/418", 418)?;

    // What the sidecars expose passes promtool, on both ports.
    for pod in [&sleep, &httpbin] {
        for port in [15020, 15090] {
            let out = plain.run(&[
                "curl",
                "-sSf",
                "-m",
                "5",
                &format!("http://{}:{port}/stats/prometheus", pod.ip),
            ])?;
            promtool_accepts(&String::from_utf8_lossy(&out.stdout))
                .with_context(|| format!("{}:{port}", pod.id()))?;
        }
    }

    // The server's count and the client's agree with what was sent.
    let served = r#"sum(istio_requests_total{reporter="destination",destination_workload="httpbin",response_code="200"})"#;
    wait_for(
        "Prometheus to scrape every request",
        Duration::from_secs(30),
        || Ok(prometheus.value(served)? == REQUESTS as f64),
    )
    .with_context(|| format!("{served}: {:?}", prometheus.query(served)))?;
    let sent = r#"sum(istio_requests_total{reporter="source",source_workload="sleep",destination_workload="httpbin",response_code="200"})"#;
    wait_for("the client's count", Duration::from_secs(10), || {
        Ok(prometheus.value(sent)? == REQUESTS as f64)
    })?;
    // Both sides' series were scraped at 1 and again at the full count, so their rates are
    // above 0 (Kiali leaves out idle edges).
    for reporter in ["source", "destination"] {
        let first = format!(
            r#"min(min_over_time(istio_requests_total{{reporter="{reporter}",destination_workload="httpbin",response_code="200"}}[10m]))"#
        );
        ensure!(
            prometheus.value(&first)? == 1.0,
            "{reporter}: {first} is not 1: {:?}",
            prometheus.query(&format!(
                r#"istio_requests_total{{reporter="{reporter}",response_code="200"}}[10m]"#
            ))
        );
    }

    // Kiali's graph: incoming requests of namespace demo, as its backend asks.
    let incoming = prometheus.query(&format!(
        r#"round(sum(rate(istio_requests_total{{reporter="destination",destination_workload_namespace="demo"}} [600s])) by ({KIALI_GROUP_BY}) > 0,0.001)"#
    ))?;
    let edge = incoming
        .iter()
        .find(|s| s["metric"]["response_code"] == "200")
        .with_context(|| format!("no 200 edge in Kiali's incoming graph: {incoming:?}"))?;
    for (label, value) in [
        ("source_workload", "sleep"),
        ("source_workload_namespace", "client"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "httpbin"),
        ("destination_workload_namespace", "demo"),
        ("destination_service", "httpbin.demo.svc.cluster.local"),
        ("destination_service_name", "httpbin"),
        ("destination_service_namespace", "demo"),
        ("destination_canonical_service", "httpbin"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
    ] {
        ensure!(
            edge["metric"][label] == value,
            "Kiali's graph: {label} is {} not {value}: {edge}",
            edge["metric"][label]
        );
    }
    ensure!(
        incoming
            .iter()
            .any(|s| s["metric"]["response_code"] == "418"),
        "the 418 edge is missing: {incoming:?}"
    );
    // Its outgoing query, from the client's namespace.
    let outgoing = prometheus.query(&format!(
        r#"round(sum(rate(istio_requests_total{{reporter="source",source_workload_namespace="client"}} [600s])) by ({KIALI_GROUP_BY}) > 0,0.001)"#
    ))?;
    ensure!(
        outgoing
            .iter()
            .any(|s| s["metric"]["destination_workload"] == "httpbin"),
        "Kiali's outgoing graph has no edge to httpbin: {outgoing:?}"
    );
    // Kiali's workload metrics page: p99 and average duration of inbound requests, and its
    // error count (the 418).
    let p99 = prometheus.value(
        r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace="demo",destination_workload="httpbin"}[5m])) by (le))"#,
    )?;
    ensure!(p99.is_finite() && p99 > 0.0, "p99 {p99}");
    let errors = prometheus.query(
        r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="demo",destination_workload="httpbin",response_code=~"^0$|^[4-5]\\d\\d$"}[5m]))"#,
    )?;
    ensure!(!errors.is_empty(), "Kiali's error count is empty");

    // Istio's workload dashboard: incoming requests by source and response code over mTLS
    // (istio/istio manifests/addons/dashboards/istio-workload-dashboard.json, $qrep =
    // destination, $__rate_interval = 1m), and outgoing requests by destination.
    let by_source = prometheus.query(
        r#"round(sum(irate(istio_requests_total{connection_security_policy="mutual_tls", destination_workload_namespace=~"demo", destination_workload=~"httpbin", reporter=~"destination", source_workload=~".*", source_workload_namespace=~".*"}[1m])) by (source_workload, source_workload_namespace, response_code), 0.001)"#,
    )?;
    ensure!(
        by_source
            .iter()
            .any(|s| s["metric"]["source_workload"] == "sleep"
                && s["metric"]["source_workload_namespace"] == "client"),
        "the dashboard's requests by source: {by_source:?}"
    );
    let by_destination = prometheus.query(
        r#"round(sum(irate(istio_requests_total{destination_principal=~"spiffe.*", source_workload_namespace=~"client", source_workload=~"sleep", reporter="source", destination_service=~".*"}[1m])) by (destination_service, response_code), 0.001)"#,
    )?;
    ensure!(
        by_destination
            .iter()
            .any(|s| s["metric"]["destination_service"] == "httpbin.demo.svc.cluster.local"),
        "the dashboard's requests by destination: {by_destination:?}"
    );
    // Principals and apps, as the server saw them.
    let principals = prometheus.query(
        r#"sum(istio_requests_total{reporter="destination",destination_app="httpbin"}) by (source_principal, destination_principal, source_app, destination_version)"#,
    )?;
    let seen = principals.first().context("no series by principal")?;
    ensure!(
        seen["metric"]["source_principal"] == "spiffe://cluster.local/ns/client/sa/sleep"
            && seen["metric"]["destination_principal"]
                == "spiffe://cluster.local/ns/demo/sa/httpbin"
            && seen["metric"]["source_app"] == "sleep"
            && seen["metric"]["destination_version"] == "v1",
        "{principals:?}"
    );

    // Scrapes and probes are not the app's traffic: nothing but the client's requests was
    // counted by httpbin's sidecar.
    let everything = prometheus.value(all)?;
    ensure!(
        everything == (REQUESTS + 2) as f64,
        "httpbin's sidecar counted {everything} requests"
    );
    Ok(())
}

/// Access logs as the mesh config turns them on: Istio's text format on the sidecars'
/// stdout, one line per request on each side, then JSON once the config says so (no restart).
#[test]
fn access_logs_follow_the_mesh_config() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("alog", |dir| {
        remora_e2e::example_cluster::edit_file(
            &dir.join("mesh.yaml"),
            "trustDomain: cluster.local\n",
            "trustDomain: cluster.local\naccessLogFile: /dev/stdout\n",
        )
    })?;
    ensure_accepted(&mesh)?;
    let (sleep, httpbin) = (mesh.pod("sleep")?, mesh.pod("httpbin")?);
    let teapot = curl(&sleep, "http://httpbin.demo:8000/status/418")?;
    ensure!(teapot.status == 418, "{teapot:?}");
    // The client's line: the request, its outcome, the Service's cluster and the endpoint.
    let client_line = wait_for("the client sidecar's line", Duration::from_secs(10), || {
        Ok(sleep
            .sidecar_log()
            .contains("\"GET /status/418 HTTP/1.1\" 418 - via_upstream"))
    })
    .and_then(|_| {
        sleep
            .sidecar_log()
            .lines()
            .find(|l| l.contains("/status/418"))
            .map(str::to_owned)
            .context("no line")
    })?;
    for part in [
        "\"curl/",
        "\"httpbin.demo:8000\"",
        &format!("\"{}:8080\"", httpbin.ip),
        " outbound|8000||httpbin.demo.svc.cluster.local ",
        &format!(" {}:", sleep.ip),
        " default",
    ] {
        ensure!(
            client_line.contains(part),
            "{part} missing from {client_line}"
        );
    }
    let server_line = httpbin
        .sidecar_log()
        .lines()
        .find(|l| l.contains("/status/418"))
        .map(str::to_owned)
        .with_context(|| format!("no server line: {}", httpbin.sidecar_log()))?;
    ensure!(
        server_line.contains("418 - via_upstream") && server_line.contains(" inbound|8080|| "),
        "{server_line}"
    );

    // JSON from the next request on.
    mesh.edit(
        "mesh.yaml",
        "accessLogFile: /dev/stdout\n",
        "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n",
    )?;
    let json = wait_for("JSON lines", Duration::from_secs(20), || {
        let response = curl(&sleep, "http://httpbin.demo:8000/status/204")?;
        ensure!(response.status == 204, "{response:?}");
        Ok(sleep
            .sidecar_log()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("/status/204")))
    });
    json.with_context(|| sleep.sidecar_log())?;
    let line = sleep
        .sidecar_log()
        .lines()
        .find(|l| l.starts_with('{') && l.contains("/status/204"))
        .map(str::to_owned)
        .context("no JSON line")?;
    let entry: serde_json::Value = serde_json::from_str(&line).context("a JSON line")?;
    ensure!(
        entry["response_code"] == 204
            && entry["method"] == "GET"
            && entry["upstream_cluster"] == "outbound|8000||httpbin.demo.svc.cluster.local",
        "{entry}"
    );
    Ok(())
}

/// The Telemetry API as users write it, applied while the mesh runs: a metric disabled mesh
/// wide disappears, labels are added (a literal and a request header's value) and one removed
/// on the server side only, and an access log keeps only the errors.
#[test]
fn telemetry_resources_change_what_is_recorded() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up("tel")?;
    ensure_accepted(&mesh)?;
    let (sleep, httpbin) = (mesh.pod("sleep")?, mesh.pod("httpbin")?);
    mesh.write(
        "telemetry.yaml",
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  metrics:
  - providers:
    - name: prometheus
    overrides:
    - match:
        metric: REQUEST_SIZE
      disabled: true
    - match:
        metric: REQUEST_COUNT
      tagOverrides:
        team:
          value: "'payments'"
        user:
          value: "has(request.headers['x-user']) ? request.headers['x-user'] : 'anonymous'"
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: httpbin
  namespace: demo
spec:
  selector:
    matchLabels:
      app: httpbin
  metrics:
  - overrides:
    - match:
        metric: REQUEST_COUNT
        mode: SERVER
      tagOverrides:
        source_principal:
          operation: REMOVE
  accessLogging:
  - providers:
    - name: envoy
    filter:
      expression: response.code >= 400
"#,
    )?;
    // The new config has reached both sidecars once httpbin logs an error.
    let request = |path: &str| {
        sleep.run(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-H",
            "x-user: alice",
            &format!("http://httpbin.demo:8000{path}"),
        ])
    };
    wait_for(
        "both sidecars to use the Telemetry",
        Duration::from_secs(20),
        || {
            request("/status/503")?;
            let client = remora_e2e::example_cluster::sidecar_metrics(&sleep)?;
            Ok(httpbin
                .sidecar_log()
                .contains("\"GET /status/503 HTTP/1.1\" 503")
                && client.contains(r#"user="alice""#))
        },
    )
    .with_context(|| {
        format!(
            "rejected: {:?}\nhttpbin's sidecar:\n{}\nsleep's metrics:\n{:?}",
            mesh.cluster.rejections(),
            httpbin.sidecar_log(),
            remora_e2e::example_cluster::sidecar_metrics(&sleep)
        )
    })?;
    request("/status/200")?;
    let log = httpbin.sidecar_log();
    ensure!(
        !log.contains("/status/200"),
        "the filter let a 200 through:\n{log}"
    );

    let client = remora_e2e::example_cluster::sidecar_metrics(&sleep)?;
    let server = remora_e2e::example_cluster::sidecar_metrics(&httpbin)?;
    for (side, text) in [("client", &client), ("server", &server)] {
        ensure!(
            !text.contains("istio_request_bytes"),
            "{side}: the disabled metric is still there:\n{text}"
        );
        ensure!(
            text.contains("istio_response_bytes_bucket"),
            "{side}: other metrics went with it"
        );
        let ok = text
            .lines()
            .find(|l| {
                l.starts_with("istio_requests_total{") && l.contains(r#"response_code="200""#)
            })
            .with_context(|| format!("{side}: no 200 sample:\n{text}"))?;
        ensure!(
            ok.contains(r#"team="payments""#) && ok.contains(r#"user="alice""#),
            "{side}: {ok}"
        );
    }
    let served = server
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains(r#"response_code="200""#))
        .context("no server sample")?;
    ensure!(!served.contains("source_principal="), "{served}");
    let sent = client
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains(r#"response_code="200""#))
        .context("no client sample")?;
    ensure!(sent.contains("source_principal="), "{sent}");
    Ok(())
}
