//! Dual-stack pods: the skeleton's guarantees hold over IPv6 as well (interception through
//! ip6tables, `IP6T_SO_ORIGINAL_DST`, mesh mTLS between IPv6 addresses, delivery from ::6).

use std::net::IpAddr;

use anyhow::Context;
use remora_e2e::two_pods::{fixture, TwoPods, TwoPodsOptions, ECHO_PORT};

#[test]
fn dual_stack_pods_cross_the_mesh_over_ipv6() -> anyhow::Result<()> {
    let pods = TwoPods::start(
        "ipv6",
        &TwoPodsOptions {
            dual_stack: true,
            ..Default::default()
        },
    )?;
    let server6 = IpAddr::V6(pods.server.ip6.context("server has no IPv6 address")?);
    let capture = pods.mesh.capture()?;
    let nonce = format!("{:016x}", rand::random::<u64>());
    let response = pods.curl_ip(
        &pods.client,
        server6,
        &format!("/get?n={nonce}"),
        &["X-Forwarded-Client-Cert: By=spiffe://evil/ns/x/sa/y;URI=spiffe://forged"],
    )?;
    let payload = format!("v6 echo {nonce}\n");
    let echo = pods.client.run(&[
        "python3",
        &fixture("tcp_client.py"),
        &server6.to_string(),
        &ECHO_PORT.to_string(),
        &payload,
    ])?;
    let pcap = capture.finish()?;

    assert_eq!(response.status, 200, "{response:?}");
    let seen: serde_json::Value = serde_json::from_str(&response.body)?;
    assert_eq!(seen["args"]["n"], nonce.as_str());
    assert_eq!(
        seen["headers"]["X-Forwarded-Client-Cert"],
        "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(
        seen["origin"], "::6",
        "delivered from the IPv6 passthrough source"
    );
    assert_eq!(String::from_utf8_lossy(&echo.stdout), payload);

    assert!(
        !pcap.contains(nonce.as_bytes()),
        "nonce crossed in clear text"
    );
    assert!(
        pcap.has_tls_client_hello(),
        "no TLS ClientHello on the bridge"
    );
    assert_eq!(pcap.connections("ip6 and dst port 15008")?, 1);
    assert_eq!(pcap.connections("ip and tcp")?, 0, "IPv4 was used");

    let source = pods.client.sidecar_counter(
        "istio_requests_total",
        &[r#"reporter="source""#, r#"response_code="200""#],
    )?;
    let destination = pods.server.sidecar_counter(
        "istio_requests_total",
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )?;
    assert_eq!((source, destination), (1.0, 1.0));

    // IPv4 keeps working next to it.
    assert_eq!(pods.curl(&pods.client, "/status/204", &[])?.status, 204);
    Ok(())
}
