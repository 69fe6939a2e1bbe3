//! The walking skeleton end to end: plain curl in one pod, httpbin in another, two Remora
//! sidecars between them over mTLS, with real iptables interception in network namespaces.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use remora_e2e::{CertOrigin, Mesh, Pod, SidecarOptions};

const HTTPBIN_PORT: u16 = 8000;
const ECHO_PORT: u16 = 9000;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A server pod running httpbin (and a TCP echo server) and a client pod, both with sidecars.
struct TwoPods {
    mesh: Mesh,
    server: Pod,
    client: Pod,
}

impl TwoPods {
    /// `server_sa` is the service account the server pod really runs as; the client's snapshot
    /// always expects `httpbin`.
    fn start(
        name: &str,
        server_sa: &str,
        server_cert: CertOrigin,
        client_cert: CertOrigin,
    ) -> anyhow::Result<Self> {
        let mesh = Mesh::new(name)?;
        let server = mesh.add_pod("httpbin", "default", server_sa)?;
        let client = mesh.add_pod("sleep", "default", "sleep")?;
        let access_log = server.dir.join("access.log").to_string_lossy().into_owned();
        mesh.start_app(
            &server,
            "httpbin",
            &[
                "gunicorn",
                "-b",
                "0.0.0.0:8000",
                "-w",
                "1",
                "--access-logfile",
                &access_log,
                "httpbin:app",
            ],
            HTTPBIN_PORT,
        )?;
        mesh.start_app(
            &server,
            "echo",
            &[
                "python3",
                &fixture("echo_server.py"),
                &ECHO_PORT.to_string(),
            ],
            ECHO_PORT,
        )?;
        mesh.start_sidecar(
            &server,
            &SidecarOptions {
                endpoints: vec![],
                cert: server_cert,
            },
        )?;
        let expected = remora_api::SpiffeId::new("cluster.local", "default", "httpbin")?;
        mesh.start_sidecar(
            &client,
            &SidecarOptions {
                endpoints: [HTTPBIN_PORT, ECHO_PORT]
                    .into_iter()
                    .map(|port| (SocketAddr::from((server.ip, port)), expected.clone()))
                    .collect(),
                cert: client_cert,
            },
        )?;
        Ok(Self {
            mesh,
            server,
            client,
        })
    }

    /// Plain curl from the client pod, with a forged XFCC header; returns (status, body).
    fn curl_get(&self, nonce: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{}:{HTTPBIN_PORT}/get?n={nonce}", self.server.ip);
        let out = self.client.exec(&[
            "curl", "-sS", "-m", "10", "-H",
            "X-Forwarded-Client-Cert: By=spiffe://evil/ns/x/sa/y;URI=spiffe://cluster.local/ns/default/sa/forged",
            "-w", "\n%{http_code}", &url,
        ])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.server.dir.join("access.log")).unwrap_or_default()
    }
}

/// Sum of a counter's samples whose label set contains every `label`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A TLS handshake record carrying a ClientHello (record header, then handshake type 1).
fn has_client_hello(pcap: &[u8]) -> bool {
    pcap.windows(6)
        .any(|w| w[0] == 0x16 && w[1] == 0x03 && (w[2] == 0x01 || w[2] == 0x03) && w[5] == 0x01)
}

#[test]
fn curl_crosses_two_sidecars_over_mtls() -> anyhow::Result<()> {
    let pods = TwoPods::start("mtls", "httpbin", CertOrigin::Mesh, CertOrigin::Mesh)?;
    let capture = pods.mesh.capture()?;
    let nonce = nonce();
    let (status, body) = pods.curl_get(&nonce)?;
    let pcap = capture.finish()?;
    assert_eq!(status, 200, "body: {body}");

    let seen: serde_json::Value = serde_json::from_str(&body).context("httpbin's JSON")?;
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

    assert!(!pcap.is_empty(), "nothing captured on the bridge");
    assert!(
        !contains(&pcap, nonce.as_bytes()),
        "the nonce crossed the bridge in clear text"
    );
    assert!(has_client_hello(&pcap), "no TLS ClientHello on the bridge");
    assert!(contains(&pcap, b"remora"), "no mesh ALPN on the bridge");

    let client_metrics = pods.client.sidecar_metrics()?;
    let server_metrics = pods.server.sidecar_metrics()?;
    let ok = [
        r#"response_code="200""#,
        r#"connection_security_policy="mutual_tls""#,
    ];
    let source = [&ok[..], &[r#"reporter="source""#]].concat();
    let destination = [&ok[..], &[r#"reporter="destination""#]].concat();
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
    Ok(())
}

#[test]
fn tcp_echo_crosses_the_mesh_with_half_close() -> anyhow::Result<()> {
    let pods = TwoPods::start("echo", "httpbin", CertOrigin::Mesh, CertOrigin::Mesh)?;
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
        !contains(&pcap, payload.as_bytes()),
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

#[test]
fn client_refuses_server_with_unexpected_identity() -> anyhow::Result<()> {
    let pods = TwoPods::start("wrongid", "impostor", CertOrigin::Mesh, CertOrigin::Mesh)?;
    let nonce = nonce();
    let (status, body) = pods.curl_get(&nonce)?;
    assert_ne!(status, 200, "{body}");
    assert!(
        !pods.access_log().contains(&nonce),
        "request reached the app"
    );
    let log = pods.mesh.log(&pods.client, "sidecar");
    assert!(
        log.contains("peer is spiffe://cluster.local/ns/default/sa/impostor, expected spiffe://cluster.local/ns/default/sa/httpbin"),
        "{log}"
    );
    Ok(())
}

#[test]
fn client_refuses_server_from_foreign_root() -> anyhow::Result<()> {
    let pods = TwoPods::start("srvroot", "httpbin", CertOrigin::Foreign, CertOrigin::Mesh)?;
    let nonce = nonce();
    let (status, body) = pods.curl_get(&nonce)?;
    assert_ne!(status, 200, "{body}");
    assert!(
        !pods.access_log().contains(&nonce),
        "request reached the app"
    );
    let log = pods.mesh.log(&pods.client, "sidecar");
    assert!(log.contains("invalid peer certificate"), "{log}");
    Ok(())
}

#[test]
fn server_refuses_client_from_foreign_root() -> anyhow::Result<()> {
    let pods = TwoPods::start("cliroot", "httpbin", CertOrigin::Mesh, CertOrigin::Foreign)?;
    let nonce = nonce();
    let (status, body) = pods.curl_get(&nonce)?;
    assert_ne!(status, 200, "{body}");
    assert!(
        !pods.access_log().contains(&nonce),
        "request reached the app"
    );
    let log = pods.mesh.log(&pods.server, "sidecar");
    assert!(log.contains("invalid peer certificate"), "{log}");
    Ok(())
}

/// Comparable text of a nat table: no comments, no packet counters.
fn nat_view(save: &[u8]) -> String {
    String::from_utf8_lossy(save)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.split_once(" [") {
            Some((chain, _counters)) if line.starts_with(':') => chain.to_owned(),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pod_rules_match_istio_rule_set() -> anyhow::Result<()> {
    let mesh = Mesh::new("rules")?;
    let pod = mesh.add_pod("app", "default", "app")?;
    let scratch = remora_e2e::Netns::create(&format!("rmr-rules-{}-scratch", std::process::id()))?;
    let fixture: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../init/tests/fixtures/istio-default.rules");
    let rules = std::fs::File::open(&fixture)?;
    let status = scratch
        .command(&["iptables-restore"])
        .stdin(rules)
        .status()?;
    assert!(status.success(), "loading {}", fixture.display());
    let expected = nat_view(&scratch.run(&["iptables-save", "-t", "nat"])?.stdout);
    let actual = nat_view(&pod.run(&["iptables-save", "-t", "nat"])?.stdout);
    assert!(expected.contains("ISTIO_OUTPUT"), "{expected}");
    assert_eq!(actual, expected);
    Ok(())
}
