//! The walking skeleton end to end: plain curl in one pod, httpbin in another, two Remora
//! sidecars between them over mTLS, with real iptables interception in network namespaces.

use anyhow::Context;
use remora_e2e::{
    counter,
    two_pods::{fixture, CurlResult, TwoPods, TwoPodsOptions, ECHO_PORT, HTTPBIN_PORT},
    CertOrigin,
};

const FORGED_XFCC: &str =
    "X-Forwarded-Client-Cert: By=spiffe://evil/ns/x/sa/y;URI=spiffe://cluster.local/ns/default/sa/forged";

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// curl from the client pod through both sidecars, claiming a forged client certificate.
fn curl_get(pods: &TwoPods, nonce: &str) -> anyhow::Result<CurlResult> {
    pods.curl(&pods.client, &format!("/get?n={nonce}"), &[FORGED_XFCC])
}

#[test]
fn curl_crosses_two_sidecars_over_mtls() -> anyhow::Result<()> {
    let pods = TwoPods::start("mtls", &TwoPodsOptions::default())?;
    let capture = pods.mesh.capture()?;
    let nonce = nonce();
    let response = curl_get(&pods, &nonce)?;
    let pcap = capture.finish()?;
    assert_eq!(response.status, 200, "{response:?}");

    let seen: serde_json::Value = serde_json::from_str(&response.body).context("httpbin's JSON")?;
    assert_eq!(seen["args"]["n"], nonce.as_str());
    let xfcc = seen["headers"]["X-Forwarded-Client-Cert"]
        .as_str()
        .context("httpbin saw no X-Forwarded-Client-Cert")?;
    assert_eq!(
        xfcc,
        "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert!(!xfcc.contains("forged") && !xfcc.contains("evil"));
    // The app sees the original Host, and the connection from the sidecar.
    assert_eq!(
        seen["headers"]["Host"],
        format!("{}:{HTTPBIN_PORT}", pods.server.ip).as_str()
    );
    assert_eq!(seen["origin"], "127.0.0.6");

    assert!(!pcap.bytes.is_empty(), "nothing captured on the bridge");
    assert!(
        !pcap.contains(nonce.as_bytes()),
        "the nonce crossed the bridge in clear text"
    );
    assert!(
        pcap.has_tls_client_hello(),
        "no TLS ClientHello on the bridge"
    );
    assert!(pcap.contains(b"remora"), "no mesh ALPN on the bridge");

    let client_metrics = pods.client.sidecar_metrics()?;
    let server_metrics = pods.server.sidecar_metrics()?;
    // As Istio's: the server reports the caller's mTLS, the client side `unknown`.
    let source = [
        r#"response_code="200""#,
        r#"reporter="source""#,
        r#"connection_security_policy="unknown""#,
    ];
    let destination = [
        r#"response_code="200""#,
        r#"reporter="destination""#,
        r#"connection_security_policy="mutual_tls""#,
    ];
    assert_eq!(
        counter(&client_metrics, "istio_requests_total", &source),
        1.0,
        "{client_metrics}"
    );
    assert_eq!(
        counter(&server_metrics, "istio_requests_total", &destination),
        1.0,
        "{server_metrics}"
    );

    // A port the snapshot does not list (the server sidecar's own health port) is passed
    // through untouched: plain HTTP reaches it, and neither sidecar counts it as a request.
    let capture = pods.mesh.capture()?;
    let health = format!("http://{}:15021/healthz/ready", pods.server.ip);
    let out = pods.client.run(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &health,
    ])?;
    let pcap = capture.finish()?;
    assert_eq!(out.stdout, b"200");
    assert!(
        pcap.contains(b"GET /healthz/ready"),
        "passthrough was not plain text"
    );
    let client_metrics = pods.client.sidecar_metrics()?;
    assert_eq!(
        counter(&client_metrics, "istio_requests_total", &[]),
        1.0,
        "{client_metrics}"
    );
    Ok(())
}

#[test]
fn plaintext_caller_is_accepted_and_its_forged_xfcc_dropped() -> anyhow::Result<()> {
    let pods = TwoPods::start("plain", &TwoPodsOptions::default())?;
    let legacy = pods
        .mesh
        .add_pod_without_sidecar("legacy", "default", "legacy")?;
    let response = pods.curl(&legacy, "/headers", &[FORGED_XFCC])?;
    assert_eq!(response.status, 200, "{response:?}");
    let seen: serde_json::Value = serde_json::from_str(&response.body).context("httpbin's JSON")?;
    assert!(
        seen["headers"].get("X-Forwarded-Client-Cert").is_none(),
        "a plaintext caller's XFCC reached the app: {seen}"
    );
    let server_metrics = pods.server.sidecar_metrics()?;
    assert_eq!(
        counter(
            &server_metrics,
            "istio_requests_total",
            &[
                r#"reporter="destination""#,
                r#"connection_security_policy="none""#
            ]
        ),
        1.0,
        "{server_metrics}"
    );

    // Dialing the sidecar's inbound port itself is refused instead of looping through it.
    let direct = format!("http://{}:15006/", pods.server.ip);
    let out = legacy.exec(&["curl", "-sS", "-m", "5", &direct])?;
    assert!(
        !out.status.success(),
        "a request to 15006 itself was answered"
    );
    let log = pods.mesh.log(&pods.server, "sidecar");
    assert!(
        log.contains("refusing a connection addressed to the sidecar's own port"),
        "{log}"
    );
    assert_eq!(pods.curl(&legacy, "/status/204", &[])?.status, 204);

    // A packet for another address, steered at the server pod, is redirected by iptables but not
    // relayed: the sidecar only serves its own pod's addresses.
    legacy.run(&[
        "ip",
        "route",
        "add",
        "198.19.99.99/32",
        "via",
        &pods.server.ip.to_string(),
        "dev",
        "eth0",
    ])?;
    let out = legacy.exec(&[
        "curl",
        "-sS",
        "-m",
        "5",
        "http://198.19.99.99:8000/status/200",
    ])?;
    assert!(!out.status.success(), "a foreign destination was relayed");
    let log = pods.mesh.log(&pods.server, "sidecar");
    assert!(
        log.contains("refusing an inbound connection addressed to 198.19.99.99:8000"),
        "{log}"
    );
    Ok(())
}

#[test]
fn tcp_echo_crosses_the_mesh_with_half_close() -> anyhow::Result<()> {
    let pods = TwoPods::start("echo", &TwoPodsOptions::default())?;
    let capture = pods.mesh.capture()?;
    let payload = format!("hello {}\n", nonce());
    let out = pods.client.run(&[
        "python3",
        &fixture("tcp_client.py"),
        &pods.server.ip.to_string(),
        &ECHO_PORT.to_string(),
        &payload,
    ])?;
    let pcap = capture.finish()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), payload);
    assert!(
        !pcap.contains(payload.as_bytes()),
        "echo payload crossed in clear text"
    );
    let server_metrics = pods.server.sidecar_metrics()?;
    assert_eq!(
        counter(
            &server_metrics,
            "istio_tcp_connections_closed_total",
            &[
                r#"reporter="destination""#,
                r#"connection_security_policy="mutual_tls""#
            ]
        ),
        1.0,
        "{server_metrics}"
    );
    assert_eq!(
        counter(
            &server_metrics,
            "istio_tcp_received_bytes_total",
            &[r#"reporter="destination""#]
        ),
        payload.len() as f64
    );
    Ok(())
}

/// Which sidecar is expected to refuse the mTLS connection.
enum Refuser {
    Client,
    Server,
}

/// Starts the two pods with `options`, sends one request and checks that it failed, never
/// reached the app, and that `refuser`'s sidecar logged `reason`.
fn assert_refused(
    name: &str,
    options: TwoPodsOptions,
    refuser: Refuser,
    reason: &str,
) -> anyhow::Result<()> {
    let pods = TwoPods::start(name, &options)?;
    let nonce = nonce();
    let response = curl_get(&pods, &nonce)?;
    assert_ne!(response.status, 200, "{response:?}");
    assert!(
        !pods.access_log().contains(&nonce),
        "request reached the app"
    );
    let pod = match refuser {
        Refuser::Client => &pods.client,
        Refuser::Server => &pods.server,
    };
    let log = pods.mesh.log(pod, "sidecar");
    assert!(log.contains(reason), "{log}");
    Ok(())
}

#[test]
fn client_refuses_server_with_unexpected_identity() -> anyhow::Result<()> {
    assert_refused(
        "wrongid",
        TwoPodsOptions {
            server_sa: "impostor".to_owned(),
            ..Default::default()
        },
        Refuser::Client,
        "peer is spiffe://cluster.local/ns/default/sa/impostor, \
         expected spiffe://cluster.local/ns/default/sa/httpbin",
    )
}

#[test]
fn client_refuses_server_from_foreign_root() -> anyhow::Result<()> {
    assert_refused(
        "srvroot",
        TwoPodsOptions {
            server_cert: CertOrigin::Foreign,
            ..Default::default()
        },
        Refuser::Client,
        "invalid peer certificate",
    )
}

#[test]
fn server_refuses_client_from_foreign_root() -> anyhow::Result<()> {
    assert_refused(
        "cliroot",
        TwoPodsOptions {
            client_cert: CertOrigin::Foreign,
            ..Default::default()
        },
        Refuser::Server,
        "invalid peer certificate",
    )
}

#[test]
fn istio_sidecar_mtls_is_accepted_on_the_inbound_port() -> anyhow::Result<()> {
    let pods = TwoPods::start("istioalpn", &TwoPodsOptions::default())?;
    // A caller behind an Envoy sidecar during a migration: mesh certificate, Istio's ALPN.
    let envoy = pods
        .mesh
        .add_pod_without_sidecar("envoy", "legacy", "productpage")?;
    let certs = envoy.dir.join("certs");
    pods.mesh.issue_cert("legacy", "productpage", &[], &certs)?;
    let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
    let out = envoy.run(&[
        "python3",
        &fixture("istio_client.py"),
        &pods.server.ip.to_string(),
        &HTTPBIN_PORT.to_string(),
        "/headers",
        &file("cert-chain.pem"),
        &file("key.pem"),
        &file("root-cert.pem"),
    ])?;
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).context("httpbin's JSON")?;
    assert_eq!(
        seen["headers"]["X-Forwarded-Client-Cert"],
        "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/legacy/sa/productpage"
    );
    let mtls = pods.server.sidecar_counter(
        "istio_requests_total",
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )?;
    assert_eq!(mtls, 1.0);
    Ok(())
}
