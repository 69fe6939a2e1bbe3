//! The sidecar's request path in-process, without root: a client sidecar's outbound door and a
//! server sidecar's tunnel and capture doors, with real mTLS between them on loopback, in front
//! of a real HTTP (or TCP) app. The app echoes what it received, so the tests see exactly what
//! the sidecars let through.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_api::{Snapshot, SpiffeId};
use remora_proxy::{
    drain::Drain,
    inbound::{self, Inbound},
    listen::{self, Accepted, Destination, Lifetime},
    metrics::Metrics,
    outbound::{self, Outbound},
    overload::Overload,
    testing::{SnapshotBuilder, TestCa},
    tls::MeshTls,
    tunnel::TunnelClient,
    Config,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::TcpListener,
};

#[path = "request_path/h2_abuse.rs"]
mod h2_abuse;

/// Where the app under test thinks it connects: a Service's cluster IP.
const CLUSTER_IP: &str = "198.19.0.1:8000";
const CALLER: &str = "127.0.0.1:40000";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// An HTTP app that answers every request with what it received: version, then headers.
async fn echo_app(http2: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let address = listener.local_addr().expect("app address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut seen = format!("version: {:?}\n", req.version());
                for (name, value) in req.headers() {
                    seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
            });
            let io = TokioIo::new(tcp);
            tokio::spawn(async move {
                let _ = if http2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    address
}

/// A TCP app that reads until the caller half-closes, then answers with how much it got.
async fn counting_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let address = listener.local_addr().expect("app address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if tcp.read_to_end(&mut got).await.is_ok() {
                    let _ = tcp
                        .write_all(format!("got {} bytes", got.len()).as_bytes())
                        .await;
                }
            });
        }
    });
    address
}

/// Two sidecars: `sleep`'s (outbound) and `httpbin`'s (tunnel and capture doors) in front of
/// the app at `app`.
struct Mesh {
    outbound: Arc<Outbound>,
    inbound: Arc<Inbound>,
    client_metrics: Arc<Metrics>,
    server_metrics: Arc<Metrics>,
    /// The server sidecar's config (its policies).
    server_config: Arc<Config>,
    server: SpiffeId,
    client: SpiffeId,
}

async fn mesh(snapshot: impl FnOnce(&SpiffeId) -> Snapshot) -> Mesh {
    let ca = TestCa::default();
    let (client, server) = (
        ca.identity("default", "sleep"),
        ca.identity("default", "httpbin"),
    );
    let drain = Drain::default();

    let server_metrics = Arc::new(Metrics::default());
    let server_config = Arc::new(Config::default());
    let inbound = Inbound::new(
        server.id.clone(),
        server_config.clone(),
        MeshTls::new(&server).expect("server TLS"),
        server_metrics.clone(),
        Overload::new(server_config.clone(), server_metrics.clone()),
        drain.clone(),
    );
    let tunnel = TcpListener::bind("127.0.0.1:0").await.expect("bind tunnel");
    let tunnel_port = tunnel.local_addr().expect("tunnel address").port();
    let door = inbound.clone();
    tokio::spawn(listen::accept(
        tunnel,
        "tunnel",
        Lifetime::Forever,
        Destination::Listener,
        || Some(()),
        move |accepted| inbound::tunnel::handle(door.clone(), accepted),
    ));

    let client_metrics = Arc::new(Metrics::default());
    let client_config = Arc::new(Config::new(snapshot(&server.id)));
    let outbound = Outbound::new(
        client_config.clone(),
        TunnelClient::with_port(MeshTls::new(&client).expect("client TLS"), tunnel_port),
        client_metrics.clone(),
        Overload::new(client_config, client_metrics.clone()),
        drain,
    );
    Mesh {
        outbound,
        inbound,
        client_metrics,
        server_metrics,
        server_config,
        server: server.id,
        client: client.id,
    }
}

/// One Service in front of `app`, whose sidecar is `server`; its port declares no protocol.
fn one_service(app: SocketAddr) -> impl FnOnce(&SpiffeId) -> Snapshot {
    declared(app, "")
}

impl Mesh {
    /// The app's end of a new connection to `dst`, captured by the client sidecar.
    fn dial(&self, dst: &str) -> DuplexStream {
        let (app_end, sidecar_end) = tokio::io::duplex(64 * 1024);
        let accepted = Accepted {
            client: addr(CALLER),
            orig_dst: addr(dst),
            io: sidecar_end,
        };
        tokio::spawn(outbound::handle(self.outbound.clone(), accepted));
        app_end
    }

    /// A caller's end of a new connection to the app at `app`, captured on 15006.
    fn dial_inbound(&self, app: SocketAddr) -> DuplexStream {
        let (caller_end, sidecar_end) = tokio::io::duplex(64 * 1024);
        let accepted = Accepted {
            client: addr(CALLER),
            orig_dst: app,
            io: sidecar_end,
        };
        tokio::spawn(inbound::capture::handle(self.inbound.clone(), accepted));
        caller_end
    }

    /// Sends `bytes` to `dst` through the client sidecar, half-closes, and reads all that
    /// comes back.
    async fn exchange(&self, dst: &str, bytes: &[u8]) -> Vec<u8> {
        exchange_over(self.dial(dst), bytes).await
    }

    fn xfcc(&self) -> String {
        format!("By={};URI={}", self.server, self.client)
    }
}

/// Sends `bytes` on `io`, half-closes, and reads all that comes back.
async fn exchange_over(mut io: DuplexStream, bytes: &[u8]) -> Vec<u8> {
    io.write_all(bytes).await.expect("write");
    io.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    io.read_to_end(&mut answer).await.expect("read");
    answer
}

/// A request with the headers an app could try to forge.
fn forged(version: Version) -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/get")
        .version(version)
        .header("host", "httpbin:8000")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://evil;URI=spiffe://evil",
        )
        .header("remora-dst-port", "15000")
        .header("remora-orig-proto", "HTTP/1.0")
        .body(Full::default())
        .expect("request")
}

async fn send(io: DuplexStream, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let io = TokioIo::new(io);
    let response = if req.version() == Version::HTTP_2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("response")
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The app saw the caller's version, our XFCC only, and none of the tunnel's headers.
fn assert_sanitised(seen: &str, version: &str, xfcc: Option<&str>) {
    assert!(seen.starts_with(&format!("version: {version}\n")), "{seen}");
    let xfccs: Vec<&str> = seen
        .lines()
        .filter_map(|line| line.strip_prefix("x-forwarded-client-cert: "))
        .collect();
    assert_eq!(xfccs, xfcc.into_iter().collect::<Vec<_>>(), "{seen}");
    assert!(
        !seen.contains("remora-"),
        "a tunnel header reached the app: {seen}"
    );
}

#[tokio::test]
async fn an_http1_request_reaches_the_app_through_the_tunnel_with_xfcc() {
    let app = echo_app(false).await;
    let mesh = mesh(one_service(app)).await;
    let (status, seen) = send(mesh.dial(CLUSTER_IP), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_sanitised(&seen, "HTTP/1.1", Some(&mesh.xfcc()));
    assert!(seen.contains("host: httpbin:8000\n"), "{seen}");

    let (client, server) = (mesh.client_metrics.encode(), mesh.server_metrics.encode());
    let ok = [r#"request_protocol="http""#, r#"response_code="200""#];
    let source = [
        &ok[..],
        &[
            r#"reporter="source""#,
            r#"connection_security_policy="unknown""#,
        ],
    ]
    .concat();
    assert_eq!(
        count(&client, "istio_requests_total", &source),
        1.0,
        "{client}"
    );
    let destination = [
        &ok[..],
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    ]
    .concat();
    assert_eq!(
        count(&server, "istio_requests_total", &destination),
        1.0,
        "{server}"
    );
}

#[tokio::test]
async fn an_http2_request_stays_http2_end_to_end() {
    let app = echo_app(true).await;
    let mesh = mesh(one_service(app)).await;
    let mut req = forged(Version::HTTP_2);
    *req.uri_mut() = "http://httpbin:8000/get".parse().expect("uri");
    req.headers_mut().remove("host");
    let (status, seen) = send(mesh.dial(CLUSTER_IP), req).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    // A forged remora-orig-proto did not turn the app's HTTP/2 into HTTP/1.0.
    assert_sanitised(&seen, "HTTP/2.0", Some(&mesh.xfcc()));
}

#[tokio::test]
async fn opaque_tcp_is_tunnelled_with_half_close() {
    let app = counting_app().await;
    let mesh = mesh(one_service(app)).await;
    let mut io = mesh.dial(CLUSTER_IP);
    // Not HTTP, not TLS: opaque from the first byte.
    io.write_all(b"\x00\x01opaque bytes").await.expect("write");
    io.shutdown().await.expect("half-close");
    let mut answer = String::new();
    io.read_to_string(&mut answer)
        .await
        .expect("read the answer");
    assert_eq!(answer, "got 14 bytes");
    // The app got the bytes, so both sidecars had opened their TCP records.
    let (client, server) = (mesh.client_metrics.encode(), mesh.server_metrics.encode());
    let opened = |text: &str, labels: &[&str]| {
        let tcp = [&[r#"request_protocol="tcp""#][..], labels].concat();
        count(text, "istio_tcp_connections_opened_total", &tcp)
    };
    assert_eq!(opened(&client, &[r#"reporter="source""#]), 1.0, "{client}");
    let destination = [
        r#"reporter="destination""#,
        r#"connection_security_policy="mutual_tls""#,
    ];
    assert_eq!(opened(&server, &destination), 1.0, "{server}");
}

/// The httpbin Service at the cluster IP, in front of `app`, whose sidecar is `server`.
fn httpbin(app: SocketAddr, server: &SpiffeId) -> SnapshotBuilder {
    SnapshotBuilder::default().service(
        "httpbin.default.svc.cluster.local",
        addr(CLUSTER_IP),
        &[(app, Some(server))],
    )
}

/// One Service in front of `app`, whose sidecar is `server`, its port declaring `protocol`.
fn declared(app: SocketAddr, protocol: &'static str) -> impl FnOnce(&SpiffeId) -> Snapshot {
    move |server| httpbin(app, server).declared(protocol).build()
}

#[tokio::test]
async fn a_port_declared_tcp_passes_even_an_http_request_on_as_bytes() {
    let app = counting_app().await;
    let mesh = mesh(declared(app, "tcp-db")).await;
    let answer = mesh
        .exchange(CLUSTER_IP, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(String::from_utf8_lossy(&answer), "got 27 bytes");
}

#[tokio::test]
async fn garbage_on_a_port_declared_http_gets_400_and_never_reaches_the_app() {
    let app = counting_app().await;
    for protocol in ["http", "grpc", "kubernetes.io/h2c"] {
        let mesh = mesh(declared(app, protocol)).await;
        let answer = mesh
            .exchange(CLUSTER_IP, b"\x00\x01\x02 not a request\r\n\r\n")
            .await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{protocol}: {answer}");
        // The counting app answers whatever reaches it; nothing did.
        assert!(!answer.contains("got"), "{protocol}: {answer}");
    }
}

#[tokio::test]
async fn a_cut_short_client_hello_on_a_port_declared_http_is_refused() {
    // A TLS handshake record header announcing 512 bytes, and only 4 of them.
    const CUT_SHORT: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc";
    let app = counting_app().await;
    let answer = mesh(declared(app, "http"))
        .await
        .exchange(CLUSTER_IP, CUT_SHORT)
        .await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Undeclared, the same bytes are the app's own TLS, passed on.
    let answer = mesh(one_service(app))
        .await
        .exchange(CLUSTER_IP, CUT_SHORT)
        .await;
    assert_eq!(String::from_utf8_lossy(&answer), "got 9 bytes");
}

impl Mesh {
    /// The server sidecar told that its own port `port` declares `protocol`.
    fn declare_own_port(&self, port: u16, protocol: &str) {
        let snapshot = SnapshotBuilder::default().own_port(port, protocol).build();
        self.server_config.store(snapshot);
    }

    /// Sends `bytes` to the app at `app` through the server sidecar's capture port,
    /// half-closes, and reads all that comes back.
    async fn exchange_inbound(&self, app: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        exchange_over(self.dial_inbound(app), bytes).await
    }
}

#[tokio::test]
async fn an_own_port_declared_http_holds_what_is_not_a_whole_request() {
    let app = counting_app().await;
    let mesh = mesh(one_service(app)).await;
    // Undeclared, a request line cut short is bytes for the app, as is garbage.
    let partial = mesh.exchange_inbound(app, b"GET /get?x HT").await;
    assert_eq!(String::from_utf8_lossy(&partial), "got 13 bytes");
    mesh.declare_own_port(app.port(), "http-web");
    let partial = mesh.exchange_inbound(app, b"GET /get?x HT").await;
    assert!(!String::from_utf8_lossy(&partial).contains("got"));
    let garbage = mesh
        .exchange_inbound(app, b"\x00\x01\x02 not a request\r\n\r\n")
        .await;
    let garbage = String::from_utf8_lossy(&garbage);
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(!garbage.contains("got"), "{garbage}");
    // A cut-short ClientHello is not the app's own TLS there either.
    let hello = mesh
        .exchange_inbound(app, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc")
        .await;
    assert!(hello.is_empty(), "{}", String::from_utf8_lossy(&hello));
}

#[tokio::test]
async fn an_own_port_declared_tcp_passes_an_http_request_on_as_bytes() {
    let app = counting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.declare_own_port(app.port(), "tcp");
    let answer = mesh.exchange_inbound(app, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
        .await
        .expect("an answer: served as HTTP, the request would wait for the app's response");
    assert_eq!(String::from_utf8_lossy(&answer), "got 27 bytes");
}

#[tokio::test]
async fn a_stream_to_an_own_port_declared_http_is_served_as_http() {
    // The client sidecar dials the pod's address, whose port it knows nothing about: it sniffs,
    // and sends what it cannot read as HTTP through the tunnel as bytes.
    let app = counting_app().await;
    let mesh = mesh(|server| SnapshotBuilder::default().workload(app, server).build()).await;
    let dst = app.to_string();
    let answer = mesh
        .exchange(&dst, b"\x00\x01\x02 not a request\r\n\r\n")
        .await;
    assert_eq!(String::from_utf8_lossy(&answer), "got 21 bytes");
    mesh.declare_own_port(app.port(), "http");
    let answer = mesh
        .exchange(&dst, b"\x00\x01\x02 not a request\r\n\r\n")
        .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("got"), "{answer}");
}

#[tokio::test]
async fn plaintext_on_the_capture_port_reaches_the_app_without_forged_headers() {
    let app = echo_app(false).await;
    let mesh = mesh(one_service(app)).await;
    let (status, seen) = send(mesh.dial_inbound(app), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_sanitised(&seen, "HTTP/1.1", None);
    let server = mesh.server_metrics.encode();
    let labels = [
        r#"reporter="destination""#,
        r#"response_code="200""#,
        r#"connection_security_policy="none""#,
    ];
    assert_eq!(
        count(&server, "istio_requests_total", &labels),
        1.0,
        "{server}"
    );
}

#[tokio::test]
async fn a_service_without_ready_endpoints_answers_no_healthy_upstream() {
    let mesh = mesh(|_| {
        SnapshotBuilder::default()
            .service("httpbin.default.svc.cluster.local", addr(CLUSTER_IP), &[])
            .build()
    })
    .await;
    let (status, body) = send(mesh.dial(CLUSTER_IP), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no healthy upstream");
}

#[tokio::test]
async fn registry_only_answers_outside_destinations_with_bad_gateway() {
    let mesh = mesh(|_| SnapshotBuilder::default().registry_only().build()).await;
    let (status, body) = send(mesh.dial("198.18.0.200:80"), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("REGISTRY_ONLY"), "{body}");
}

#[tokio::test]
async fn an_unreachable_endpoint_answers_envoys_503() {
    // A port nothing listens on, behind a sidecar that does.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    let mesh = mesh(one_service(closed)).await;
    let (status, body) = send(mesh.dial(CLUSTER_IP), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers: "),
        "{body}"
    );
}

/// The server sidecar's own policies, as its snapshot's JSON.
fn policies(security: serde_json::Value) -> Snapshot {
    SnapshotBuilder::default().security(security).build()
}

#[tokio::test]
async fn an_authorization_policy_decides_each_request_through_the_tunnel() {
    let app = echo_app(false).await;
    let mesh = mesh(one_service(app)).await;
    let allow = |principal: &str| {
        policies(serde_json::json!({"authorizationPolicies": [{
            "namespace": "default", "name": "allow-one",
            "rules": [{"from": [{"principals": [principal]}]}]
        }]}))
    };
    mesh.server_config
        .store(allow("cluster.local/ns/default/sa/other"));
    let (status, body) = send(mesh.dial(CLUSTER_IP), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    let server = mesh.server_metrics.encode();
    assert!(
        server.contains(r#"remora_authz_denied_total{policy="-"} 1"#),
        "{server}"
    );
    // The next request is decided by the policy in use when it arrives.
    mesh.server_config
        .store(allow("cluster.local/ns/default/sa/sleep"));
    let (status, seen) = send(mesh.dial(CLUSTER_IP), forged(Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
}

#[tokio::test]
async fn a_denied_grpc_call_gets_permission_denied() {
    let app = echo_app(true).await;
    let mesh = mesh(one_service(app)).await;
    mesh.server_config.store(policies(serde_json::json!({
        "authorizationPolicies": [{"namespace": "default", "name": "nothing"}]
    })));
    let req = Request::builder()
        .uri("http://httpbin:8000/pkg.Svc/Method")
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Full::<Bytes>::default())
        .expect("request");
    let io = TokioIo::new(mesh.dial(CLUSTER_IP));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
}

#[tokio::test]
async fn strict_refuses_plaintext_before_it_reaches_the_app() {
    let app = counting_app().await;
    let mesh = mesh(one_service(app)).await;
    mesh.server_config.store(policies(serde_json::json!({
        "peerAuthentication": {"mode": "STRICT", "policy": "default/strict"}
    })));
    let mut io = mesh.dial_inbound(app);
    io.write_all(b"\x00\x01opaque bytes").await.expect("write");
    io.shutdown().await.expect("half-close");
    let mut answer = String::new();
    // Closed by the sidecar: the app, which answers every connection, never saw this one.
    let _ = io.read_to_string(&mut answer).await;
    assert_eq!(answer, "");
    // The same connection through the tunnel (mesh mTLS) is let in.
    let mut io = mesh.dial(CLUSTER_IP);
    io.write_all(b"\x00\x01opaque bytes").await.expect("write");
    io.shutdown().await.expect("half-close");
    io.read_to_string(&mut answer).await.expect("answer");
    assert_eq!(answer, "got 14 bytes");
}

#[tokio::test]
async fn a_new_policy_closes_an_open_connection_it_denies() {
    let app = counting_app().await;
    let mesh = mesh(one_service(app)).await;
    let mut io = mesh.dial(CLUSTER_IP);
    io.write_all(b"\x00\x01opaque bytes").await.expect("write");
    // The stream is open end to end once the app has answered the tunnel's CONNECT; wait for
    // the server sidecar's record of it.
    while !mesh.server_metrics.encode().lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains(r#"reporter="destination""#)
    }) {
        tokio::task::yield_now().await;
    }
    mesh.server_config.store(policies(serde_json::json!({
        "authorizationPolicies": [{
            "namespace": "default", "name": "deny-sleep", "action": "DENY",
            "rules": [{"from": [{"principals": ["cluster.local/ns/default/sa/sleep"]}]}]
        }]
    })));
    // Without the half-close the app would never answer: the stream ends because the server
    // sidecar closed it.
    let mut answer = String::new();
    let _ = io.read_to_string(&mut answer).await;
    assert_eq!(answer, "");
}

/// What a [`body_app`] received: how many requests (connections, for an app that counts
/// those), and a signal on each.
#[derive(Default)]
struct Seen {
    requests: std::sync::atomic::AtomicUsize,
    arrived: tokio::sync::Notify,
}

impl Seen {
    fn count(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` requests arrived (a test that never sees them times out).
    async fn until(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.count() >= n {
                return;
            }
            arrived.await;
        }
    }
}

/// An HTTP app that answers with the try it saw (`x-envoy-attempt-count`) and the body it got;
/// the first `fail` requests get 503.
async fn body_app(fail: usize) -> (SocketAddr, Arc<Seen>) {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let address = listener.local_addr().expect("app address");
    let seen = Arc::new(Seen::default());
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let count = count.clone();
                async move {
                    let n = count.requests.fetch_add(1, Ordering::SeqCst);
                    count.arrived.notify_waiters();
                    let attempt = req
                        .headers()
                        .get("x-envoy-attempt-count")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let body = req.into_body().collect().await.expect("body").to_bytes();
                    let mut response = Response::new(Full::new(Bytes::from(format!(
                        "attempt {attempt}: {}",
                        String::from_utf8_lossy(&body)
                    ))));
                    if n < fail {
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (address, seen)
}

/// The Service in front of `app`, routed by a VirtualService that retries 5xx twice.
fn retrying_on_5xx(app: SocketAddr) -> impl FnOnce(&SpiffeId) -> Snapshot {
    move |server| {
        httpbin(app, server)
            .routes(serde_json::json!([{
                "kind": "VirtualService",
                "namespace": "default",
                "name": "httpbin",
                "backends": [{"host": "httpbin.default.svc.cluster.local", "port": 8000, "weight": 1}],
                "retry": {"attempts": 2, "retryOn": ["5xx"]},
            }]))
            .build()
    }
}

fn post(body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri("/anything")
        .header("host", "httpbin:8000")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

#[tokio::test]
async fn a_retry_sends_the_same_body_again_to_the_same_backend() {
    let (app, seen) = body_app(1).await;
    let mesh = mesh(retrying_on_5xx(app)).await;
    let body = "x".repeat(10_000);
    let (status, answer) = send(mesh.dial(CLUSTER_IP), post(&body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, format!("attempt 2: {body}"));
    assert_eq!(seen.count(), 2);
}

#[tokio::test]
async fn a_body_too_large_to_replay_is_sent_once() {
    let (app, seen) = body_app(1).await;
    let mesh = mesh(retrying_on_5xx(app)).await;
    let body = "y".repeat(100_000);
    let (status, answer) = send(mesh.dial(CLUSTER_IP), post(&body)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "sent once, answered once"
    );
    assert_eq!(answer, format!("attempt 1: {body}"));
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn a_mirror_gets_a_copy_of_the_body_and_the_caller_only_the_primarys_answer() {
    let (primary, _) = body_app(0).await;
    let (mirror, mirrored) = body_app(usize::MAX).await;
    let mesh = mesh(move |server| {
        SnapshotBuilder::default()
            .service("mirror.default.svc.cluster.local", addr("198.19.0.2:8000"), &[(mirror, Some(server))])
            .service(
                "httpbin.default.svc.cluster.local",
                addr(CLUSTER_IP),
                &[(primary, Some(server))],
            )
            .routes(serde_json::json!([{
                "kind": "VirtualService",
                "namespace": "default",
                "name": "httpbin",
                "backends": [{"host": "httpbin.default.svc.cluster.local", "port": 8000, "weight": 1}],
                "mirrors": [{"host": "mirror.default.svc.cluster.local", "port": 8000, "percent": 100.0}],
            }]))
            .build()
    })
    .await;
    for i in 0..5 {
        let body = format!("request {i} {}", "z".repeat(2000));
        let (status, answer) = send(mesh.dial(CLUSTER_IP), post(&body)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the mirror's 503s never reach the caller"
        );
        assert_eq!(answer, format!("attempt 1: {body}"));
    }
    // Fire-and-forget: the copies arrive on their own time.
    mirrored.until(5).await;
    assert_eq!(mirrored.count(), 5);
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
fn count(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
