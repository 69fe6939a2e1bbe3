//! Traces as a tracing backend receives them: a real OTLP receiver (built on the official OTLP
//! protos, `tests/fixtures/otlp_receiver.py`) in the demo's collector pod gets, for one curl
//! through two sidecars, a client span and a server span of one trace, the server's parent
//! being the client's span; an incoming `traceparent` is continued, B3 in is B3 out, the
//! Telemetry API's sampling and provider (OTLP/gRPC, OTLP/HTTP, Zipkin) are followed live, and
//! with the collector gone every response is unchanged while the dropped-span counter rises.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{ensure, Context};
use remora_e2e::example_cluster::{
    curl, ensure_accepted, rejections, sidecar_metrics, wait_for, ExampleCluster,
};
use remora_local::LocalPod;
use serde_json::Value;

/// The OTLP receiver, running in the collector pod until dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(pod: &LocalPod) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("spans.jsonl");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/otlp_receiver.py");
        let mut child = pod
            .command(&[
                "python3".as_ref(),
                script.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the OTLP receiver")?;
        let stdout = child.stdout.take().context("the receiver's stdout")?;
        let (ready, is_ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_ok_and(|l| l.trim() == "ready") {
                    let _ = ready.send(());
                }
            }
        });
        let receiver = Self {
            child,
            out,
            _dir: dir,
        };
        is_ready
            .recv_timeout(Duration::from_secs(30))
            .context("the OTLP receiver did not get ready (scripts/install-deps.sh installs opentelemetry-proto)")?;
        Ok(receiver)
    }

    /// Every span received so far.
    fn spans(&self) -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).context("a span line"))
            .collect()
    }

    /// The spans of trace `trace_id`, once there are `count` of them.
    fn trace(&self, trace_id: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        let mut found = Vec::new();
        wait_for(
            &format!("{count} spans of trace {trace_id}"),
            Duration::from_secs(20),
            || {
                found = self
                    .spans()?
                    .into_iter()
                    .filter(|s| s["trace_id"] == trace_id)
                    .collect();
                Ok(found.len() >= count)
            },
        )
        .with_context(|| format!("received: {:?}", self.spans()))?;
        Ok(found)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What httpbin saw: the request headers `GET /headers` echoes, by name as it prints them.
fn headers_seen(sleep: &LocalPod, extra: &[&str]) -> anyhow::Result<Value> {
    let mut argv = vec!["curl", "-sS", "-m", "10"];
    for header in extra {
        argv.extend(["-H", header]);
    }
    // httpbin hides x-request-id and a few others unless asked to show them.
    argv.push("http://httpbin.demo:8000/headers?show_env=1");
    let out = sleep.run(&argv)?;
    let echoed: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("httpbin's answer: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(echoed["headers"].clone())
}

/// The trace id and parent span id of a `traceparent` value.
fn traceparent(value: &Value) -> anyhow::Result<(String, String)> {
    let text = value
        .as_str()
        .with_context(|| format!("no traceparent: {value}"))?;
    let parts: Vec<&str> = text.split('-').collect();
    ensure!(parts.len() == 4, "traceparent {text}");
    Ok((parts[1].to_owned(), parts[2].to_owned()))
}

fn kind<'a>(spans: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .with_context(|| format!("no {kind} span in {spans:?}"))
}

fn dropped(pod: &LocalPod) -> anyhow::Result<f64> {
    let text = sidecar_metrics(pod)?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("remora_tracing_spans_dropped_total{reason=\"export_failed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

#[test]
fn a_request_through_two_sidecars_is_one_trace() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with_dirs("trace", &["observability"], |_| Ok(()))?;
    ensure_accepted(&mesh)?;
    let (sleep, collector) = (
        mesh.pod("sleep")?,
        mesh.pod_in("observability", "otel-collector")?,
    );
    let mut receiver = Receiver::start(&collector)?;

    // One plain request: a client span from sleep's sidecar, a server span from httpbin's, in
    // one trace; the app's parent is the server span, and the request id goes end to end.
    let seen = headers_seen(&sleep, &[])?;
    let (trace_id, app_parent) = traceparent(&seen["Traceparent"])?;
    let request_id = seen["X-Request-Id"]
        .as_str()
        .context("x-request-id")?
        .to_owned();
    let spans = receiver.trace(&trace_id, 2)?;
    let (client, server) = (kind(&spans, "CLIENT")?, kind(&spans, "SERVER")?);
    ensure!(
        client["parent_span_id"] == "",
        "the app sent no context: {client}"
    );
    ensure!(
        server["parent_span_id"] == client["span_id"],
        "{server} is not {client}'s child"
    );
    ensure!(
        server["span_id"] == app_parent.as_str(),
        "the app's parent is {app_parent}"
    );
    ensure!(
        client["via"] == "grpc",
        "provider otel speaks OTLP/gRPC: {client}"
    );
    for (span, service) in [(client, "sleep.client"), (server, "httpbin.demo")] {
        ensure!(span["resource"]["service.name"] == service, "{span}");
        ensure!(
            span["name"] == "httpbin.demo.svc.cluster.local:8000/*",
            "{span}"
        );
        let attributes = &span["attributes"];
        ensure!(
            attributes["guid:x-request-id"] == request_id.as_str(),
            "{span}"
        );
        ensure!(
            attributes["http.response.status_code"]
                .to_string()
                .trim_matches('"')
                == "200",
            "{span}"
        );
        ensure!(attributes["http.request.method"] == "GET", "{span}");
    }
    ensure!(
        server["attributes"]["peer.identity"] == "spiffe://cluster.local/ns/client/sa/sleep",
        "the caller's verified identity: {server}"
    );
    ensure!(
        client["attributes"]["peer.identity"] == "spiffe://cluster.local/ns/demo/sa/httpbin",
        "the identity the upstream proved: {client}"
    );
    ensure!(
        client["attributes"]["istio.canonical_service"] == "sleep",
        "{client}"
    );

    // An incoming traceparent is continued: the client span is the caller's span's child.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let seen = headers_seen(
        &sleep,
        &[&format!(
            "traceparent: 00-{caller_trace}-00f067aa0ba902b7-01"
        )],
    )?;
    ensure!(
        traceparent(&seen["Traceparent"])?.0 == caller_trace,
        "{seen}"
    );
    let spans = receiver.trace(caller_trace, 2)?;
    ensure!(
        kind(&spans, "CLIENT")?["parent_span_id"] == "00f067aa0ba902b7",
        "{spans:?}"
    );

    // B3 in, B3 out.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let seen = headers_seen(&sleep, &[&format!("b3: {b3_trace}-e457b5a2e4d86bd1-1")])?;
    let b3 = seen["B3"]
        .as_str()
        .with_context(|| format!("no b3 at the app: {seen}"))?;
    ensure!(b3.starts_with(b3_trace) && b3.contains("-1-"), "{b3}");
    receiver.trace(b3_trace, 2)?;

    // Sampling 0%: requests are not sampled (the app sees the decision), and nothing is
    // reported for them; at 100% again, the next request is. One exporter per sidecar sends
    // in order, so once the sampled request's spans are in, any of the others would be too.
    mesh.edit(
        "observability/telemetry.yaml",
        "randomSamplingPercentage: 100",
        "randomSamplingPercentage: 0",
    )?;
    wait_for("sampling 0%", Duration::from_secs(20), || {
        let seen = headers_seen(&sleep, &[])?;
        Ok(seen["Traceparent"]
            .as_str()
            .is_some_and(|t| t.ends_with("-00")))
    })
    .with_context(|| rejections(&mesh))?;
    let zero: Vec<String> = (0..3)
        .map(|_| Ok(traceparent(&headers_seen(&sleep, &[])?["Traceparent"])?.0))
        .collect::<anyhow::Result<_>>()?;
    mesh.edit(
        "observability/telemetry.yaml",
        "randomSamplingPercentage: 0",
        "randomSamplingPercentage: 100",
    )?;
    let mut sampled = String::new();
    wait_for("sampling 100% again", Duration::from_secs(20), || {
        let seen = headers_seen(&sleep, &[])?;
        sampled = traceparent(&seen["Traceparent"])?.0;
        Ok(seen["Traceparent"]
            .as_str()
            .is_some_and(|t| t.ends_with("-01")))
    })?;
    receiver.trace(&sampled, 2)?;
    let reported: Vec<String> = receiver
        .spans()?
        .iter()
        .filter_map(|s| s["trace_id"].as_str().map(str::to_owned))
        .collect();
    for trace in &zero {
        ensure!(
            !reported.contains(trace),
            "unsampled trace {trace} was reported"
        );
    }

    // Another provider, live: Zipkin (B3 on the wire), then OTLP over HTTP.
    for (provider, via, header) in [
        ("zipkin", "zipkin", "X-B3-Traceid"),
        ("otel-http", "http", "Traceparent"),
    ] {
        let current = if via == "zipkin" {
            "otel\n"
        } else {
            "zipkin\n"
        };
        mesh.edit(
            "observability/telemetry.yaml",
            &format!("    - name: {current}"),
            &format!("    - name: {provider}\n"),
        )?;
        // The two sidecars take the push independently: the app seeing the new header says
        // only that the server side has it, so wait until a whole trace arrives the new way.
        let mut last = Vec::new();
        wait_for(
            &format!("provider {provider}"),
            Duration::from_secs(30),
            || {
                let seen = headers_seen(&sleep, &[])?;
                let trace = match seen[header].as_str() {
                    Some(value) if header == "X-B3-Traceid" => value.to_owned(),
                    Some(_) if seen.get("X-B3-Traceid").is_none() => traceparent(&seen[header])?.0,
                    _ => return Ok(false),
                };
                last = receiver.trace(&trace, 2)?;
                Ok(last.iter().all(|s| s["via"] == via))
            },
        )
        .with_context(|| format!("{provider}: {last:?}; {}", rejections(&mesh)))?;
    }

    // The collector goes away: every response is as before, and the spans are counted lost.
    receiver.stop();
    let before = dropped(&sleep)?;
    for _ in 0..3 {
        let response = curl(&sleep, "http://httpbin.demo:8000/ip")?;
        ensure!(
            response.status == 200,
            "with the collector gone: {response:?}"
        );
    }
    wait_for(
        "the lost spans to be counted",
        Duration::from_secs(20),
        || Ok(dropped(&sleep)? >= before + 3.0),
    )?;
    Ok(())
}
