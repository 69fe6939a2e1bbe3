//! A hostile client against the demo mesh, from a pod outside it (`client/plain`) and from the
//! meshed `client/sleep`: slow request heads and garbage sent to httpbin's port, which its
//! Service declares HTTP (`name: http`), are the sidecar's to hold or refuse and never reach
//! the app; the same bytes sent to a port no Service declares (an echo app's) pass on as the
//! app's own. A connection limit and a pending-request limit set in the pod's
//! `proxy.istio.io/config` refuse and count the connections and requests over them. Idle
//! HTTP/1 connections, used or not, cost their sidecar at most 8 KiB each, an open request at
//! most 32 KiB beyond the body it holds, and a burst of abandoned requests leaves RSS within
//! 20% of its level before.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use remora_e2e::{
    counter,
    example_cluster::{
        curl, echo_app, edit_file, ensure_accepted, sidecar_metrics, wait_for, ExampleCluster,
        ECHO_PORT, POD_WITHOUT_SIDECAR,
    },
    two_pods::fixture,
};
use remora_local::LocalPod;
use serde_json::Value;

/// The port of httpbin's container, behind the Service port named `http`.
const HTTPBIN_PORT: u16 = 8080;

/// A partial request line on each of this many connections.
const SLOW_HEADS: usize = 1000;

/// A request line that is not one.
const GARBAGE_HEX: &str = "000102206e6f742061207265717565737420200d0a0d0a";
/// A TLS handshake record header announcing 512 bytes, and only 4 of them.
const CUT_SHORT_HELLO_HEX: &str = "160301020001000100fc";

/// The demo, with the echo app and a pod outside the mesh; every object accepted.
fn cluster(name: &str) -> anyhow::Result<ExampleCluster> {
    let mesh = ExampleCluster::up_with(name, |dir| {
        // `raw`: a port name that declares nothing.
        let manifest = format!("{}{POD_WITHOUT_SIDECAR}", echo_app("raw"));
        fs::write(dir.join("hardening.yaml"), manifest)?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    Ok(mesh)
}

/// TCP connections the sidecar of `pod` opened to its app (Istio's server-side count).
fn spliced_to_app(pod: &LocalPod) -> anyhow::Result<f64> {
    Ok(counter(
        &sidecar_metrics(pod)?,
        "istio_tcp_connections_opened_total",
        &[r#"reporter="destination""#],
    ))
}

/// Runs `send_bytes.py` in `pod` against `ip:port` and parses what it reports.
fn send_bytes(pod: &LocalPod, ip: &str, port: u16, kind: &str) -> anyhow::Result<Value> {
    let script = fixture("send_bytes.py");
    let out = pod.run(&["python3", &script, ip, &port.to_string(), kind])?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "send_bytes.py {ip} {port} {kind} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Whether `send_bytes.py` got the sidecar's own 400 (an app's would have a body saying what
/// it disliked).
fn sidecar_400(sent: &Value) -> bool {
    let head = sent["head"].as_str().unwrap_or_default();
    head.starts_with("http/1.1 400 bad request") && head.contains("content-length: 0")
}

/// A fixture script running in a pod that holds connections, answering a line on its stdin
/// with a line on its stdout; killed when dropped.
struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Held {
    /// Starts `script` with `args` in `pod` and waits for its first line, which must be `ready`.
    fn start(pod: &LocalPod, script: &str, args: &[&str], ready: &str) -> anyhow::Result<Self> {
        let path = fixture(script);
        let mut argv = vec!["python3", path.as_str()];
        argv.extend(args);
        let mut child = pod
            .command(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {script}"))?;
        let stdin = child.stdin.take().context("its stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("its stdout")?);
        let mut held = Self {
            child,
            stdin,
            stdout,
        };
        let line = held.line()?;
        ensure!(line.trim() == ready, "{script}: {line:?}");
        Ok(held)
    }

    /// Sends a line, and returns the one it prints back.
    fn ask(&mut self) -> anyhow::Result<String> {
        // A write that fails means the script ended: its next line says why.
        let _ = self
            .stdin
            .write_all(b"?\n")
            .and_then(|()| self.stdin.flush());
        self.line()
    }

    /// The script's next line; what it said on stderr if it has none.
    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                err.read_to_string(&mut stderr)?;
            }
            anyhow::bail!("the script ended: {stderr}");
        }
        Ok(line)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slow_heads.py`: a partial request head on each of `count` connections to `ip:port`.
fn slow_heads(pod: &LocalPod, ip: &str, port: u16, count: usize) -> anyhow::Result<Held> {
    let (port, n) = (port.to_string(), count.to_string());
    Held::start(
        pod,
        "slow_heads.py",
        &[ip, &port, &n],
        &format!("holding {count}"),
    )
}

/// What `slow_heads.py` says became of its connections.
fn held_heads(slow: &mut Held) -> anyhow::Result<Value> {
    let line = slow.ask()?;
    serde_json::from_str(&line).with_context(|| format!("slow_heads.py printed {line:?}"))
}

#[test]
fn slow_heads_on_a_declared_http_port_are_held_by_the_sidecar() -> anyhow::Result<()> {
    let mesh = cluster("slowloris")?;
    let (plain, sleep) = (mesh.pod_in("client", "plain")?, mesh.pod("sleep")?);
    let httpbin = mesh.pod("httpbin")?;
    let ip = httpbin.ip.to_string();
    let before = sidecar_rss_kib(&httpbin)?;
    let mut slow = slow_heads(&plain, &ip, HTTPBIN_PORT, SLOW_HEADS)?;
    // Well past the sidecar's 500 ms wait for a protocol to show, while all are held, httpbin
    // (one gunicorn worker, which a single spliced connection would block) keeps answering.
    for _ in 0..10 {
        let got = curl(&sleep, "http://httpbin.demo:8000/get")?;
        ensure!(got.status == 200, "while slow heads are held: {got:?}");
        thread::sleep(Duration::from_millis(100));
    }
    let plain_get = format!("http://{ip}:{HTTPBIN_PORT}/get");
    let got = curl(&plain, &plain_get)?;
    ensure!(got.status == 200, "from outside the mesh: {got:?}");
    let held = held_heads(&mut slow)?;
    ensure!(
        held["open"] == SLOW_HEADS && held["answered"] == 0,
        "the slow heads: {held}"
    );
    ensure!(
        spliced_to_app(&httpbin)? == 0.0,
        "bytes were spliced to httpbin"
    );
    let held_kib = sidecar_rss_kib(&httpbin)?.saturating_sub(before);
    eprintln!(
        "httpbin's sidecar holding {SLOW_HEADS} slow heads: +{held_kib} KiB RSS, {} B each",
        held_kib * 1024 / SLOW_HEADS as u64
    );
    // Ten seconds after its first byte, a head not yet whole is closed.
    wait_for("the slow heads closed", Duration::from_secs(30), || {
        Ok(held_heads(&mut slow)?["closed"] == SLOW_HEADS)
    })?;
    Ok(())
}

#[test]
fn garbage_is_refused_on_http_ports_and_passed_on_undeclared_ones() -> anyhow::Result<()> {
    let mesh = cluster("garbage")?;
    let (plain, sleep) = (mesh.pod_in("client", "plain")?, mesh.pod("sleep")?);
    let (httpbin, echo) = (mesh.pod("httpbin")?, mesh.pod("echo")?);
    let (httpbin_ip, echo_ip) = (httpbin.ip.to_string(), echo.ip.to_string());
    let garbage = format!("hex:{GARBAGE_HEX}");
    let cut_short = format!("hex:{CUT_SHORT_HELLO_HEX}");
    // From outside the mesh (the capture port) and from a meshed pod by the pod's address (a
    // stream through the tunnel) and by the Service (the client sidecar's own declaration).
    for (from, ip, port) in [
        (&plain, httpbin_ip.as_str(), HTTPBIN_PORT),
        (&sleep, httpbin_ip.as_str(), HTTPBIN_PORT),
        (&sleep, "httpbin.demo", 8000),
    ] {
        let line = send_bytes(from, ip, port, &garbage)?;
        ensure!(
            sidecar_400(&line),
            "garbage from {} to {ip}:{port}: {line}",
            from.id()
        );
        let hello = send_bytes(from, ip, port, &cut_short)?;
        ensure!(
            hello["received"] == 0,
            "a cut-short ClientHello from {} to {ip}:{port}: {hello}",
            from.id()
        );
        let random = send_bytes(from, ip, port, "random:65536")?;
        // Refused while it still arrives: the 400, or a reset that overtook it.
        ensure!(
            random["received"] == 0 || sidecar_400(&random),
            "64 KiB of random bytes from {} to {ip}:{port}: {random}",
            from.id()
        );
    }
    ensure!(
        spliced_to_app(&httpbin)? == 0.0,
        "bytes were spliced to httpbin"
    );
    // The same bytes to a port nothing declares are the app's.
    for from in [&plain, &sleep] {
        for kind in [garbage.as_str(), cut_short.as_str(), "random:65536"] {
            let line = send_bytes(from, &echo_ip, ECHO_PORT, kind)?;
            ensure!(
                line["echoed"] == true,
                "{kind} from {} to the echo app: {line}",
                from.id()
            );
        }
    }
    ensure!(spliced_to_app(&echo)? >= 6.0, "the echo app's connections");
    Ok(())
}

/// The connection limit the test gives httpbin's sidecar, in place of the demo's.
const LIMIT: usize = 100;

/// The pending-request limit set on httpbin's sidecar in the same test.
const PENDING: usize = 2;

#[test]
fn connection_and_pending_request_limits_refuse_and_count_what_is_over_them() -> anyhow::Result<()>
{
    let mesh = ExampleCluster::up_with("limits", |dir| {
        fs::write(dir.join("plain.yaml"), POD_WITHOUT_SIDECAR)?;
        edit_file(
            &dir.join("httpbin.yaml"),
            "remora.listener_max_connections: \"4096\"",
            &format!(
                "remora.listener_max_connections: \"{LIMIT}\"\n            \
                 remora.listener_max_pending_requests: \"{PENDING}\""
            ),
        )
    })?;
    ensure_accepted(&mesh)?;
    let (plain, sleep) = (mesh.pod_in("client", "plain")?, mesh.pod("sleep")?);
    let httpbin = mesh.pod("httpbin")?;
    let ip = httpbin.ip.to_string();
    let refused = || -> anyhow::Result<f64> {
        Ok(counter(
            &sidecar_metrics(&httpbin)?,
            "remora_proxy_overload_connections_refused_total",
            &[r#"listener="inbound""#],
        ))
    };
    let mut slow = slow_heads(&plain, &ip, HTTPBIN_PORT, LIMIT + 50)?;
    // Each is refused as the sidecar accepts it, from the kernel's accept queue.
    wait_for(
        "connections over the limit closed",
        Duration::from_secs(10),
        || {
            let held = held_heads(&mut slow)?;
            ensure!(
                held["open"].as_u64() >= Some(LIMIT as u64),
                "too many closed: {held}"
            );
            Ok(held["open"] == LIMIT && held["closed"] == 50)
        },
    )?;
    ensure!(refused()? == 50.0, "refusals counted: {}", refused()?);
    // The tunnel is a listener of its own: the mesh's requests still get in.
    let got = curl(&sleep, "http://httpbin.demo:8000/get")?;
    ensure!(got.status == 200, "through the tunnel: {got:?}");
    // Places come back as connections end.
    drop(slow);
    wait_for(
        "a place on the capture listener",
        Duration::from_secs(10),
        || Ok(curl(&plain, &format!("http://{ip}:{HTTPBIN_PORT}/get"))?.status == 200),
    )?;
    // Requests waiting for their response head: httpbin (one worker) answers slow requests one
    // at a time, so of three sent at once two wait on the listener and the third is over its
    // limit: Envoy's 503, counted.
    let slow_url = format!("http://{ip}:{HTTPBIN_PORT}/delay/3");
    let slow: Vec<_> = (0..=PENDING)
        .map(|_| {
            let (pod, url) = (plain.clone(), slow_url.clone());
            thread::spawn(move || -> anyhow::Result<String> {
                let out = pod.exec(&["curl", "-sS", "-i", "-m", "15", url.as_str()])?;
                Ok(String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in slow {
        let answer = request
            .join()
            .map_err(|_| anyhow::anyhow!("a slow request's thread panicked"))??;
        answers.push(answer);
    }
    let overloaded = |answer: &String| {
        answer.starts_with("http/1.1 503")
            && answer.contains("x-envoy-overloaded: true")
            && answer.ends_with("envoy overloaded")
    };
    let answered = answers
        .iter()
        .filter(|a| a.starts_with("http/1.1 200"))
        .count();
    let refused = answers.iter().filter(|a| overloaded(a)).count();
    ensure!(
        answered == PENDING && refused == 1,
        "{PENDING} answered and 1 refused expected: {answers:?}"
    );
    let refused_requests = counter(
        &sidecar_metrics(&httpbin)?,
        "remora_proxy_overload_requests_refused_total",
        &[r#"listener="inbound""#],
    );
    ensure!(
        refused_requests == 1.0,
        "requests refused: {refused_requests}"
    );
    Ok(())
}

/// Resident memory of the sidecar of `pod`, in KiB.
fn sidecar_rss_kib(pod: &LocalPod) -> anyhow::Result<u64> {
    let pid = pod.sidecar_pid()?.context("no sidecar process")?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in its status")
}

/// Idle connections held open on each side of a sidecar.
const IDLE: usize = 1000;

/// What an idle HTTP/1 connection may cost its sidecar: 8 KiB. The issue asks for 16 KiB; it
/// measures about 5 KB (a connection's task, its socket), and about 9 KB while a connection's
/// task kept room for a TCP splice.
const IDLE_CONNECTION_BYTES: u64 = 8 * 1024;

#[test]
fn an_idle_http1_connection_costs_its_sidecar_at_most_8_kib() -> anyhow::Result<()> {
    let mesh = cluster("idle")?;
    let (plain, sleep, httpbin) = (
        mesh.pod_in("client", "plain")?,
        mesh.pod("sleep")?,
        mesh.pod("httpbin")?,
    );
    let got = curl(&sleep, "http://httpbin.demo:8000/get")?;
    ensure!(got.status == 200, "{got:?}");
    let ip = httpbin.ip.to_string();
    // Each side: who connects, whose sidecar is measured, and where to.
    let into_httpbin = (&plain, &httpbin, ip.as_str(), HTTPBIN_PORT);
    let out_of_sleep = (&sleep, &sleep, "httpbin.demo", 8000);
    // Connections never used first: the memory used ones give back is reused by the next.
    let cases = [
        ("into httpbin's sidecar, never used", into_httpbin, "silent"),
        ("out of sleep's sidecar, never used", out_of_sleep, "silent"),
        (
            "into httpbin's sidecar, after a request",
            into_httpbin,
            "request",
        ),
        (
            "out of sleep's sidecar, after a request",
            out_of_sleep,
            "request",
        ),
    ];
    for (what, (client, sidecar, host, port), mode) in cases {
        let before = sidecar_rss_kib(sidecar)?;
        let (port, n) = (port.to_string(), IDLE.to_string());
        let mut idle = Held::start(
            client,
            "idle_connections.py",
            &[host, &port, &n, mode],
            &format!("idle {IDLE}"),
        )?;
        // A connection silent for a second rests: hyper's buffers are let go (and jemalloc
        // purges what they took within another second). Measured once RSS holds still.
        let (mut each, mut last, mut since) = (u64::MAX, u64::MAX, Instant::now());
        let settled = wait_for(what, Duration::from_secs(15), || {
            let kib = sidecar_rss_kib(sidecar)?.saturating_sub(before);
            if kib != last {
                (last, since) = (kib, Instant::now());
            }
            each = kib * 1024 / IDLE as u64;
            Ok(each <= IDLE_CONNECTION_BYTES && since.elapsed() >= Duration::from_millis(1500))
        });
        eprintln!("{IDLE} idle connections {what}: {each} B each");
        settled.with_context(|| format!("{IDLE} idle connections {what}: {each} B each"))?;
        let line = idle.ask()?;
        let held: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
        ensure!(held["open"] == IDLE, "{what}: {held}");
    }
    Ok(())
}

/// What the allocator of the sidecar of `pod` holds live, in bytes (admin `GET /memory`).
fn allocated(pod: &LocalPod) -> anyhow::Result<u64> {
    let got = curl(pod, "http://127.0.0.1:15000/memory")?;
    ensure!(got.status == 200, "GET /memory: {got:?}");
    let memory: Value = serde_json::from_str(&got.body).with_context(|| got.body.clone())?;
    memory["allocated"]
        .as_str()
        .and_then(|bytes| bytes.parse().ok())
        .with_context(|| format!("allocated in {memory}"))
}

/// Connections through the client sidecar in the burst.
const BURST: usize = 2000;

/// The body each request of the burst sends before it stalls (`half_bodies.py`).
const HALF_BODY: u64 = 32 * 1024;

/// What an open request may cost its sidecar beyond the body it buffered: 32 KiB, as the issue
/// asks. It measures about 24 KB (hyper's buffers, its tasks sending the body into the tunnel,
/// the connection's task, the request's routing and try; see ARCHITECTURE.md); it was 37 KB
/// while each layer of a try was an `async fn` and hyper's read buffer doubled.
const OPEN_REQUEST_BYTES: u64 = 32 * 1024;

#[test]
fn memory_comes_back_after_a_burst_of_abandoned_requests() -> anyhow::Result<()> {
    let mesh = cluster("burst")?;
    let sleep = mesh.pod("sleep")?;
    // Warm: the tunnel to httpbin's sidecar is up, the sidecar's pools are made.
    for _ in 0..5 {
        let got = curl(&sleep, "http://httpbin.demo:8000/get")?;
        ensure!(got.status == 200, "{got:?}");
    }
    let (baseline, live_before) = (sidecar_rss_kib(&sleep)?, allocated(&sleep)?);
    let (n, port) = (BURST.to_string(), "8000".to_owned());
    let args = ["httpbin.demo", port.as_str(), n.as_str()];
    let mut burst = Held::start(&sleep, "half_bodies.py", &args, &format!("sent {BURST}"))?;
    // Each open request holds its 32 KiB of body (recorded, to be sent again by a retry) and
    // what its connection and request cost besides, measured once RSS holds still.
    let (mut peak, mut since) = (sidecar_rss_kib(&sleep)?, Instant::now());
    wait_for("RSS to hold still", Duration::from_secs(15), || {
        let kib = sidecar_rss_kib(&sleep)?;
        if kib != peak {
            (peak, since) = (kib, Instant::now());
        }
        Ok(since.elapsed() >= Duration::from_millis(1500))
    })?;
    let beyond_body =
        (peak.saturating_sub(baseline) * 1024 / BURST as u64).saturating_sub(HALF_BODY);
    eprintln!("{BURST} open requests with half a body sent: {beyond_body} B each beyond the body");
    ensure!(
        beyond_body <= OPEN_REQUEST_BYTES,
        "{beyond_body} B per open request beyond its body (RSS {baseline} KiB before, {peak} KiB \
         with them open)"
    );
    let dropped = burst.ask()?;
    ensure!(dropped.trim() == "dropped", "half_bodies.py: {dropped:?}");
    drop(burst);
    // Within 30 s, everything the burst allocated is freed (the tunnel connection it filled is
    // replaced by one that starts small, `pool.rs`), and the pages it took are given back
    // (jemalloc's background purge) but for what jemalloc keeps for good: the records of the
    // slabs and extents it made at the peak. The sidecar settles within 20% of its RSS before,
    // as the issue asks: about +12% in a release build 30 s on; lower in this debug build,
    // whose larger baseline (its binary) the same residue is a smaller part of.
    let mut settled = (peak, u64::MAX);
    wait_for(
        "the burst's memory given back",
        Duration::from_secs(30),
        || {
            settled = (sidecar_rss_kib(&sleep)?, allocated(&sleep)?);
            Ok(settled.0 * 10 <= baseline * 12 && settled.1 <= live_before + 1024 * 1024)
        },
    )
    .with_context(|| {
        format!(
            "RSS before {baseline} KiB, in the burst {peak} KiB, after {} KiB; allocated \
             before {live_before} B, after {} B",
            settled.0, settled.1
        )
    })?;
    let settled = settled.0;
    eprintln!(
        "sidecar RSS: {baseline} KiB before {BURST} abandoned requests, {peak} KiB with them \
         open, {settled} KiB after"
    );
    // And the sidecar still serves.
    let got = curl(&sleep, "http://httpbin.demo:8000/get")?;
    ensure!(got.status == 200, "after the burst: {got:?}");
    Ok(())
}
