//! Zero trust through the launcher, with the manifests people write: Istio's
//! AuthorizationPolicy, PeerAuthentication and RequestAuthentication in the manifests directory,
//! enforced by the called workload's sidecar, changed while the mesh runs, and explained by
//! `remoractl authz check`.
//!
//! Four clusters: HTTP authorization (the `examples/zero-trust/` teams and a small shop),
//! TCP authorization, the mTLS modes, and JWT.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use remora_e2e::{
    counter,
    example_cluster::{
        curl, echo_app, edit_file, ensure_accepted, examples_dir, rejections, sidecar_metrics,
        wait_for, ExampleCluster, ECHO_PORT, POD_WITHOUT_SIDECAR,
    },
    two_pods::{fixture, CurlResult},
    Binaries, Capture, Process,
};
use remora_local::LocalPod;
use serde_json::json;

/// How long a policy change may take to reach a sidecar (it takes about a second).
const PROPAGATION: Duration = Duration::from_secs(15);
/// Envoy's body for a request AuthorizationPolicy denies (status 403).
const DENIED: &str = "RBAC: access denied";
/// Envoy's body for a request whose JWT does not verify (status 401).
const JWT_INVALID: &str = "Jwt verification fails";
const DENIED_TOTAL: &str = "remora_authz_denied_total";
const TEAM_A_HTTPBIN: &str = "http://httpbin.team-a:8000";
const TEAM_A_CURL: &str = "spiffe://cluster.local/ns/team-a/sa/curl";
const TEAM_B_CURL: &str = "spiffe://cluster.local/ns/team-b/sa/curl";
const HTTPBIN: &str = "http://httpbin.demo:8000";

// ---------------------------------------------------------------------------------------------
// Helpers

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `curl [args...] <url>` from `pod`, as its app would (through its sidecar).
fn curl_with(pod: &LocalPod, args: &[&str], url: &str) -> anyhow::Result<CurlResult> {
    let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    argv.push(url);
    let out = pod
        .exec(&argv)
        .with_context(|| format!("running curl in {}", pod.id()))?;
    Ok(CurlResult::from_output(&out))
}

/// The answer to a request AuthorizationPolicy denies: 403 `RBAC: access denied`.
fn ensure_denied(response: &CurlResult, what: &str) -> anyhow::Result<()> {
    ensure!(
        response.status == 403 && response.body == DENIED,
        "{what}: expected 403 {DENIED:?}, got {response:?}"
    );
    Ok(())
}

fn ensure_ok(response: &CurlResult, what: &str) -> anyhow::Result<()> {
    ensure!(response.status == 200, "{what}: {response:?}");
    Ok(())
}

/// The sum of counter `name`'s samples on `pod`'s sidecar whose labels include all of
/// `labels`.
fn sidecar_counter(pod: &LocalPod, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
    Ok(counter(&sidecar_metrics(pod)?, name, labels))
}

/// Whether one line of `log` contains every one of `needles`.
fn has_line(log: &str, needles: &[&str]) -> bool {
    log.lines()
        .any(|line| needles.iter().all(|needle| line.contains(needle)))
}

/// `remoractl authz check --config-dir <dir> <args...>`, as run by a user.
fn authz_check(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let remoractl = Binaries::get()?.dir.join("remoractl");
    Command::new(&remoractl)
        .args(["authz", "check", "--config-dir"])
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("running {}", remoractl.display()))
}

/// What `remoractl authz check` prints for `method path` from `from` to workload `to`
/// (`NAMESPACE/NAME`), failing unless it succeeds.
fn explain(
    dir: &Path,
    to: &str,
    from: &str,
    method: &str,
    path: &str,
    extra: &[&str],
) -> anyhow::Result<String> {
    let mut args = vec![
        "--to", to, "--from", from, "--method", method, "--path", path,
    ];
    args.extend_from_slice(extra);
    let out = authz_check(dir, &args)?;
    ensure!(
        out.status.success(),
        "remoractl authz check {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Service `name` (port 8000 → 8080) and a Deployment `name` running httpbin as
/// ServiceAccount `name`, in `namespace`: YAML documents, each after a `---`.
fn httpbin_app(namespace: &str, name: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {namespace}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8000, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      serviceAccountName: {name}
      containers:
        - name: {name}
          image: docker.io/kennethreitz/httpbin
          command: ["gunicorn", "-b", "0.0.0.0:8080", "httpbin:app"]
          ports: [{{containerPort: 8080}}]
"#
    )
}

/// A directory for captures and logs that tcpdump (which drops to its own user) can write in.
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("rmr-zero-trust-")
        .tempdir()
        .context("creating a scratch directory")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// `remoractl authz check` on the example, no cluster needed

#[test]
fn authz_check_explains_the_zero_trust_example() -> anyhow::Result<()> {
    let dir = examples_dir().join("zero-trust");
    let cases = [
        (
            TEAM_A_CURL,
            "/get",
            "ALLOW\nby: ALLOW policy team-a/httpbin-allow-curl, rule 0\n",
        ),
        (
            TEAM_B_CURL,
            "/get",
            "DENY\nby: no ALLOW policy matched (denied by default)\n",
        ),
        (
            TEAM_A_CURL,
            "/admin/users",
            "DENY\nby: DENY policy team-a/deny-admin, rule 0\n",
        ),
        (
            "plaintext",
            "/get",
            "DENY\nby: no ALLOW policy matched (denied by default)\n",
        ),
    ];
    for (from, path, expected) in cases {
        let printed = explain(&dir, "team-a/httpbin", from, "GET", path, &[])?;
        ensure!(
            printed == expected,
            "GET {path} from {from}: printed {printed:?}, expected {expected:?}"
        );
    }
    // team-b has no policy: anyone may call its httpbin.
    let printed = explain(&dir, "team-b/httpbin", TEAM_A_CURL, "GET", "/get", &[])?;
    ensure!(
        printed.starts_with("ALLOW\n") && printed.contains("allowed by default"),
        "{printed}"
    );
    // Bad input fails, naming the flag.
    let out = authz_check(&dir, &["--to", "team-a/nothing", "--from", TEAM_A_CURL])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--to"),
        "{}: {stderr}",
        out.status
    );
    let out = authz_check(&dir, &["--to", "team-a/httpbin", "--from", "team-a/curl"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--from"),
        "{}: {stderr}",
        out.status
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP: who may call whom

/// A shop: a `sleep` front end calling `web-api`, which calls `recommendation`.
fn shop() -> String {
    let mut yaml = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio-injection: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep, namespace: shop}
spec:
  selector:
    matchLabels: {app: sleep}
  template:
    metadata:
      labels: {app: sleep}
    spec:
      serviceAccountName: sleep
      containers:
        - name: sleep
          image: curlimages/curl
          command: ["sleep", "infinity"]
"#
    .to_owned();
    yaml.push_str(&httpbin_app("shop", "web-api"));
    yaml.push_str(&httpbin_app("shop", "recommendation"));
    yaml
}

/// The shop's baseline: nothing may call anything (an ALLOW policy that matches nothing).
const SHOP_ALLOW_NOTHING: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}
"#;

/// Then each service allows its direct caller only; web-api only `GET /anything/orders` on
/// its port 8080 (httpbin answers any path under `/anything`).
const SHOP_ALLOW_CHAIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-api, namespace: shop}
spec:
  selector:
    matchLabels: {app: web-api}
  action: ALLOW
  rules:
    - from:
        - source: {principals: ["cluster.local/ns/shop/sa/sleep"]}
      to:
        - operation: {methods: ["GET"], paths: ["/anything/orders"], ports: ["8080"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: recommendation, namespace: shop}
spec:
  selector:
    matchLabels: {app: recommendation}
  action: ALLOW
  rules:
    - from:
        - source: {principals: ["cluster.local/ns/shop/sa/web-api"]}
"#;

/// Watching without enforcing, on team-a's httpbin: POSTs are audited, and a DENY of DELETE is
/// tried out in dry run.
const TEAM_A_OBSERVE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-posts, namespace: team-a}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: AUDIT
  rules:
    - to: [{operation: {methods: ["POST"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-deny-delete
  namespace: team-a
  annotations: {istio.io/dry-run: "true"}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: DENY
  rules:
    - to: [{operation: {methods: ["DELETE"]}}]
"#;

#[test]
fn authorization_policies_admit_only_the_callers_they_name() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with_dirs("zt-authz", &["zero-trust"], |dir| {
        // The zero-trust example and the shop only: not the demo app.
        fs::remove_file(dir.join("httpbin.yaml"))?;
        fs::remove_file(dir.join("sleep.yaml"))?;
        fs::write(dir.join("shop.yaml"), shop())?;
        fs::write(dir.join("shop-allow-nothing.yaml"), SHOP_ALLOW_NOTHING)?;
        fs::write(dir.join("team-a-observe.yaml"), TEAM_A_OBSERVE)?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let curl_a = mesh.pod_in("team-a", "curl")?;
    let curl_b = mesh.pod_in("team-b", "curl")?;
    let httpbin_a = mesh.pod_in("team-a", "httpbin")?;

    // team-a's httpbin answers team-a's curl, proven by mTLS...
    let get = format!("{TEAM_A_HTTPBIN}/get");
    let response = curl(&curl_a, &get)?;
    ensure_ok(&response, "team-a's curl to team-a's httpbin")?;
    ensure!(
        response.body.contains(&format!("URI={TEAM_A_CURL}")),
        "{}",
        response.body
    );
    // ...and not team-b's (no ALLOW policy matches it).
    ensure_denied(&curl(&curl_b, &get)?, "team-b's curl to team-a's httpbin")?;
    // No /admin path in team-a, whoever asks, however the path is spelled (it is normalized
    // before it is matched).
    ensure_denied(
        &curl(&curl_a, &format!("{TEAM_A_HTTPBIN}/admin/users"))?,
        "team-a's curl to /admin/users",
    )?;
    ensure_denied(
        &curl_with(
            &curl_a,
            &["--path-as-is"],
            &format!("{TEAM_A_HTTPBIN}/status/../admin"),
        )?,
        "team-a's curl to /status/../admin",
    )?;
    // team-b has no policy: its httpbin answers anyone in the mesh.
    ensure_ok(
        &curl(&curl_a, "http://httpbin.team-b:8000/get")?,
        "team-a's curl to team-b's httpbin",
    )?;
    let metrics = sidecar_metrics(&httpbin_a)?;
    let by_default = counter(&metrics, DENIED_TOTAL, &[r#"policy="-""#]);
    let by_deny = counter(&metrics, DENIED_TOTAL, &[r#"policy="team-a/deny-admin""#]);
    ensure!(
        by_default == 1.0 && by_deny == 2.0,
        "denials by default {by_default}, by team-a/deny-admin {by_deny}:\n{metrics}"
    );

    // AUDIT: counted and logged, the decision unchanged (team-a's curl may POST).
    let post = curl_with(&curl_a, &["-X", "POST"], &format!("{TEAM_A_HTTPBIN}/post"))?;
    ensure_ok(&post, "an audited POST")?;
    // A dry-run DENY: counted and logged, never enforced.
    let delete = curl_with(
        &curl_a,
        &["-X", "DELETE"],
        &format!("{TEAM_A_HTTPBIN}/delete"),
    )?;
    ensure_ok(&delete, "a DELETE a dry-run policy would deny")?;
    let metrics = sidecar_metrics(&httpbin_a)?;
    let audited = counter(
        &metrics,
        "remora_authz_audit_total",
        &[r#"policy="team-a/audit-posts""#],
    );
    let dry_run = counter(
        &metrics,
        "remora_authz_dry_run_total",
        &[r#"policy="team-a/dry-run-deny-delete""#, r#"action="DENY""#],
    );
    let enforced = counter(
        &metrics,
        DENIED_TOTAL,
        &[r#"policy="team-a/dry-run-deny-delete""#],
    );
    ensure!(
        audited == 1.0 && dry_run == 1.0 && enforced == 0.0,
        "audited {audited}, dry run {dry_run}, dry run enforced {enforced}:\n{metrics}"
    );
    wait_for(
        "the AUDIT and dry-run lines in team-a's httpbin's sidecar log",
        Duration::from_secs(5),
        || {
            let log = httpbin_a.sidecar_log();
            Ok(
                has_line(&log, &["AUDIT policy matched", "policy=team-a/audit-posts"])
                    && has_line(
                        &log,
                        &[
                            "dry-run policy matched",
                            "policy=team-a/dry-run-deny-delete",
                        ],
                    ),
            )
        },
    )
    .with_context(|| httpbin_a.sidecar_log())?;

    // `remoractl authz check` over the same manifests says what the sidecar did, and why.
    let dir = mesh.manifests();
    let cases = [
        (&curl_a, TEAM_A_CURL, "GET", "/get"),
        (&curl_b, TEAM_B_CURL, "GET", "/get"),
        (&curl_a, TEAM_A_CURL, "GET", "/admin/users"),
        (&curl_a, TEAM_A_CURL, "POST", "/post"),
        (&curl_a, TEAM_A_CURL, "DELETE", "/delete"),
    ];
    for (pod, from, method, path) in cases {
        let explanation = explain(dir, "team-a/httpbin", from, method, path, &[])?;
        let response = curl_with(pod, &["-X", method], &format!("{TEAM_A_HTTPBIN}{path}"))?;
        let verdict = if response.status == 403 {
            "DENY"
        } else {
            "ALLOW"
        };
        ensure!(
            explanation.lines().next() == Some(verdict),
            "{method} {path} from {from}: the sidecar answered {response:?}, remoractl said:\n\
             {explanation}"
        );
        ensure!(
            explanation
                .lines()
                .nth(1)
                .is_some_and(|by| by.starts_with("by: ")),
            "{explanation}"
        );
    }
    let post = explain(dir, "team-a/httpbin", TEAM_A_CURL, "POST", "/post", &[])?;
    ensure!(
        post.lines()
            .any(|line| line.starts_with("audit: team-a/audit-posts")),
        "{post}"
    );
    let delete = explain(dir, "team-a/httpbin", TEAM_A_CURL, "DELETE", "/delete", &[])?;
    ensure!(
        delete
            .lines()
            .any(|line| line.starts_with("dry-run: team-a/dry-run-deny-delete")),
        "{delete}"
    );

    // The shop: allow nothing in the namespace, then allow each service its direct caller.
    let sleep = mesh.pod_in("shop", "sleep")?;
    let web_api = mesh.pod_in("shop", "web-api")?;
    let recommendation = mesh.pod_in("shop", "recommendation")?;
    let orders = "http://web-api.shop:8000/anything/orders";
    let recommend = "http://recommendation.shop:8000/get";
    ensure_denied(&curl(&sleep, orders)?, "sleep to web-api, allow-nothing")?;
    ensure_denied(
        &curl(&web_api, recommend)?,
        "web-api to recommendation, allow-nothing",
    )?;
    ensure!(sidecar_counter(&web_api, DENIED_TOTAL, &[r#"policy="-""#])? == 1.0);

    mesh.write("shop-allow-chain.yaml", SHOP_ALLOW_CHAIN)?;
    let waited = wait_for("sleep's call to web-api to be allowed", PROPAGATION, || {
        Ok(curl(&sleep, orders)?.status == 200)
    })
    .with_context(|| rejections(&mesh))?;
    println!("the per-service ALLOW policies took effect {waited:?} after they were written");
    wait_for(
        "web-api's call to recommendation to be allowed",
        PROPAGATION,
        || Ok(curl(&web_api, recommend)?.status == 200),
    )?;
    // Only the direct caller: sleep may not skip web-api.
    ensure_denied(
        &curl(&sleep, recommend)?,
        "sleep to recommendation (not its caller)",
    )?;

    // web-api: only GET /anything/orders on port 8080, only from sleep.
    let response = curl(&sleep, orders)?;
    ensure_ok(&response, "GET /anything/orders from sleep")?;
    let seen: serde_json::Value = serde_json::from_str(&response.body).context("httpbin's JSON")?;
    ensure!(seen["method"] == "GET", "{seen}");
    ensure_denied(
        &curl_with(&sleep, &["-X", "POST"], orders)?,
        "POST /anything/orders from sleep",
    )?;
    ensure_denied(
        &curl(&sleep, "http://web-api.shop:8000/anything/payments")?,
        "GET /anything/payments from sleep",
    )?;
    ensure_denied(
        &curl(&recommendation, orders)?,
        "GET /anything/orders from recommendation",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TCP

const DENY_ECHO: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-echo, namespace: demo}
spec:
  selector:
    matchLabels: {app: echo}
  action: DENY
  rules:
    - to: [{operation: {ports: ["9000"]}}]
"#;

/// What the echo server sent back for `payload` over one new connection from `pod` (nothing
/// when the connection is refused).
fn echo_once(pod: &LocalPod, payload: &str) -> anyhow::Result<String> {
    let client = fixture("tcp_client.py");
    let port = ECHO_PORT.to_string();
    let out = pod
        .exec(&["python3", client.as_str(), "echo.demo", &port, payload])
        .with_context(|| format!("running tcp_client.py in {}", pod.id()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_tcp_deny_refuses_new_connections_and_closes_open_ones() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("zt-tcp", |dir| {
        fs::write(dir.join("echo.yaml"), echo_app("tcp-echo"))?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let sleep = mesh.pod("sleep")?;
    let echo = mesh.pod("echo")?;
    let scratch = scratch_dir()?;

    let payload = format!("hello-{}", nonce());
    let echoed = echo_once(&sleep, &payload)?;
    ensure!(echoed == payload, "before any policy: {echoed:?}");

    // One connection held open, a line echoed every 100 ms.
    let log = scratch.path().join("tcp_hold.log");
    let port = ECHO_PORT.to_string();
    let hold_client = fixture("tcp_hold.py");
    let mut hold = Process::spawn(
        "tcp_hold",
        sleep.command(&["python3", hold_client.as_str(), "echo.demo", &port]),
        &log,
    )?;
    hold.wait_until(
        "the held connection to echo to carry its first line",
        Duration::from_secs(15),
        || fs::read_to_string(&log).is_ok_and(|text| text.contains("open")),
    )?;

    // The DENY closes it...
    mesh.write("deny-echo.yaml", DENY_ECHO)?;
    let waited = wait_for("the open connection to be closed", PROPAGATION, || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stalled") || text.contains("garbled") {
            bail!("the held connection broke without being closed:\n{text}");
        }
        Ok(text.contains("closed"))
    })
    .with_context(|| {
        let text = fs::read_to_string(&log).unwrap_or_default();
        format!("tcp_hold.py printed:\n{text}\n{}", rejections(&mesh))
    })?;
    println!("the open connection was closed {waited:?} after the DENY was written");
    ensure!(
        hold.wait_timeout(Duration::from_secs(5)).is_some(),
        "tcp_hold.py still runs after reporting its connection closed"
    );

    // ...and refuses new ones before a byte reaches the server.
    let echoed = echo_once(&sleep, &format!("again-{}", nonce()))?;
    ensure!(
        echoed.is_empty(),
        "a new connection through the DENY got {echoed:?}"
    );
    let denied = sidecar_counter(&echo, DENIED_TOTAL, &[r#"policy="demo/deny-echo""#])?;
    ensure!(denied >= 1.0, "denials by demo/deny-echo: {denied}");

    // The policy selects echo only: httpbin still answers.
    ensure_ok(
        &curl(&sleep, &format!("{HTTPBIN}/get"))?,
        "sleep to httpbin",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication

/// demo's httpbin, logging every request it gets to its container log.
const GUNICORN: &str = r#"command: ["gunicorn", "-b", "0.0.0.0:8080", "httpbin:app"]"#;
const GUNICORN_LOGGING: &str =
    r#"command: ["gunicorn", "-b", "0.0.0.0:8080", "--access-logfile", "-", "httpbin:app"]"#;

/// A second httpbin in `demo` whose port 8080 does not use mesh mTLS.
const NOMTLS_POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin-nomtls, namespace: demo}
spec:
  selector:
    matchLabels: {app: httpbin-nomtls}
  portLevelMtls:
    8080: {mode: DISABLE}
"#;

/// Mesh mTLS required for every workload in `demo`.
const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec:
  mtls: {mode: STRICT}
"#;

#[test]
fn strict_refuses_plaintext_and_disable_sends_it() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("zt-mtls", |dir| {
        edit_file(&dir.join("httpbin.yaml"), GUNICORN, GUNICORN_LOGGING)?;
        fs::write(dir.join("plain.yaml"), POD_WITHOUT_SIDECAR)?;
        let nomtls = NOMTLS_POLICY.to_owned() + &httpbin_app("demo", "httpbin-nomtls");
        fs::write(dir.join("httpbin-nomtls.yaml"), nomtls)?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let sleep = mesh.pod("sleep")?;
    let plain = mesh.pod("plain")?;
    let httpbin = mesh.pod("httpbin")?;
    let nomtls = mesh.pod("httpbin-nomtls")?;
    ensure!(!plain.sidecar, "{} has a sidecar", plain.id());
    let scratch = scratch_dir()?;
    let pcap = |name: &str| scratch.path().join(name);
    let url = |n: &str| format!("{HTTPBIN}/get?n={n}");

    // DISABLE: sleep's sidecar sends the request as the app wrote it, in clear between the
    // pods, and httpbin-nomtls's sidecar hands it on as it came.
    let n = nonce();
    let capture = Capture::in_pod(&nomtls, "eth0", "tcp", &pcap("nomtls.pcap"))?;
    let response = curl(
        &sleep,
        &format!("http://httpbin-nomtls.demo:8000/get?n={n}"),
    )?;
    let captured = capture.finish()?;
    ensure_ok(&response, "sleep to httpbin-nomtls (DISABLE)")?;
    ensure!(
        captured.contains(format!("/get?n={n}").as_bytes()),
        "the request to a DISABLE port did not cross in clear ({} bytes captured)",
        captured.bytes.len()
    );
    ensure!(
        !response.body.contains("X-Forwarded-Client-Cert"),
        "a plaintext request carried a client certificate: {}",
        response.body
    );
    // The same request to a port left PERMISSIVE crosses in mTLS, sidecar to sidecar (the
    // tunnel port, 15008).
    let n = nonce();
    let capture = Capture::in_pod(&httpbin, "eth0", "tcp", &pcap("mtls.pcap"))?;
    let response = curl(&sleep, &url(&n))?;
    let captured = capture.finish()?;
    ensure_ok(&response, "sleep to httpbin (PERMISSIVE)")?;
    ensure!(
        response
            .body
            .contains("URI=spiffe://cluster.local/ns/client/sa/sleep"),
        "{}",
        response.body
    );
    let tunnel = captured.count("tcp port 15008")?;
    ensure!(
        tunnel > 0 && !captured.contains(n.as_bytes()),
        "the request crossed in clear, or not through the tunnel ({tunnel} packets on 15008)"
    );

    // PERMISSIVE (the default): a caller without a sidecar is admitted; its request reaches
    // the app over the pod's loopback and is in the app's log.
    let n = nonce();
    let capture = Capture::in_pod(&httpbin, "lo", "tcp port 8080", &pcap("permissive.pcap"))?;
    let response = curl(&plain, &url(&n))?;
    let captured = capture.finish()?;
    ensure_ok(&response, "plaintext to httpbin (PERMISSIVE)")?;
    ensure!(
        captured.contains(n.as_bytes()),
        "the loopback capture missed the request handed to the app"
    );
    wait_for(
        "httpbin to log the plaintext request",
        Duration::from_secs(5),
        || Ok(httpbin.log("httpbin").contains(&n)),
    )?;

    // STRICT: the same caller is refused before a byte reaches the app.
    mesh.write("strict.yaml", STRICT)?;
    let waited = wait_for("STRICT to refuse plaintext", PROPAGATION, || {
        Ok(curl(&plain, &url(&nonce()))?.status == 0)
    })
    .with_context(|| rejections(&mesh))?;
    println!("STRICT took effect {waited:?} after it was written");
    let n = nonce();
    let capture = Capture::in_pod(&httpbin, "lo", "tcp port 8080", &pcap("strict.pcap"))?;
    let refused = curl(&plain, &url(&n))?;
    let captured = capture.finish()?;
    ensure!(
        refused.status == 0 && refused.body.is_empty(),
        "plaintext under STRICT: {refused:?}"
    );
    let opened = captured.connections("tcp port 8080")?;
    ensure!(
        opened == 0 && !captured.contains(n.as_bytes()),
        "{opened} connection(s) to the app were opened for a refused caller"
    );
    // Callers with a sidecar are still served, and their request in the app's log shows the
    // log is current: the refused one is not in it.
    let m = nonce();
    ensure_ok(&curl(&sleep, &url(&m))?, "sleep to httpbin (STRICT)")?;
    wait_for(
        "httpbin to log the mTLS request",
        Duration::from_secs(5),
        || Ok(httpbin.log("httpbin").contains(&m)),
    )?;
    ensure!(
        !httpbin.log("httpbin").contains(&n),
        "the refused plaintext request reached httpbin"
    );
    // httpbin-nomtls's own policy (workload level) still beats the namespace's STRICT.
    ensure_ok(
        &curl(&sleep, "http://httpbin-nomtls.demo:8000/get")?,
        "sleep to httpbin-nomtls under namespace STRICT",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// RequestAuthentication

const ISSUER: &str = "https://issuer.remora.test";
const KEY_ID: &str = "zero-trust-test";

/// A JWT issuer: an ES256 key and its public half as a JSON Web Key Set.
struct Issuer {
    key: EncodingKey,
    jwks: String,
}

impl Issuer {
    fn generate() -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // The uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key_raw();
        ensure!(
            point.len() == 65 && point[0] == 4,
            "not an uncompressed P-256 point ({} bytes)",
            point.len()
        );
        let jwks = json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "kid": KEY_ID,
            "alg": "ES256",
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }]});
        Ok(Self {
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks: jwks.to_string(),
        })
    }

    /// A token for `subject` claiming to come from `issuer`, valid for an hour.
    fn sign(&self, issuer: &str, subject: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KEY_ID.to_owned());
        let claims = json!({"iss": issuer, "sub": subject, "iat": now, "exp": now + 3600});
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// demo's httpbin checks tokens from [`ISSUER`] and answers only requests that carry one.
fn jwt_policies(jwks: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: httpbin-jwt, namespace: demo}}
spec:
  selector:
    matchLabels: {{app: httpbin}}
  jwtRules:
    - issuer: "{ISSUER}"
      jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin-require-jwt, namespace: demo}}
spec:
  selector:
    matchLabels: {{app: httpbin}}
  action: ALLOW
  rules:
    - from:
        - source: {{requestPrincipals: ["*"]}}
"#
    )
}

#[test]
fn a_jwt_required_by_request_principals() -> anyhow::Result<()> {
    let issuer = Issuer::generate()?;
    let mesh = ExampleCluster::up_with("zt-jwt", |dir| {
        fs::write(dir.join("jwt.yaml"), jwt_policies(&issuer.jwks))?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let sleep = mesh.pod("sleep")?;
    let headers = format!("{HTTPBIN}/headers");
    let bearer = |token: &str| format!("Authorization: Bearer {token}");

    // A valid token: allowed, and not passed on to the app.
    let token = issuer.sign(ISSUER, "alice")?;
    let response = curl_with(&sleep, &["-H", &bearer(&token)], &headers)?;
    ensure_ok(&response, "a valid token")?;
    ensure!(
        !response.body.contains(&token),
        "the token reached the app: {}",
        response.body
    );
    // No token: unauthenticated, which the ALLOW policy does not admit.
    ensure_denied(&curl(&sleep, &headers)?, "no token")?;
    // A token that does not verify: refused before any policy is asked.
    let forged = Issuer::generate()?.sign(ISSUER, "alice")?;
    let stranger = issuer.sign("https://other.remora.test", "alice")?;
    for (what, bad) in [("a bad signature", &forged), ("another issuer", &stranger)] {
        let response = curl_with(&sleep, &["-H", &bearer(bad)], &headers)?;
        ensure!(
            response.status == 401 && response.body == JWT_INVALID,
            "{what}: expected 401 {JWT_INVALID:?}, got {response:?}"
        );
    }

    // `remoractl authz check --jwt` agrees.
    let dir = mesh.manifests();
    let sleep_id = "spiffe://cluster.local/ns/client/sa/sleep";
    let check = |jwt: &[&str]| explain(dir, "demo/httpbin", sleep_id, "GET", "/headers", jwt);
    let valid = check(&["--jwt", token.as_str()])?;
    ensure!(valid.starts_with("ALLOW\n"), "{valid}");
    let missing = check(&[])?;
    ensure!(missing.starts_with("DENY\n"), "{missing}");
    let invalid = check(&["--jwt", forged.as_str()])?;
    ensure!(
        invalid.starts_with("DENY\n") && invalid.contains(JWT_INVALID),
        "{invalid}"
    );
    Ok(())
}
