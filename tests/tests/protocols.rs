//! Everything an app may speak crosses the mesh unchanged: gRPC with trailers and statuses,
//! WebSocket, protocols whose server speaks first, the app's own TLS; and all of it shares one
//! connection between the two sidecars.

use std::{thread, time::Duration};

use anyhow::{ensure, Context};
use remora_e2e::two_pods::{fixture, App, TwoPods, TwoPodsOptions, ECHO_PORT, HTTPBIN_PORT};

const GRPC_PORT: u16 = 50051;
const WS_PORT: u16 = 8765;
const GREETER_PORT: u16 = 2525;
const TLS_PORT: u16 = 8443;

fn with_apps(name: &str, apps: Vec<App>) -> anyhow::Result<TwoPods> {
    TwoPods::start(
        name,
        &TwoPodsOptions {
            extra_apps: apps,
            ..Default::default()
        },
    )
}

/// Runs a fixture client in the client pod and parses the JSON line it prints.
fn client(pods: &TwoPods, script: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let script = fixture(script);
    let mut argv = vec!["python3", script.as_str()];
    argv.extend(args);
    let out = pods.client.run(&argv)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{script} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn grpc_calls_keep_trailers_and_status() -> anyhow::Result<()> {
    let pods = with_apps(
        "grpc",
        vec![App::fixture(
            "grpc_server.py",
            GRPC_PORT,
            &[&GRPC_PORT.to_string()],
        )],
    )?;
    let target = format!("{}:{GRPC_PORT}", pods.server.ip);
    // The client itself exits non-zero on any unexpected field; check the essentials here too.
    let seen = client(&pods, "grpc_client.py", &[&target])?;
    assert_eq!(seen["unary"], "ping");
    assert_eq!(seen["unary_trailer"], "unary-ping");
    assert_eq!(
        seen["stream"],
        serde_json::json!(["item-0", "item-1", "item-2"])
    );
    assert_eq!(seen["stream_trailer"], "stream-3");
    assert_eq!(seen["bidi"], serde_json::json!(["ONE", "TWO", "THREE"]));
    assert_eq!(seen["fail_code"], "PERMISSION_DENIED");
    assert_eq!(seen["fail_details"], "denied by test");
    assert_eq!(seen["fail_trailer"], "failed");
    assert_eq!(seen["client_md"], "remora-e2e");
    // Four calls, each reported by the server sidecar as gRPC over mutual TLS.
    let grpc = pods.server.sidecar_counter(
        "istio_requests_total",
        &[
            r#"request_protocol="grpc""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )?;
    assert_eq!(grpc, 4.0);
    Ok(())
}

#[test]
fn websocket_echo_works() -> anyhow::Result<()> {
    let pods = with_apps(
        "ws",
        vec![App::fixture(
            "ws_server.py",
            WS_PORT,
            &[&WS_PORT.to_string()],
        )],
    )?;
    let url = format!("ws://{}:{WS_PORT}/echo", pods.server.ip);
    let seen = client(&pods, "ws_client.py", &[&url, "hello over the mesh"])?;
    assert_eq!(seen["text"], "hello over the mesh");
    assert_eq!(seen["binary_hex"], hex("hello over the mesh"));
    assert_eq!(seen["close_code"], 1000);
    // The server sidecar handled the handshake as HTTP: the forged header is gone, its own is set.
    assert_eq!(
        seen["xfcc"],
        "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
    );
    Ok(())
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn server_first_protocol_works() -> anyhow::Result<()> {
    let pods = with_apps(
        "greeter",
        vec![App::fixture(
            "greeter_server.py",
            GREETER_PORT,
            &[&GREETER_PORT.to_string()],
        )],
    )?;
    let seen = client(
        &pods,
        "greeter_client.py",
        &[&pods.server.ip.to_string(), &GREETER_PORT.to_string()],
    )?;
    let greeting = seen["greeting"].as_str().context("greeting")?;
    assert!(greeting.starts_with("220 remora-greeter ready "), "{seen}");
    assert_eq!(seen["bye"], "221 bye");
    Ok(())
}

#[test]
fn app_tls_reaches_the_server_untouched() -> anyhow::Result<()> {
    let certs = std::env::temp_dir().join(format!("rmr-app-tls-{}", std::process::id()));
    let certs_arg = certs.to_string_lossy().into_owned();
    let made = std::process::Command::new("python3")
        .args([
            &fixture("make_tls_cert.py"),
            &certs_arg,
            "server.remora.test",
        ])
        .output()?;
    ensure!(
        made.status.success(),
        "make_tls_cert: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
    let result = (|| -> anyhow::Result<()> {
        let pods = with_apps(
            "apptls",
            vec![App::fixture(
                "tls_server.py",
                TLS_PORT,
                &[
                    &TLS_PORT.to_string(),
                    &file("server.pem"),
                    &file("server-key.pem"),
                ],
            )],
        )?;
        let seen = client(
            &pods,
            "tls_client.py",
            &[
                &pods.server.ip.to_string(),
                &TLS_PORT.to_string(),
                &file("ca.pem"),
                "server.remora.test",
            ],
        )?;
        // The client verified the app's own certificate end to end: the very same one.
        let der = certs.join("server.der");
        let converted = std::process::Command::new("openssl")
            .args([
                "x509",
                "-in",
                &file("server.pem"),
                "-outform",
                "DER",
                "-out",
            ])
            .arg(&der)
            .status()?;
        ensure!(converted.success(), "openssl x509 failed");
        assert_eq!(seen["peer_cert_sha256"], sha256_hex(&der)?.as_str());
        assert!(
            seen["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("tls-echo: ")),
            "{seen}"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&certs);
    result
}

#[test]
fn one_connection_between_sidecars_carries_everything() -> anyhow::Result<()> {
    let pods = TwoPods::start("onecon", &TwoPodsOptions::default())?;
    let capture = pods.mesh.capture()?;
    let server = pods.server.ip.to_string();
    // A TCP echo alongside 50 concurrent HTTP/1.1 requests, each on its own app connection.
    let echo = {
        let client = pods.client.clone();
        let server = server.clone();
        thread::spawn(move || {
            client.run(&[
                "python3",
                &fixture("tcp_client.py"),
                &server,
                &ECHO_PORT.to_string(),
                "echo alongside\n",
            ])
        })
    };
    let urls: Vec<String> = (0..50)
        .map(|i| format!("http://{server}:{HTTPBIN_PORT}/headers?i={i}"))
        .collect();
    let mut argv = vec![
        "curl",
        "-sS",
        "-m",
        "20",
        "-Z",
        "--parallel-max",
        "50",
        "--parallel-immediate",
        "-H",
        "X-Custom: kept",
        "-w",
        "%{http_code} %{num_connects}\n",
    ];
    for url in &urls {
        argv.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = pods.client.run(&argv)?;
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    thread::sleep(Duration::from_millis(100));
    let pcap = capture.finish()?;

    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 50, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{lines:?}");
    // curl really used many connections on the client side.
    let app_connections: u32 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u32>().ok())
        .sum();
    assert!(app_connections > 1, "curl reused one connection: {lines:?}");
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "echo alongside\n");
    assert_eq!(
        pcap.connections("tcp")?,
        1,
        "TCP connections opened on the bridge"
    );
    assert_eq!(pcap.connections("dst port 15008")?, 1);

    // The app still sees HTTP/1.1 with the original Host and headers.
    let response = pods.curl(&pods.client, "/headers", &["X-Custom: kept"])?;
    let seen: serde_json::Value = serde_json::from_str(&response.body)?;
    assert_eq!(
        seen["headers"]["Host"],
        format!("{server}:{HTTPBIN_PORT}").as_str()
    );
    assert_eq!(seen["headers"]["X-Custom"], "kept");
    assert!(seen["headers"].get("Remora-Dst-Port").is_none(), "{seen}");
    assert!(pods.access_log().contains("\"GET /headers?i=7 HTTP/1.1\""));
    Ok(())
}

#[test]
fn a_killed_sidecar_connection_is_replaced() -> anyhow::Result<()> {
    let pods = TwoPods::start("sskill", &TwoPodsOptions::default())?;
    let capture = pods.mesh.capture()?;
    for _ in 0..3 {
        assert_eq!(pods.curl(&pods.client, "/status/200", &[])?.status, 200);
    }
    // Kill the pooled connection from the client sidecar's side, as a network fault would.
    let filter = format!("dst {} and dport = :15008", pods.server.ip);
    let killed = pods.client.run(&["ss", "-K", "-tn", &filter])?;
    assert!(
        String::from_utf8_lossy(&killed.stdout).contains(":15008"),
        "ss -K found no connection: {}",
        String::from_utf8_lossy(&killed.stdout)
    );
    for i in 0..10 {
        let response = pods.curl(&pods.client, &format!("/get?after_kill={i}"), &[])?;
        assert_eq!(
            response.status, 200,
            "request {i} after the kill: {response:?}"
        );
    }
    let pcap = capture.finish()?;
    assert_eq!(
        pcap.connections("dst port 15008")?,
        2,
        "one connection, then its replacement"
    );
    Ok(())
}

#[test]
fn large_bodies_stream_both_ways_intact() -> anyhow::Result<()> {
    const BLOB_PORT: u16 = 8088;
    const SIZE: usize = 24 * 1024 * 1024;
    let pods = with_apps(
        "bulk",
        vec![App::fixture(
            "blob_server.py",
            BLOB_PORT,
            &[&BLOB_PORT.to_string()],
        )],
    )?;
    // The same pattern blob_server.py generates, to hash on this side.
    let pattern: Vec<u8> = (0..=255u8).cycle().take(SIZE).collect();
    let upload = pods.mesh.dir().join("upload.bin");
    std::fs::write(&upload, &pattern)?;
    let expected = sha256_hex(&upload)?;
    let base = format!("http://{}:{BLOB_PORT}", pods.server.ip);

    // Upload, chunked (no length known up front), through both sidecars.
    let out = pods.client.run(&[
        "curl",
        "-sS",
        "-m",
        "60",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", upload.display()),
        &format!("{base}/sink"),
    ])?;
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(seen["length"], SIZE);
    assert_eq!(seen["sha256"], expected.as_str());

    // Download a chunked stream of the same size.
    let download = pods.mesh.dir().join("download.bin");
    pods.client.run(&[
        "curl",
        "-sS",
        "-m",
        "60",
        "-o",
        &download.to_string_lossy(),
        &format!("{base}/blob/{SIZE}"),
    ])?;
    assert_eq!(std::fs::metadata(&download)?.len(), SIZE as u64);
    assert_eq!(sha256_hex(&download)?, expected);
    Ok(())
}

fn sha256_hex(path: &std::path::Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}
