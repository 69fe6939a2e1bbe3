//! Traffic management through the launcher, with the manifests people write: Gateway API
//! `HTTPRoute` and `GRPCRoute` attached to Services (GAMMA), Istio `VirtualService`,
//! `DestinationRule` and `ServiceEntry`, read by the control plane from the manifests directory
//! and applied per request by the calling pod's sidecar.
//!
//! Each test brings up a small cluster of its own: the `examples/traffic/` canaries, or echo
//! backends (`tests/fixtures/echo_backend.py`: every reply says which pod answered and what it
//! received; it counts requests by their `x-echo-key` header, and fails or stalls when a header
//! asks it to) behind Services with the test's routes. Requests are sent from inside a client pod
//! as its app would send them, each batch by one process in the pod.

use std::{
    collections::BTreeMap,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use remora_e2e::{
    counter,
    example_cluster::{
        edit_file, ensure_accepted, local_get, rejections, sidecar_metrics, wait_for,
        ExampleCluster,
    },
    two_pods::fixture,
};
use remora_local::LocalPod;
use serde_json::{json, Value};

/// How long a config change may take to reach a sidecar (it takes about a second).
const PROPAGATION: Duration = Duration::from_secs(15);
/// The port of every echo backend and of the Services in front of them.
const PORT: u16 = 9080;
/// Envoy's body for a request whose route or per-try timeout expired (status 504).
const TIMEOUT_BODY: &str = "upstream request timeout";
/// Envoy's body for a request a fault aborted (with the fault's status).
const ABORT_BODY: &str = "fault filter abort";
/// Envoy's body for a request a full connection pool refused (status 503, flag UO).
const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

// ---------------------------------------------------------------------------------------------
// Sending requests from a pod

/// Sends requests as described by the JSON in argv[1] (`url`, `method`, `headers` as
/// `[name, value]` pairs, a `Host` among them replacing the URL's, `n`, `parallel`, `timeout`): `n` requests, `parallel` at a time (the
/// first of each worker sent together), each worker over its own keep-alive connection. Prints
/// one JSON array, in request order, of `{"status", "headers", "body", "seconds"}`; a request
/// that got no response has status 0 and the error as its body.
const CLIENT: &str = r#"
import http.client, json, sys, threading, time, urllib.parse

spec = json.loads(sys.argv[1])
url = urllib.parse.urlsplit(spec["url"])
target = (url.path or "/") + ("?" + url.query if url.query else "")
n, parallel = spec["n"], spec["parallel"]
replies = [None] * n
together = threading.Barrier(parallel)


def send(conn, i):
    started = time.monotonic()
    try:
        own_host = any(name.lower() == "host" for name, _ in spec["headers"])
        conn.putrequest(spec["method"], target, skip_host=own_host, skip_accept_encoding=True)
        for name, value in spec["headers"]:
            conn.putheader(name, value)
        if spec["method"] in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        headers = {}
        for name, value in response.getheaders():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        status, keep = response.status, not response.will_close
    except Exception as error:
        status, headers, body, keep = 0, {}, repr(error), False
    seconds = time.monotonic() - started
    replies[i] = {"status": status, "headers": headers, "body": body, "seconds": seconds}
    return keep


def worker(first):
    together.wait()
    conn = None
    for i in range(first, n, parallel):
        conn = conn or http.client.HTTPConnection(url.hostname, url.port or 80, timeout=spec["timeout"])
        if not send(conn, i):
            conn.close()
            conn = None


threads = [threading.Thread(target=worker, args=(t,)) for t in range(parallel)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(replies))
"#;

/// A reply as the client app saw it.
#[derive(Debug)]
struct Reply {
    /// 0 when there was no HTTP response at all.
    status: u16,
    /// Lowercased names; repeated headers joined with ", ".
    headers: BTreeMap<String, String>,
    body: String,
    /// From sending the request to the end of the response body, measured in the pod.
    seconds: f64,
}

impl Reply {
    fn from_json(reply: &Value) -> anyhow::Result<Self> {
        let headers = reply["headers"]
            .as_object()
            .context("no headers")?
            .iter()
            .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
            .collect();
        Ok(Self {
            status: reply["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .context("no status")?,
            headers,
            body: reply["body"].as_str().context("no body")?.to_owned(),
            seconds: reply["seconds"].as_f64().context("no time")?,
        })
    }

    /// What the echo backend received, as it answered it.
    fn echo(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not the echo backend's answer: {self:?}"))
    }

    /// The pod that answered: the echo backend's `pod`, or the page of the examples' backends
    /// (their pod's name).
    fn pod(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|echo| echo["pod"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.body.trim().to_owned())
    }

    /// Header `name` as the echo backend received it.
    fn seen(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.echo()?["headers"][name].as_str().map(str::to_owned))
    }

    /// Response header `name`, as the client received it.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// The values of a header that may have been sent several times (joined with commas).
fn values(header: Option<&str>) -> Vec<&str> {
    header.map_or_else(Vec::new, |h| h.split(',').map(str::trim).collect())
}

/// Requests to send from inside a pod: through its sidecar, as its app would send them.
struct Requests {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    n: usize,
    parallel: usize,
}

impl Requests {
    /// One `GET url`.
    fn get(url: impl Into<String>) -> Self {
        Self {
            method: "GET".to_owned(),
            url: url.into(),
            headers: Vec::new(),
            n: 1,
            parallel: 1,
        }
    }

    fn method(mut self, method: &str) -> Self {
        self.method = method.to_owned();
        self
    }

    /// Adds a request header (a name may be added more than once).
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `n` requests, one after the other unless [`Requests::parallel`].
    fn times(mut self, n: usize) -> Self {
        self.n = n;
        self
    }

    /// `parallel` requests at a time, each stream over its own connection.
    fn parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel;
        self
    }

    /// Sends them all from `pod`: the replies, in request order.
    fn send(&self, pod: &LocalPod) -> anyhow::Result<Vec<Reply>> {
        let spec = json!({
            "url": self.url,
            "method": self.method,
            "headers": self.headers,
            "n": self.n,
            "parallel": self.parallel.clamp(1, self.n.max(1)),
            "timeout": 15,
        });
        let out = pod
            .exec(&["python3", "-c", CLIENT, &spec.to_string()])
            .with_context(|| format!("running the client in {}", pod.id()))?;
        ensure!(
            out.status.success(),
            "the client in {} failed ({}): {}",
            pod.id(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let replies: Vec<Value> = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the client printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        replies.iter().map(Reply::from_json).collect()
    }

    /// Sends one request from `pod`: its reply.
    fn once(&self, pod: &LocalPod) -> anyhow::Result<Reply> {
        let mut replies = self.send(pod)?;
        ensure!(
            replies.len() == 1,
            "{} replies to one request",
            replies.len()
        );
        Ok(replies.remove(0))
    }
}

/// `http://<service>.shop:9080<path>`.
fn url(service: &str, path: &str) -> String {
    format!("http://{service}.shop:{PORT}{path}")
}

/// The requests carrying `x-echo-key: key` the echo backend in `pod` received so far, and the
/// last of them as it saw it (`null` when none).
fn received(pod: &LocalPod, key: &str) -> anyhow::Result<(u64, Value)> {
    let text = local_get(pod, PORT, &format!("/__count?key={key}"))?;
    let found: Value = serde_json::from_str(&text)
        .with_context(|| format!("/__count of {}: {text:?}", pod.id()))?;
    let count = found["count"]
        .as_u64()
        .with_context(|| format!("/__count of {}: {text:?}", pod.id()))?;
    Ok((count, found["last"].clone()))
}

fn count(pod: &LocalPod, key: &str) -> anyhow::Result<u64> {
    Ok(received(pod, key)?.0)
}

/// [`count`] once it stops changing (copies sent off the caller's path may still be on their
/// way): two reads half a second apart agree.
fn settled_count(pod: &LocalPod, key: &str) -> anyhow::Result<u64> {
    let mut last = count(pod, key)?;
    wait_for(
        &format!("the count of {key:?} on {} to settle", pod.id()),
        Duration::from_secs(10),
        || {
            thread::sleep(Duration::from_millis(500));
            let now = count(pod, key)?;
            let settled = now == last;
            last = now;
            Ok(settled)
        },
    )?;
    Ok(last)
}

/// Fails unless every reply is a 200 and each pod of `shares` answered its share of them
/// (within 5 percentage points), and no other pod answered any.
fn ensure_shares(what: &str, replies: &[Reply], shares: &[(&str, f64)]) -> anyhow::Result<()> {
    let failed: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    ensure!(
        failed.is_empty(),
        "{what}: {} of {} requests failed, the first: {:?}",
        failed.len(),
        replies.len(),
        failed[0]
    );
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for reply in replies {
        *tally.entry(reply.pod()).or_default() += 1;
    }
    println!("{what}: {tally:?}");
    let n = replies.len() as f64;
    for (pod, share) in shares {
        let got = tally.get(*pod).copied().unwrap_or_default() as f64 / n;
        ensure!(
            (got - share).abs() <= 0.05,
            "{what}: {pod} answered {:.1} % of the requests, expected {:.0} % ± 5: {tally:?}",
            got * 100.0,
            share * 100.0
        );
    }
    let others: Vec<&String> = tally
        .keys()
        .filter(|pod| !shares.iter().any(|(expected, _)| expected == pod))
        .collect();
    ensure!(
        others.is_empty(),
        "{what}: {others:?} answered, which should get nothing: {tally:?}"
    );
    Ok(())
}

/// Fails unless `hits` out of `n` is within 4 standard deviations of Binomial(n, p)'s mean.
fn ensure_binomial(what: &str, hits: u64, n: u64, p: f64) -> anyhow::Result<()> {
    let mean = n as f64 * p;
    let margin = 4.0 * (n as f64 * p * (1.0 - p)).sqrt();
    ensure!(
        (hits as f64 - mean).abs() <= margin,
        "{what}: {hits} of {n}, expected {mean:.0} ± {margin:.0} (4 σ)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// Namespace `shop`, with sidecars.
const SHOP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
";

/// Deployment `name` in `namespace` running `argv` that listens on `port`, its pods labelled
/// `labels` (YAML flow mapping entries: `app: echo, version: v1`), with `env` in its container:
/// a YAML document after a `---`.
fn deployment(
    namespace: &str,
    name: &str,
    labels: &str,
    argv: &[&str],
    port: u16,
    env: &[(&str, &str)],
) -> String {
    let command = serde_json::to_string(argv).unwrap_or_default();
    let env: Vec<String> = env
        .iter()
        .map(|(name, value)| format!("{{name: {name}, value: \"{value}\"}}"))
        .collect();
    let env = env.join(", ");
    format!(
        r#"
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector:
    matchLabels: {{{labels}}}
  template:
    metadata:
      labels: {{{labels}}}
    spec:
      containers:
        - name: app
          image: python
          command: {command}
          env: [{env}]
          ports: [{{containerPort: {port}}}]
"#
    )
}

/// Deployment `name` in `shop` running the echo backend on 9080 (see [`deployment`]).
fn echo_deployment(name: &str, labels: &str, env: &[(&str, &str)]) -> String {
    let backend = fixture("echo_backend.py");
    deployment(
        "shop",
        name,
        labels,
        &["python3", &backend, "9080"],
        PORT,
        env,
    )
}

/// Service `name` in `shop` with port 9080 (`http`) selecting `selector` (YAML flow mapping
/// entries): a YAML document after a `---`.
fn service(name: &str, selector: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{{selector}}}
  ports: [{{name: http, port: {PORT}, targetPort: {PORT}}}]
"#
    )
}

/// Services `names`, each selecting `selector`.
fn services(names: &[&str], selector: &str) -> String {
    names.iter().map(|name| service(name, selector)).collect()
}

/// A cluster of the demo's `client/sleep` and `manifest` (written as `traffic.yaml`), without
/// the demo's httpbin; every object accepted by the control plane.
fn cluster(name: &str, manifest: String) -> anyhow::Result<ExampleCluster> {
    let mesh = ExampleCluster::up_with(name, |dir| {
        fs::remove_file(dir.join("httpbin.yaml"))?;
        fs::write(dir.join("traffic.yaml"), manifest)?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    Ok(mesh)
}

// ---------------------------------------------------------------------------------------------
// Weighted splits

/// 70/20/10 across three Services by an HTTPRoute, and a fourth Service at weight 0; with
/// `examples/traffic/`'s pods behind them.
fn split_by_service() -> String {
    let mut manifest = service("split", "app: reviews");
    manifest += &service("reviews-v1", "app: reviews, version: v1");
    manifest += &service("reviews-v2", "app: reviews, version: v2");
    manifest += r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: split, port: 9080}]
  rules:
    - backendRefs:
        - {name: reviews-v1, port: 9080, weight: 70}
        - {name: reviews-v2, port: 9080, weight: 20}
        - {name: ratings-v1, port: 9080, weight: 10}
        - {name: ratings-v2, port: 9080, weight: 0}
"#;
    manifest
}

#[test]
fn weighted_splits_send_each_backend_its_share() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with_dirs("traffic-split", &["traffic"], |dir| {
        // The traffic example (with its own client, shop/sleep), not the demo app.
        fs::remove_file(dir.join("httpbin.yaml"))?;
        fs::remove_file(dir.join("sleep.yaml"))?;
        fs::write(dir.join("split.yaml"), split_by_service())?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let sleep = mesh.pod_in("shop", "sleep")?;
    let n = 1000;

    // examples/traffic/canary.yaml: a VirtualService, 90/10 over DestinationRule subsets.
    let replies = Requests::get(url("reviews", "/"))
        .times(n)
        .parallel(4)
        .send(&sleep)?;
    ensure_shares(
        "reviews (VirtualService 90/10 over subsets v1/v2)",
        &replies,
        &[("reviews-v1-0", 0.9), ("reviews-v2-0", 0.1)],
    )?;
    // examples/traffic/gateway-api/httproute-canary.yaml: an HTTPRoute, 90/10 over Services.
    let replies = Requests::get(url("ratings", "/"))
        .times(n)
        .parallel(4)
        .send(&sleep)?;
    ensure_shares(
        "ratings (HTTPRoute 90/10 over ratings-v1/ratings-v2)",
        &replies,
        &[("ratings-v1-0", 0.9), ("ratings-v2-0", 0.1)],
    )?;
    // Three Services 70/20/10, and ratings-v2 at weight 0 gets nothing.
    let replies = Requests::get(url("split", "/"))
        .times(n)
        .parallel(4)
        .send(&sleep)?;
    ensure_shares(
        "split (HTTPRoute 70/20/10/0)",
        &replies,
        &[
            ("reviews-v1-0", 0.7),
            ("reviews-v2-0", 0.2),
            ("ratings-v1-0", 0.1),
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mirroring

/// `primary` answers; `mirror` and `slow-mirror` (2 s per request) get copies; `nowhere` has
/// no endpoints. Each `mirror-*` Service routes to `primary` with its own mirror.
fn mirroring() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("primary", "app: primary", &[]);
    manifest += &echo_deployment("mirror", "app: mirror", &[]);
    manifest += &echo_deployment(
        "slow-mirror",
        "app: slow-mirror",
        &[("ECHO_DELAY_MS", "2000")],
    );
    manifest += &service("mirror", "app: mirror");
    manifest += &service("slow-mirror", "app: slow-mirror");
    manifest += &service("nowhere", "app: nowhere");
    manifest += &services(
        &[
            "primary",
            "mirror-all",
            "mirror-half",
            "mirror-down",
            "mirror-slow",
        ],
        "app: primary",
    );
    manifest += r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mirror-all, namespace: shop}
spec:
  hosts: [mirror-all]
  http:
    - route: [{destination: {host: primary}}]
      mirror: {host: mirror}
      mirrorPercentage: {value: 100.0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mirror-half, namespace: shop}
spec:
  hosts: [mirror-half]
  http:
    - route: [{destination: {host: primary}}]
      mirror: {host: mirror}
      mirrorPercentage: {value: 50.0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mirror-down, namespace: shop}
spec:
  hosts: [mirror-down]
  http:
    - route: [{destination: {host: primary}}]
      mirror: {host: nowhere}
      mirrorPercentage: {value: 100.0}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror-slow, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: mirror-slow, port: 9080}]
  rules:
    - backendRefs: [{name: primary, port: 9080}]
      filters:
        - type: RequestMirror
          requestMirror:
            backendRef: {name: slow-mirror, port: 9080}
"#;
    manifest
}

/// Fails unless every reply is a 200 from `primary-0` that took less than a second (the slow
/// mirror takes two).
fn ensure_primary_only(what: &str, replies: &[Reply]) -> anyhow::Result<()> {
    for (i, reply) in replies.iter().enumerate() {
        ensure!(
            reply.status == 200 && reply.pod() == "primary-0",
            "{what}: request {i} was not answered by the primary: {reply:?}"
        );
        ensure!(
            reply.seconds < 1.0,
            "{what}: request {i} took {:.2} s: the caller waited for the mirror",
            reply.seconds
        );
    }
    Ok(())
}

#[test]
fn mirrors_get_copies_the_caller_never_waits_for() -> anyhow::Result<()> {
    let mesh = cluster("traffic-mirror", mirroring())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let primary = mesh.pod_in("shop", "primary")?;
    let mirror = mesh.pod_in("shop", "mirror")?;
    let slow_mirror = mesh.pod_in("shop", "slow-mirror")?;

    // 100 %: every request is copied; the client sees the primary's answers only.
    let n = 50;
    let replies = Requests::get(url("mirror-all", "/all?x=1"))
        .header("x-echo-key", "all")
        .times(n)
        .send(&sleep)?;
    ensure_primary_only("mirror-all", &replies)?;
    let answered = count(&primary, "all")?;
    ensure!(
        answered == n as u64,
        "the primary got {answered} of {n} requests to mirror-all"
    );
    let mirrored = settled_count(&mirror, "all")?;
    ensure!(
        mirrored == n as u64,
        "the mirror got {mirrored} copies of {n} requests mirrored at 100 %"
    );
    // A copy is the request as sent, Host included.
    let (_, copy) = received(&mirror, "all")?;
    ensure!(
        copy["host"] == "mirror-all.shop:9080"
            && copy["method"] == "GET"
            && copy["path"] == "/all?x=1",
        "the mirror got {copy}"
    );

    // 50 %: about half.
    let n = 400;
    let replies = Requests::get(url("mirror-half", "/"))
        .header("x-echo-key", "half")
        .times(n)
        .parallel(4)
        .send(&sleep)?;
    ensure_primary_only("mirror-half", &replies)?;
    let mirrored = settled_count(&mirror, "half")?;
    println!("mirror-half: {mirrored} of {n} requests copied");
    ensure_binomial("requests mirrored at 50 %", mirrored, n as u64, 0.5)?;

    // A mirror without endpoints changes nothing for the caller.
    let replies = Requests::get(url("mirror-down", "/"))
        .header("x-echo-key", "down")
        .times(20)
        .send(&sleep)?;
    ensure_primary_only("mirror-down (no endpoints)", &replies)?;

    // Neither does a slow one (HTTPRoute RequestMirror): the caller does not wait for it, and
    // it does get every copy.
    let replies = Requests::get(url("mirror-slow", "/"))
        .header("x-echo-key", "slow")
        .times(10)
        .send(&sleep)?;
    ensure_primary_only("mirror-slow (2 s per copy)", &replies)?;
    let mirrored = settled_count(&slow_mirror, "slow")?;
    ensure!(
        mirrored == 10,
        "the slow mirror got {mirrored} copies of 10 requests"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Retries and timeouts

/// One echo backend, `flaky`, behind a Service per retry or timeout policy.
fn retrying() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("flaky", "app: flaky", &[]);
    manifest += &services(
        &[
            "retry-5xx",
            "retry-codes",
            "retry-thrice",
            "retry-default",
            "per-try-timeout",
            "timeout",
        ],
        "app: flaky",
    );
    manifest += r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: retry-5xx, namespace: shop}
spec:
  hosts: [retry-5xx]
  http:
    - route: [{destination: {host: retry-5xx}}]
      retries: {attempts: 2, retryOn: 5xx}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retry-codes, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: retry-codes, port: 9080}]
  rules:
    - backendRefs: [{name: retry-codes, port: 9080}]
      retry: {codes: [503], attempts: 2, backoff: 10ms}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: retry-thrice, namespace: shop}
spec:
  hosts: [retry-thrice]
  http:
    - route: [{destination: {host: retry-thrice}}]
      retries: {attempts: 3, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: per-try-timeout, namespace: shop}
spec:
  hosts: [per-try-timeout]
  http:
    - route: [{destination: {host: per-try-timeout}}]
      retries: {attempts: 2, perTryTimeout: 300ms, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: timeout, namespace: shop}
spec:
  hosts: [timeout]
  http:
    - route: [{destination: {host: timeout}}]
      timeout: 500ms
"#;
    manifest
}

/// `reply` (to `service`) has `status`, its answered try carried `x-envoy-attempt-count:
/// tries`, and the backend got exactly `tries` tries of requests keyed `key`.
fn ensure_tries(
    service: &str,
    reply: &Reply,
    backend: &LocalPod,
    key: &str,
    status: u16,
    tries: u64,
) -> anyhow::Result<()> {
    ensure!(
        reply.status == status,
        "{service}: expected {status}, got {reply:?}"
    );
    let attempt = reply.seen("x-envoy-attempt-count")?;
    let expected = tries.to_string();
    ensure!(
        attempt.as_deref() == Some(expected.as_str()),
        "{service}: the answered try carried x-envoy-attempt-count {attempt:?}, expected {tries}"
    );
    let got = count(backend, key)?;
    ensure!(
        got == tries,
        "{service}: the backend got {got} tries, expected {tries}"
    );
    Ok(())
}

#[test]
fn retries_and_timeouts_follow_the_route_policy() -> anyhow::Result<()> {
    let mesh = cluster("traffic-retry", retrying())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let flaky = mesh.pod_in("shop", "flaky")?;

    // A request that fails once is tried again, and the second try's answer is the reply.
    for (service, key) in [("retry-5xx", "once-vs"), ("retry-codes", "once-httproute")] {
        let reply = Requests::get(url(service, "/"))
            .header("x-echo-fail", "1")
            .header("x-echo-key", key)
            .once(&sleep)?;
        ensure_tries(service, &reply, &flaky, key, 200, 2)?;
    }

    // Always failing, `attempts: 3`: the first try and three retries, then the last answer.
    let reply = Requests::get(url("retry-thrice", "/"))
        .header("x-echo-status", "503")
        .header("x-echo-key", "always")
        .once(&sleep)?;
    ensure_tries("retry-thrice", &reply, &flaky, "always", 503, 4)?;

    // No route, Istio's default policy: an answered 503 is the reply, not retried.
    let reply = Requests::get(url("retry-default", "/"))
        .header("x-echo-status", "503")
        .header("x-echo-key", "default")
        .once(&sleep)?;
    ensure_tries("retry-default", &reply, &flaky, "default", 503, 1)?;

    // perTryTimeout 300 ms, 2 retries, a backend taking 2 s: three tries cut short, then 504.
    let reply = Requests::get(url("per-try-timeout", "/"))
        .header("x-echo-delay-ms", "2000")
        .header("x-echo-key", "per-try")
        .once(&sleep)?;
    ensure!(
        reply.status == 504 && reply.body == TIMEOUT_BODY,
        "per-try-timeout: expected 504 {TIMEOUT_BODY:?}, got {reply:?}"
    );
    ensure!(
        (0.9..2.0).contains(&reply.seconds),
        "per-try-timeout: answered after {:.2} s, expected three tries of 0.3 s",
        reply.seconds
    );
    let tries = count(&flaky, "per-try")?;
    ensure!(
        tries == 3,
        "per-try-timeout: the backend got {tries} tries, expected 3"
    );

    // timeout 500 ms for the whole request: 504, and a timed-out request is not retried.
    let reply = Requests::get(url("timeout", "/"))
        .header("x-echo-delay-ms", "2000")
        .header("x-echo-key", "timeout")
        .once(&sleep)?;
    ensure!(
        reply.status == 504 && reply.body == TIMEOUT_BODY,
        "timeout: expected 504 {TIMEOUT_BODY:?}, got {reply:?}"
    );
    ensure!(
        (0.5..2.0).contains(&reply.seconds),
        "timeout: answered after {:.2} s, expected the 0.5 s timeout",
        reply.seconds
    );
    let tries = count(&flaky, "timeout")?;
    ensure!(
        tries == 1,
        "timeout: the backend got {tries} tries, expected 1"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fault injection

fn faults() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("echo", "app: echo", &[]);
    manifest += &services(&["abort-all", "abort-half", "delay-all"], "app: echo");
    manifest += r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: abort-all, namespace: shop}
spec:
  hosts: [abort-all]
  http:
    - route: [{destination: {host: abort-all}}]
      fault: {abort: {percentage: {value: 100.0}, httpStatus: 418}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: abort-half, namespace: shop}
spec:
  hosts: [abort-half]
  http:
    - route: [{destination: {host: abort-half}}]
      fault: {abort: {percentage: {value: 50.0}, httpStatus: 500}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: delay-all, namespace: shop}
spec:
  hosts: [delay-all]
  http:
    - route: [{destination: {host: delay-all}}]
      fault: {delay: {percentage: {value: 100.0}, fixedDelay: 1s}}
"#;
    manifest
}

#[test]
fn faults_abort_and_delay_the_share_of_requests_they_name() -> anyhow::Result<()> {
    let mesh = cluster("traffic-fault", faults())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let echo = mesh.pod_in("shop", "echo")?;

    // Abort 100 %: every request answered 418 by the caller's sidecar, none forwarded.
    let replies = Requests::get(url("abort-all", "/"))
        .header("x-echo-key", "abort-all")
        .times(20)
        .send(&sleep)?;
    for reply in &replies {
        ensure!(
            reply.status == 418 && reply.body == ABORT_BODY,
            "abort-all: expected 418 {ABORT_BODY:?}, got {reply:?}"
        );
    }
    let forwarded = count(&echo, "abort-all")?;
    ensure!(
        forwarded == 0,
        "{forwarded} aborted requests reached the backend"
    );

    // Abort 50 %: about half aborted, exactly the others forwarded.
    let n = 400;
    let replies = Requests::get(url("abort-half", "/"))
        .header("x-echo-key", "abort-half")
        .times(n)
        .parallel(4)
        .send(&sleep)?;
    let mut aborted = 0;
    for reply in &replies {
        match reply.status {
            500 if reply.body == ABORT_BODY => aborted += 1,
            200 if reply.pod() == "echo-0" => {}
            _ => bail!("abort-half: neither aborted nor answered by the backend: {reply:?}"),
        }
    }
    println!("abort-half: {aborted} of {n} aborted");
    ensure_binomial("requests aborted at 50 %", aborted, n as u64, 0.5)?;
    let forwarded = count(&echo, "abort-half")?;
    ensure!(
        forwarded == n as u64 - aborted,
        "abort-half: {aborted} aborted, but the backend got {forwarded} of {n}"
    );

    // Delay 100 % by 1 s: each request takes at least that long, then is answered.
    let replies = Requests::get(url("delay-all", "/"))
        .header("x-echo-key", "delay")
        .times(3)
        .send(&sleep)?;
    for reply in &replies {
        ensure!(reply.status == 200, "delay-all: {reply:?}");
        ensure!(
            reply.seconds >= 1.0,
            "delay-all: answered after {:.3} s, before the injected 1 s delay",
            reply.seconds
        );
    }
    ensure!(
        count(&echo, "delay")? == 3,
        "delay-all: not every delayed request was forwarded"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Matching and precedence

/// `echo-v1` and `echo-v2` (labels `version: v1`/`v2`). HTTPRoute `precedence` sends
/// everything to echo-v1, each rule adding `x-rule: <its name>`, written from the least to the
/// most specific (the spec's precedence, not the order, decides). VirtualService `in-order`,
/// whose first matching route wins, splits by header and path over DestinationRule subsets.
fn matching() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("echo-v1", "app: echo, version: v1", &[]);
    manifest += &echo_deployment("echo-v2", "app: echo, version: v2", &[]);
    manifest += &service("echo-v1", "app: echo, version: v1");
    manifest += &services(&["precedence", "in-order"], "app: echo");
    manifest += r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: precedence, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: precedence, port: 9080}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: prefix-api}]}}]
      backendRefs: [{name: echo-v1, port: 9080}]
    - matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: debug, value: "1"}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: query}]}}]
      backendRefs: [{name: echo-v1, port: 9080}]
    - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-tier, value: gold}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: header}]}}]
      backendRefs: [{name: echo-v1, port: 9080}]
    - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: method}]}}]
      backendRefs: [{name: echo-v1, port: 9080}]
    - matches: [{path: {type: PathPrefix, value: /api/v2}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: prefix-api-v2}]}}]
      backendRefs: [{name: echo-v1, port: 9080}]
    - matches: [{path: {type: Exact, value: /api/v2/items}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: exact}]}}]
      backendRefs: [{name: echo-v1, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: in-order, namespace: shop}
spec:
  host: in-order
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: in-order, namespace: shop}
spec:
  hosts: [in-order]
  http:
    - name: header
      match: [{headers: {x-version: {exact: v2}}}]
      route: [{destination: {host: in-order, subset: v2}}]
      headers: {request: {set: {x-rule: vs-header}}}
    - name: api
      match: [{uri: {prefix: /api}}]
      route: [{destination: {host: in-order, subset: v1}}]
      headers: {request: {set: {x-rule: vs-api}}}
    - name: exact
      match: [{uri: {exact: /api/v2/items}}]
      route: [{destination: {host: in-order, subset: v2}}]
      headers: {request: {set: {x-rule: vs-exact}}}
    - name: default
      route: [{destination: {host: in-order, subset: v1}}]
      headers: {request: {set: {x-rule: vs-default}}}
"#;
    manifest
}

/// A request: method, path (with query), headers.
type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

fn send_request(sleep: &LocalPod, service: &str, request: Request<'_>) -> anyhow::Result<Reply> {
    let (method, path, headers) = request;
    let mut requests = Requests::get(url(service, path)).method(method);
    for (name, value) in headers {
        requests = requests.header(name, value);
    }
    requests.once(sleep)
}

#[test]
fn requests_take_the_rule_that_takes_precedence() -> anyhow::Result<()> {
    let mesh = cluster("traffic-match", matching())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let gold: &[(&str, &str)] = &[("x-tier", "gold")];
    let unmatched: &[(&str, &str)] = &[("x-echo-key", "unmatched")];

    // HTTPRoute: Exact, then the longest PathPrefix, then a method, then the most header
    // matches, then the most query matches; nothing matching is 404.
    let cases: &[(Request<'_>, Option<&str>)] = &[
        (("GET", "/api/v2/items", &[]), Some("exact")),
        (("POST", "/api/v2/items?debug=1", gold), Some("exact")),
        (("GET", "/api/v2/other", &[]), Some("prefix-api-v2")),
        (("POST", "/api/v2/other", gold), Some("prefix-api-v2")),
        (("GET", "/api", &[]), Some("prefix-api")),
        (("GET", "/api/v1", &[]), Some("prefix-api")),
        (("POST", "/api/v1", &[]), Some("method")),
        (("GET", "/api/v1", gold), Some("header")),
        (("POST", "/api/v1", gold), Some("method")),
        (("GET", "/api/v1?debug=1", &[]), Some("query")),
        (("GET", "/api/v1?debug=1", gold), Some("header")),
        // PathPrefix matches whole segments.
        (("GET", "/apix", unmatched), None),
        (("GET", "/other", unmatched), None),
    ];
    for &(request, expected) in cases {
        let (method, path, headers) = request;
        let reply = send_request(&sleep, "precedence", request)?;
        match expected {
            Some(rule) => {
                let took = reply.seen("x-rule")?;
                ensure!(
                    reply.status == 200 && took.as_deref() == Some(rule),
                    "{method} {path} {headers:?} took rule {took:?}, expected {rule}: {reply:?}"
                );
            }
            None => ensure!(
                reply.status == 404,
                "{method} {path} matches no rule: expected 404, got {reply:?}"
            ),
        }
    }
    for backend in ["echo-v1", "echo-v2"] {
        let reached = count(&mesh.pod_in("shop", backend)?, "unmatched")?;
        ensure!(
            reached == 0,
            "{reached} unmatched requests reached {backend}"
        );
    }

    // VirtualService: the first route that matches, in order; `prefix` is by characters.
    let version_2: &[(&str, &str)] = &[("x-version", "v2")];
    let cases: &[(Request<'_>, &str, &str)] = &[
        (("GET", "/api/v2/items", &[]), "echo-v1-0", "vs-api"),
        (("GET", "/apix", &[]), "echo-v1-0", "vs-api"),
        (("GET", "/other", &[]), "echo-v1-0", "vs-default"),
        (
            ("GET", "/api/v2/items", version_2),
            "echo-v2-0",
            "vs-header",
        ),
        (("GET", "/other", version_2), "echo-v2-0", "vs-header"),
    ];
    for &(request, pod, rule) in cases {
        let (method, path, headers) = request;
        let reply = send_request(&sleep, "in-order", request)?;
        let took = reply.seen("x-rule")?;
        ensure!(
            reply.status == 200 && reply.pod() == pod && took.as_deref() == Some(rule),
            "{method} {path} {headers:?}: expected route {rule} to subset pod {pod}, got rule \
             {took:?}: {reply:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Header modifiers, redirects, rewrites

fn filters() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("echo", "app: echo", &[]);
    manifest += &services(
        &[
            "headers",
            "vs-headers",
            "redirects",
            "vs-redirects",
            "rewrites",
            "vs-rewrites",
            "cors",
        ],
        "app: echo",
    );
    manifest += r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: headers, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: headers, port: 9080}]
  rules:
    - backendRefs: [{name: headers, port: 9080}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-set, value: by-route}]
            add: [{name: x-add, value: by-route}]
            remove: [x-remove]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{name: x-resp-set, value: by-route}]
            add: [{name: x-resp-add, value: by-route}]
            remove: [x-echo-pod]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs-headers, namespace: shop}
spec:
  hosts: [vs-headers]
  http:
    - route:
        - destination: {host: vs-headers}
          headers: {request: {set: {x-dest: by-destination}}}
      headers:
        request: {set: {x-set: by-route}, add: {x-add: by-route}, remove: [x-remove]}
        response: {set: {x-resp-set: by-route}, add: {x-resp-add: by-route}, remove: [x-echo-pod]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redirects, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: redirects, port: 9080}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            hostname: shop.example
            port: 8443
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
            statusCode: 302
    - matches: [{path: {type: Exact, value: /moved}}]
      filters:
        - type: RequestRedirect
          requestRedirect:
            hostname: shop.example
            port: 8080
            path: {type: ReplaceFullPath, replaceFullPath: /here}
            statusCode: 301
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs-redirects, namespace: shop}
spec:
  hosts: [vs-redirects]
  http:
    - match: [{uri: {prefix: /old}}]
      redirect: {uri: /new, authority: shop.example, scheme: https, port: 8443, redirectCode: 308}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rewrites, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: rewrites, port: 9080}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /v1}}]
      filters:
        - type: URLRewrite
          urlRewrite:
            hostname: backend.example
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
      backendRefs: [{name: rewrites, port: 9080}]
    - matches: [{path: {type: PathPrefix, value: /all}}]
      filters:
        - type: URLRewrite
          urlRewrite:
            path: {type: ReplaceFullPath, replaceFullPath: /full}
      backendRefs: [{name: rewrites, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs-rewrites, namespace: shop}
spec:
  hosts: [vs-rewrites]
  http:
    - match: [{uri: {prefix: /old}}]
      rewrite: {uri: /new, authority: backend.example}
      route: [{destination: {host: vs-rewrites}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cors, namespace: shop}
spec:
  hosts: [cors]
  http:
    - route: [{destination: {host: cors}}]
      corsPolicy:
        allowOrigins: [{exact: "https://shop.example"}]
        allowMethods: [GET, POST]
        allowHeaders: [x-token]
        exposeHeaders: [x-echo-pod]
        maxAge: 10m
        allowCredentials: true
"#;
    manifest
}

#[test]
fn filters_modify_headers_redirect_rewrite_and_answer_cors() -> anyhow::Result<()> {
    let mesh = cluster("traffic-filters", filters())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let echo = mesh.pod_in("shop", "echo")?;

    // Header modifiers, both ways: `set` replaces, `add` appends, `remove` removes.
    for service in ["headers", "vs-headers"] {
        let reply = Requests::get(url(service, "/"))
            .header("x-set", "by-client")
            .header("x-add", "by-client")
            .header("x-remove", "by-client")
            .header("x-echo-response-header", "x-resp-set=by-app")
            .header("x-echo-response-header", "x-resp-add=by-app")
            .once(&sleep)?;
        ensure!(reply.status == 200, "{service}: {reply:?}");
        let echoed = reply.echo()?;
        let seen = &echoed["headers"];
        ensure!(
            seen["x-set"] == "by-route"
                && values(seen["x-add"].as_str()) == ["by-client", "by-route"]
                && seen.get("x-remove").is_none(),
            "{service}: the backend received headers {seen}"
        );
        ensure!(
            reply.header("x-resp-set") == Some("by-route")
                && values(reply.header("x-resp-add")) == ["by-app", "by-route"]
                && reply.header("x-echo-pod").is_none(),
            "{service}: the client received headers {:?}",
            reply.headers
        );
    }
    let reply = Requests::get(url("vs-headers", "/")).once(&sleep)?;
    let dest = reply.seen("x-dest")?;
    ensure!(
        dest.as_deref() == Some("by-destination"),
        "vs-headers: the destination's own header: {dest:?}"
    );

    // Redirects are answered by the caller's sidecar: status and Location, nothing forwarded.
    let redirects = [
        (
            "redirects",
            "/old/page?x=1",
            302,
            "https://shop.example:8443/new/page?x=1",
        ),
        ("redirects", "/moved", 301, "http://shop.example:8080/here"),
        (
            "vs-redirects",
            "/old/page",
            308,
            "https://shop.example:8443/new",
        ),
    ];
    for (service, path, status, location) in redirects {
        let reply = Requests::get(url(service, path))
            .header("x-echo-key", "redirected")
            .once(&sleep)?;
        ensure!(
            reply.status == status && reply.header("location") == Some(location),
            "{service} {path}: expected {status} to {location}, got {reply:?}"
        );
    }
    let forwarded = count(&echo, "redirected")?;
    ensure!(
        forwarded == 0,
        "{forwarded} redirected requests reached the backend"
    );

    // CORS: a preflight from an allowed origin is answered by the caller's sidecar; an actual
    // request from it gets the allow headers added; another origin's gets none.
    let preflight = Requests::get(url("cors", "/items"))
        .method("OPTIONS")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("x-echo-key", "cors-preflight")
        .once(&sleep)?;
    ensure!(
        preflight.status == 200
            && preflight.header("access-control-allow-origin") == Some("https://shop.example")
            && preflight.header("access-control-allow-methods") == Some("GET,POST")
            && preflight.header("access-control-allow-headers") == Some("x-token")
            && preflight.header("access-control-max-age") == Some("600")
            && preflight.header("access-control-allow-credentials") == Some("true"),
        "preflight: {preflight:?}"
    );
    ensure!(
        count(&echo, "cors-preflight")? == 0,
        "a preflight the sidecar answers never reaches the backend"
    );
    let actual = Requests::get(url("cors", "/items"))
        .header("origin", "https://shop.example")
        .once(&sleep)?;
    ensure!(
        actual.status == 200
            && actual.header("access-control-allow-origin") == Some("https://shop.example")
            && actual.header("access-control-expose-headers") == Some("x-echo-pod"),
        "request from an allowed origin: {actual:?}"
    );
    let stranger = Requests::get(url("cors", "/items"))
        .header("origin", "https://evil.example")
        .once(&sleep)?;
    ensure!(
        stranger.status == 200 && stranger.header("access-control-allow-origin").is_none(),
        "request from another origin: {stranger:?}"
    );

    // Rewrites: the backend sees the rewritten path and Host.
    let rewrites = [
        (
            "rewrites",
            "/v1/items?x=1",
            "/v2/items?x=1",
            "backend.example",
        ),
        ("rewrites", "/v1", "/v2", "backend.example"),
        ("rewrites", "/all/a/b", "/full", "rewrites.shop:9080"),
        ("vs-rewrites", "/old/x", "/new/x", "backend.example"),
    ];
    for (service, path, rewritten, host) in rewrites {
        let reply = Requests::get(url(service, path)).once(&sleep)?;
        ensure!(reply.status == 200, "{service} {path}: {reply:?}");
        let seen = reply.echo()?;
        ensure!(
            seen["path"] == rewritten && seen["host"] == host,
            "{service} {path}: expected {rewritten} for host {host}, the backend got path {} \
             host {}",
            seen["path"],
            seen["host"]
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Outlier detection

/// Service `outlier` over `healthy` and `failing` (which answers everything 503), round robin,
/// an endpoint ejected at its first 5xx for 3 s.
fn outliers() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("healthy", "app: outlier, role: healthy", &[]);
    manifest += &echo_deployment(
        "failing",
        "app: outlier, role: failing",
        &[("ECHO_STATUS", "503")],
    );
    manifest += &service("outlier", "app: outlier");
    manifest += r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier, namespace: shop}
spec:
  host: outlier
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 100
"#;
    manifest
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_then_readmits_it() -> anyhow::Result<()> {
    let mesh = cluster("traffic-outlier", outliers())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let failing = mesh.pod_in("shop", "failing")?;
    let requests = |key: &str| Requests::get(url("outlier", "/")).header("x-echo-key", key);
    let ensure_healthy_only = |what: &str, replies: &[Reply]| -> anyhow::Result<()> {
        for reply in replies {
            ensure!(
                reply.status == 200 && reply.pod() == "healthy-0",
                "{what}: a request reached the ejected endpoint: {replies:?}"
            );
        }
        Ok(())
    };

    // Round robin sends the failing endpoint one of the first two requests; its 503 ejects it.
    let started = Instant::now();
    let first = requests("first").times(10).send(&sleep)?;
    let failed: Vec<&Reply> = first.iter().filter(|r| r.status != 200).collect();
    ensure!(
        matches!(failed.as_slice(), [reply] if reply.status == 503 && reply.pod() == "failing-0"),
        "expected exactly one 503, from failing-0, before its ejection: {first:?}"
    );
    ensure!(
        count(&failing, "first")? == 1,
        "failing-0 got more than one request"
    );
    // While ejected, the healthy endpoint takes everything.
    let ejected = requests("ejected").times(10).send(&sleep)?;
    ensure_healthy_only("while ejected", &ejected)?;

    // After the ejection time it is tried again (and fails, so it is ejected again).
    let waited = wait_for("the failing endpoint to be readmitted", PROPAGATION, || {
        let reply = requests("readmitted").once(&sleep)?;
        match reply.status {
            503 => Ok(true),
            200 => Ok(false),
            _ => bail!("while waiting for readmission: {reply:?}"),
        }
    })?;
    let since = started.elapsed();
    println!("failing-0 readmitted {since:?} after the first request ({waited:?} of polling)");
    ensure!(
        since >= Duration::from_secs(3),
        "readmitted {since:?} after it was ejected, before its 3 s ejection time"
    );
    ensure!(
        count(&failing, "readmitted")? == 1,
        "failing-0 got more than the one request that readmitted it"
    );
    let again = requests("again").times(10).send(&sleep)?;
    ensure_healthy_only("ejected again", &again)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PASSTHROUGH balancing

/// Service `pt` in front of two echo pods, whose DestinationRule balances `PASSTHROUGH`.
fn passthrough() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("pt-a", "app: pt", &[]);
    manifest += &echo_deployment("pt-b", "app: pt", &[]);
    manifest += &service("pt", "app: pt");
    manifest += r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pt, namespace: shop}
spec:
  host: pt
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
"#;
    manifest
}

#[test]
fn passthrough_sends_requests_to_the_address_the_app_dialled() -> anyhow::Result<()> {
    let mesh = cluster("traffic-passthrough", passthrough())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let replies = Requests::get(url("pt", "/"))
        .times(64)
        .parallel(16)
        .send(&sleep)?;
    let pods = answering(&replies)?;
    ensure!(
        pods == ["pt-a-0".to_owned(), "pt-b-0".to_owned()].into(),
        "the cluster IP's forwarding reaches both pods: {pods:?}"
    );
    // The sidecar dialled the cluster IP itself, in the clear (as Envoy's ORIGINAL_DST
    // cluster does), and the Service's forwarding chose the pod: no mesh hop, so the
    // backend's sidecar has no client certificate to report.
    for reply in &replies {
        ensure!(
            reply.seen("x-forwarded-client-cert")?.is_none(),
            "a mesh hop: {reply:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Connection pool limits

fn pool() -> String {
    let mut manifest = SHOP.to_owned();
    manifest += &echo_deployment("echo", "app: echo", &[]);
    manifest += &service("pool", "app: echo");
    manifest += r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: shop}
spec:
  host: pool
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 1}
"#;
    manifest
}

#[test]
fn a_full_connection_pool_refuses_the_overflow() -> anyhow::Result<()> {
    let mesh = cluster("traffic-pool", pool())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let echo = mesh.pod_in("shop", "echo")?;

    // Six at once, each taking 1 s at the backend: one in flight and one waiting fit, the
    // others are refused at once.
    let replies = Requests::get(url("pool", "/"))
        .header("x-echo-delay-ms", "1000")
        .header("x-echo-key", "burst")
        .times(6)
        .parallel(6)
        .send(&sleep)?;
    let mut served = 0;
    for reply in &replies {
        match reply.status {
            200 => served += 1,
            503 if reply.body == OVERFLOW_BODY => {}
            _ => bail!("neither served nor refused as overflow ({OVERFLOW_BODY:?}): {reply:?}"),
        }
    }
    println!("pool: {served} of 6 concurrent requests served");
    ensure!(
        (1..=2).contains(&served),
        "{served} of 6 concurrent requests were served with one request in flight and one \
         pending allowed: {replies:?}"
    );
    let reached = count(&echo, "burst")?;
    ensure!(
        reached == served,
        "{reached} requests reached the backend, {served} were served"
    );
    // The limits refuse only what exceeds them.
    let reply = Requests::get(url("pool", "/")).once(&sleep)?;
    ensure!(reply.status == 200, "a request after the burst: {reply:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// REGISTRY_ONLY and ServiceEntry

/// The echo backend on 9080 in namespace `outside`, without a sidecar and without a Service:
/// nothing the registry knows.
fn outside() -> String {
    outside_pods(&["outside"])
}

/// Namespace `outside` (no sidecars) with an echo backend on 9080 per name, labelled
/// `app: outside`.
fn outside_pods(names: &[&str]) -> String {
    let backend = fixture("echo_backend.py");
    let mut manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n".to_owned();
    for name in names {
        manifest += &deployment(
            "outside",
            name,
            "app: outside",
            &["python3", &backend, "9080"],
            PORT,
            &[],
        );
    }
    manifest
}

/// The demo's `client/sleep` under `outboundTrafficPolicy: REGISTRY_ONLY`, without its httpbin,
/// with `files` (name, manifest) added; every object accepted by the control plane.
fn registry_only(name: &str, files: &[(&str, String)]) -> anyhow::Result<ExampleCluster> {
    let mesh = ExampleCluster::up_with(name, |dir| {
        fs::remove_file(dir.join("httpbin.yaml"))?;
        edit_file(
            &dir.join("mesh.yaml"),
            "mode: ALLOW_ANY",
            "mode: REGISTRY_ONLY",
        )?;
        for (file, manifest) in files {
            fs::write(dir.join(file), manifest)?;
        }
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    Ok(mesh)
}

/// A ServiceEntry for `ip:9080`, as an external service's would be written.
fn service_entry(ip: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: outside, namespace: client}}
spec:
  hosts: [outside.example]
  addresses: ["{ip}"]
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: "{ip}"}}]
"#
    )
}

#[test]
fn registry_only_reaches_outside_only_through_a_service_entry() -> anyhow::Result<()> {
    let mesh = registry_only("traffic-registry", &[("outside.yaml", outside())])?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let server = mesh.pod_in("outside", "outside")?;
    ensure!(!server.sidecar, "{} has a sidecar", server.id());
    let ip = server.ip.to_string();
    let address = format!("http://{ip}:{PORT}/");

    // Not in the registry: refused by sleep's sidecar, never dialled.
    let refused = Requests::get(&address)
        .header("x-echo-key", "refused")
        .once(&sleep)?;
    ensure!(refused.status == 502, "outside the registry: {refused:?}");
    ensure!(
        count(&server, "refused")? == 0,
        "a refused request reached the server"
    );

    // A ServiceEntry puts it in the registry.
    mesh.write("outside-entry.yaml", &service_entry(&ip))?;
    let waited = wait_for("the ServiceEntry to admit the server", PROPAGATION, || {
        Ok(Requests::get(&address).once(&sleep)?.status == 200)
    })
    .with_context(|| rejections(&mesh))?;
    println!("the ServiceEntry took effect {waited:?} after it was written");
    let reply = Requests::get(&address)
        .header("x-echo-key", "admitted")
        .once(&sleep)?;
    ensure!(
        reply.status == 200 && reply.pod() == "outside-0",
        "through the ServiceEntry: {reply:?}"
    );
    ensure!(count(&server, "admitted")? == 1);
    // Only the port it lists.
    let other = Requests::get(format!("http://{ip}:{}/", PORT + 1)).once(&sleep)?;
    ensure!(
        other.status == 502,
        "a port the ServiceEntry does not list: {other:?}"
    );
    Ok(())
}

/// A ServiceEntry `api.outside.test` (virtual address 198.19.250.1) resolving the name of
/// headless Service `outside.outside` with `resolution`.
fn dns_entry(resolution: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: outside-api, namespace: client}}
spec:
  hosts: [api.outside.test]
  addresses: ["{DNS_ENTRY_VIP}"]
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: {resolution}
  endpoints: [{{address: outside.outside.svc.cluster.local}}]
"#
    )
}

const DNS_ENTRY_VIP: &str = "198.19.250.1";

/// Two echo backends without a sidecar (`outside-a`, `outside-b`) behind headless Service
/// `outside.outside`, so the name resolves to both pods.
fn outside_by_name() -> String {
    let mut manifest = outside_pods(&["outside-a", "outside-b"]);
    manifest += &format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: outside, namespace: outside}}
spec:
  clusterIP: None
  selector: {{app: outside}}
  ports: [{{name: http, port: {PORT}}}]
"#
    );
    manifest
}

/// The pods that answered `replies`, each 200.
fn answering(replies: &[Reply]) -> anyhow::Result<std::collections::BTreeSet<String>> {
    for reply in replies {
        ensure!(reply.status == 200, "{reply:?}");
    }
    Ok(replies.iter().map(Reply::pod).collect())
}

#[test]
fn dns_service_entries_reach_what_their_names_resolve_to() -> anyhow::Result<()> {
    let mesh = registry_only(
        "traffic-dns",
        &[
            ("outside.yaml", outside_by_name()),
            ("outside-entry.yaml", dns_entry("DNS")),
        ],
    )?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let both: std::collections::BTreeSet<String> =
        ["outside-a-0".to_owned(), "outside-b-0".to_owned()].into();

    // DNS: every address the name resolves to (both pods) takes requests, once both are
    // ready and the sidecar has seen them.
    let by_address = format!("http://{DNS_ENTRY_VIP}:{PORT}/");
    wait_for("the name to resolve to both pods", PROPAGATION * 4, || {
        let replies = Requests::get(&by_address)
            .times(16)
            .parallel(8)
            .send(&sleep)?;
        Ok(replies.iter().all(|r| r.status == 200) && answering(&replies)? == both)
    })?;
    let replies = Requests::get(&by_address)
        .times(80)
        .parallel(8)
        .send(&sleep)?;
    ensure!(
        answering(&replies)? == both,
        "resolution DNS balances over every address: {:?}",
        answering(&replies)?
    );
    // A request on an address outside the registry finds the entry by its Host.
    let replies = Requests::get(format!("http://198.19.250.77:{PORT}/"))
        .header("Host", &format!("api.outside.test:{PORT}"))
        .times(10)
        .send(&sleep)?;
    ensure!(
        !answering(&replies)?.is_empty(),
        "found by Host: {replies:?}"
    );

    // DNS_ROUND_ROBIN: only the first address is used.
    mesh.write("outside-entry.yaml", &dns_entry("DNS_ROUND_ROBIN"))?;
    wait_for("DNS_ROUND_ROBIN to use one address", PROPAGATION, || {
        let replies = Requests::get(&by_address).times(20).send(&sleep)?;
        Ok(answering(&replies)?.len() == 1)
    })
    .with_context(|| rejections(&mesh))?;
    let replies = Requests::get(&by_address).times(20).send(&sleep)?;
    ensure!(
        answering(&replies)?.len() == 1,
        "DNS_ROUND_ROBIN: {:?}",
        answering(&replies)?
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS origination

/// The HTTPS echo backends outside the mesh (`tls-mutual` requiring a client certificate from
/// the test CA, `tls-simple` not), each behind a headless Service of its own, with the test
/// CA's certificate for `secure.outside.test` in `certs`.
fn tls_backends(certs: &std::path::Path) -> String {
    let backend = fixture("echo_backend.py");
    let file = |name: &str| certs.join(name).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server-key.pem"), file("ca.pem"));
    let mut manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n".to_owned();
    for (name, argv) in [
        (
            "tls-mutual",
            vec!["python3", &backend, "9443", &cert, &key, &ca],
        ),
        ("tls-simple", vec!["python3", &backend, "9443", &cert, &key]),
    ] {
        manifest += &deployment("outside", name, &format!("app: {name}"), &argv, 9443, &[]);
        manifest += &format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: outside}}
spec:
  clusterIP: None
  selector: {{app: {name}}}
  ports: [{{name: https, port: 9443}}]
"#
        );
    }
    manifest
}

/// ServiceEntry `host` (plain HTTP on `vip`:80 for the app) resolving to Service `backend`'s
/// pod on 9443, and a DestinationRule originating TLS to it with `tls`.
fn originating(host: &str, vip: &str, backend: &str, tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {backend}, namespace: client}}
spec:
  hosts: [{host}]
  addresses: ["{vip}"]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9443}}]
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints: [{{address: {backend}.outside.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {backend}, namespace: client}}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
"#
    )
}

#[test]
fn destination_rules_originate_tls_to_services_outside_the_mesh() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let made = std::process::Command::new("python3")
        .arg(fixture("make_tls_cert.py"))
        .arg(certs.path())
        .arg("secure.outside.test")
        .output()?;
    ensure!(made.status.success(), "make_tls_cert.py: {made:?}");
    // The sidecar (uid 1337) reads them, as a mounted Secret would be readable.
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(certs.path(), fs::Permissions::from_mode(0o755))?;
    for file in ["ca.pem", "server.pem", "server-key.pem"] {
        fs::set_permissions(certs.path().join(file), fs::Permissions::from_mode(0o644))?;
    }
    let file = |name: &str| certs.path().join(name).display().to_string();
    let mutual = format!(
        "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}}}",
        file("server.pem"),
        file("server-key.pem"),
        file("ca.pem")
    );
    let simple = |extra: &str| {
        format!(
            "{{mode: SIMPLE, caCertificates: {}, sni: secure.outside.test{extra}}}",
            file("ca.pem")
        )
    };
    let mesh = ExampleCluster::up_with("traffic-tls", |dir| {
        fs::remove_file(dir.join("httpbin.yaml"))?;
        fs::write(dir.join("outside.yaml"), tls_backends(certs.path()))?;
        fs::write(
            dir.join("mutual.yaml"),
            originating("secure.outside.test", "198.19.250.2", "tls-mutual", &mutual),
        )?;
        fs::write(
            dir.join("simple.yaml"),
            originating(
                "simple.outside.test",
                "198.19.250.3",
                "tls-simple",
                &simple(""),
            ),
        )?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let sleep = mesh.pod_in("client", "sleep")?;

    // MUTUAL: the app speaks plain HTTP; the sidecar presents the client certificate and
    // sends the host as the server name.
    let reply = wait_for_reply(&sleep, "http://198.19.250.2/mutual")?;
    let tls = &reply.echo()?["tls"];
    ensure!(
        reply.pod() == "tls-mutual-0"
            && tls["sni"] == "secure.outside.test"
            && tls["client"] == "secure.outside.test",
        "MUTUAL: {reply:?}"
    );
    // SIMPLE: no client certificate, the `sni` set.
    let reply = wait_for_reply(&sleep, "http://198.19.250.3/simple")?;
    let tls = &reply.echo()?["tls"];
    ensure!(
        reply.pod() == "tls-simple-0"
            && tls["sni"] == "secure.outside.test"
            && tls["client"].is_null(),
        "SIMPLE: {reply:?}"
    );
    // A certificate that carries none of `subjectAltNames` is refused: nothing is sent.
    mesh.write(
        "simple.yaml",
        &originating(
            "simple.outside.test",
            "198.19.250.3",
            "tls-simple",
            &simple(", subjectAltNames: [other.outside.test]"),
        ),
    )?;
    wait_for("the server's name to be refused", PROPAGATION, || {
        Ok(Requests::get("http://198.19.250.3/refused")
            .once(&sleep)?
            .status
            == 503)
    })
    .with_context(|| rejections(&mesh))?;
    Ok(())
}

/// The first 200 reply to `GET url` from `pod`, waiting for the backend to be up and resolved.
fn wait_for_reply(pod: &LocalPod, url: &str) -> anyhow::Result<Reply> {
    let mut last = None;
    let waited = wait_for(&format!("{url} to answer"), PROPAGATION * 4, || {
        let reply = Requests::get(url).once(pod)?;
        let ok = reply.status == 200;
        last = Some(reply);
        Ok(ok)
    });
    waited.with_context(|| format!("last reply: {last:?}"))?;
    last.context("no reply")
}

// ---------------------------------------------------------------------------------------------
// GRPCRoute

const GRPC_PORT: u16 = 50051;

/// grpc_server.py as `grpc-v1` and `grpc-v2` (Services `grpc-echo-v1`, `grpc-echo-v2`) behind
/// Service `grpc-echo`, whose GRPCRoute sends method Unary to v1 and everything else to v2
/// (the catch-all written first: the more specific match wins whatever the order).
fn grpc() -> String {
    let server = fixture("grpc_server.py");
    let port = GRPC_PORT.to_string();
    let argv = ["python3", server.as_str(), port.as_str()];
    let mut manifest = SHOP.to_owned();
    manifest += &deployment(
        "shop",
        "grpc-v1",
        "app: grpc-echo, version: v1",
        &argv,
        GRPC_PORT,
        &[],
    );
    manifest += &deployment(
        "shop",
        "grpc-v2",
        "app: grpc-echo, version: v2",
        &argv,
        GRPC_PORT,
        &[],
    );
    for (name, selector) in [
        ("grpc-echo", "app: grpc-echo"),
        ("grpc-echo-v1", "app: grpc-echo, version: v1"),
        ("grpc-echo-v2", "app: grpc-echo, version: v2"),
    ] {
        manifest += &format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{{selector}}}
  ports: [{{name: grpc, port: {GRPC_PORT}, targetPort: {GRPC_PORT}}}]
"#
        );
    }
    manifest += r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc-echo, port: 50051}]
  rules:
    - backendRefs: [{name: grpc-echo-v2, port: 50051}]
    - matches: [{method: {service: remora.test.Echo, method: Unary}}]
      backendRefs: [{name: grpc-echo-v1, port: 50051}]
"#;
    manifest
}

#[test]
fn grpc_route_sends_each_method_to_its_backend() -> anyhow::Result<()> {
    let mesh = cluster("traffic-grpc", grpc())?;
    let sleep = mesh.pod_in("client", "sleep")?;
    let v1 = mesh.pod_in("shop", "grpc-v1")?;
    let v2 = mesh.pod_in("shop", "grpc-v2")?;

    // Unary, ServerStream, BidiStream and Fail, each checked by the client (trailers, status).
    let client = fixture("grpc_client.py");
    let target = format!("grpc-echo.shop:{GRPC_PORT}");
    let out = sleep
        .exec(&["python3", client.as_str(), target.as_str()])
        .context("running grpc_client.py")?;
    ensure!(
        out.status.success(),
        "grpc_client.py through the GRPCRoute ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Each backend's sidecar counts the calls it was handed.
    let calls = |pod: &LocalPod| -> anyhow::Result<f64> {
        Ok(counter(
            &sidecar_metrics(pod)?,
            "istio_requests_total",
            &[r#"reporter="destination""#, r#"request_protocol="grpc""#],
        ))
    };
    wait_for(
        "the backends' sidecars to count 4 calls",
        PROPAGATION,
        || Ok(calls(&v1)? + calls(&v2)? >= 4.0),
    )?;
    let (unary, others) = (calls(&v1)?, calls(&v2)?);
    ensure!(
        unary == 1.0 && others == 3.0,
        "grpc-v1 got {unary} calls (expected Unary only), grpc-v2 {others} (expected the 3 others)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TCP and TLS routes

const TCP_PORT: u16 = 9000;

/// tcp_name.py as `db-v1` and `db-v2` behind Service `db` (port `tcp-db`), and a VirtualService
/// whose `tls` rule sends connections for `*.v2.example` to v2 and whose `tcp` rule splits the
/// rest 70/30.
fn tcp_routes() -> String {
    let server = fixture("tcp_name.py");
    let port = TCP_PORT.to_string();
    let argv = ["python3", server.as_str(), port.as_str()];
    let mut manifest = SHOP.to_owned();
    for version in ["v1", "v2"] {
        manifest += &deployment(
            "shop",
            &format!("db-{version}"),
            &format!("app: db, version: {version}"),
            &argv,
            TCP_PORT,
            &[],
        );
    }
    manifest += &format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec:
  selector: {{app: db}}
  ports: [{{name: tcp-db, port: {TCP_PORT}, targetPort: {TCP_PORT}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec:
  host: db
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db]
  tls:
    - match: [{{port: {TCP_PORT}, sniHosts: ["*.v2.example"]}}]
      route: [{{destination: {{host: db, subset: v2}}}}]
  tcp:
    - match: [{{port: {TCP_PORT}}}]
      route:
        - {{destination: {{host: db, subset: v1}}, weight: 70}}
        - {{destination: {{host: db, subset: v2}}, weight: 30}}
"#
    );
    manifest
}

/// Which pod answered each of `count` connections from `sleep` to db, with `sni` if set.
fn tcp_answers(sleep: &LocalPod, count: usize, sni: Option<&str>) -> anyhow::Result<Vec<String>> {
    let client = fixture("tcp_name_client.py");
    let target = format!("db.shop:{TCP_PORT}");
    let count = count.to_string();
    let mut argv = vec!["python3", client.as_str(), target.as_str(), count.as_str()];
    if let Some(sni) = sni {
        argv.extend(["--sni", sni]);
    }
    let out = sleep.exec(&argv).context("running tcp_name_client.py")?;
    ensure!(
        out.status.success(),
        "tcp_name_client.py ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

#[test]
fn tcp_and_tls_routes_send_connections_by_weight_and_server_name() -> anyhow::Result<()> {
    let mesh = cluster("traffic-tcp", tcp_routes())?;
    let sleep = mesh.pod_in("client", "sleep")?;

    // TLS for a name the `tls` rule takes: always v2, whatever the weights of the `tcp` rule.
    let tls = tcp_answers(&sleep, 20, Some("orders.v2.example"))?;
    ensure!(
        tls.len() == 20 && tls.iter().all(|pod| pod == "db-v2-0"),
        "TLS for orders.v2.example: {tls:?}"
    );
    // Plain TCP, and TLS for another name: the `tcp` rule's 70/30, per connection.
    for sni in [None, Some("orders.v1.example")] {
        let answers = tcp_answers(&sleep, 300, sni)?;
        ensure!(answers.len() == 300, "{sni:?}: {answers:?}");
        let v1 = answers.iter().filter(|pod| *pod == "db-v1-0").count();
        let v2 = answers.iter().filter(|pod| *pod == "db-v2-0").count();
        ensure!(
            v1 + v2 == 300,
            "{sni:?}: answers from elsewhere: {answers:?}"
        );
        let share = v1 as f64 / 300.0;
        ensure!(
            (share - 0.7).abs() <= 0.08,
            "{sni:?}: v1 took {v1} of 300 connections, expected 70% ± 8 points"
        );
    }
    Ok(())
}
