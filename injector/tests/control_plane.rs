//! The control plane over real gRPC and TLS on loopback: the CA signs exactly the identity a
//! token proves, the discovery stream pushes a sidecar's resources in full and then only what
//! changed, authenticates sidecars
//! by certificate, and counts NACKs, and the injection webhook answers AdmissionReviews over
//! HTTPS as the API server sends them.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use prost::Message;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use remora_api::{
    proto::{
        ca::{
            istio_certificate_service_client::IstioCertificateServiceClient,
            IstioCertificateRequest,
        },
        config::{discovery_client::DiscoveryClient, Node, Push, Resource, SubscribeRequest},
    },
    resources::{Held, Parts},
};
use remora_injector::{
    config::DirectorySource,
    server::{self, CaStore, Options},
    token::{LocalTokens, TokenIssuer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request, Streaming,
};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: sleep-0
  namespace: client
  annotations: {sidecar.istio.io/status: '{}'}
spec:
  serviceAccountName: sleep
  containers: [{name: sleep, image: curl}]
status: {podIP: 198.18.0.5, phase: Running}
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 8000, targetPort: 8080}]
"#;

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

struct ControlPlane {
    grpc: SocketAddr,
    http: SocketAddr,
    webhook: SocketAddr,
    roots: String,
    tokens: TokenIssuer,
    config: tempfile::TempDir,
    _state: tempfile::TempDir,
}

async fn start() -> ControlPlane {
    let config = tempfile::tempdir().expect("config dir");
    let state = tempfile::tempdir().expect("state dir");
    std::fs::write(config.path().join("pods.yaml"), PODS).expect("write");
    std::fs::write(
        config.path().join("mesh.yaml"),
        "trustDomain: cluster.local\n",
    )
    .expect("write");
    let tokens = TokenIssuer::load_or_generate(state.path()).expect("token key");
    let verifier =
        LocalTokens::load(&TokenIssuer::public_key_path(state.path())).expect("verifier");
    let (grpc, http, webhook) = (free_port(), free_port(), free_port());
    let ca_dir = state.path().join("ca");
    tokio::spawn(server::run(
        Options {
            grpc,
            http,
            webhook,
            ca: CaStore::Directory(ca_dir.clone()),
        },
        Box::new(DirectorySource::new(vec![config.path().to_owned()])),
        verifier,
    ));
    for _ in 0..100 {
        if get(http, "/ready")
            .await
            .is_ok_and(|body| body.contains("ready"))
        {
            let roots = std::fs::read_to_string(ca_dir.join("root-cert.pem")).expect("root");
            return ControlPlane {
                grpc,
                http,
                webhook,
                roots,
                tokens,
                config,
                _state: state,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("control plane not ready");
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await?;
    Ok(body)
}

impl ControlPlane {
    async fn channel(&self, identity: Option<Identity>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .domain_name("istiod.istio-system.svc")
            .ca_certificate(Certificate::from_pem(&self.roots));
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Channel::from_shared(format!("https://{}", self.grpc))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    /// Asks the CA for `asked` with a token for `ns/sa`; returns the chain and key on success.
    async fn certificate(
        &self,
        ns: &str,
        sa: &str,
        asked: &str,
    ) -> Result<Identity, tonic::Status> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(asked.try_into().expect("uri"))];
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let token = self
            .tokens
            .mint(ns, sa, "p", Duration::from_secs(60))
            .expect("token");
        let mut request = Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 60,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let chain = IstioCertificateServiceClient::new(self.channel(None).await)
            .create_certificate(request)
            .await?
            .into_inner()
            .cert_chain;
        assert_eq!(chain.len(), 2, "leaf and root");
        assert_eq!(chain[1], self.roots);
        Ok(Identity::from_pem(&chain[0], key.serialize_pem()))
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = get(self.http, "/metrics").await.expect("metrics");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("{name} missing from {text}"))
    }
}

async fn subscribe(
    channel: Channel,
    node: Node,
) -> Result<(mpsc::Sender<SubscribeRequest>, Streaming<Push>), tonic::Status> {
    let (answers, requests) = mpsc::channel(4);
    answers
        .send(SubscribeRequest {
            node: Some(node),
            ..Default::default()
        })
        .await
        .expect("queue");
    let stream = DiscoveryClient::new(channel)
        .delta_subscribe(ReceiverStream::new(requests))
        .await?
        .into_inner();
    Ok((answers, stream))
}

/// A subscription for `client/sleep-0`, with its own certificate.
async fn subscribed_as_sleep(
    cp: &ControlPlane,
) -> (mpsc::Sender<SubscribeRequest>, Streaming<Push>) {
    let cert = cp
        .certificate(
            "client",
            "sleep",
            "spiffe://cluster.local/ns/client/sa/sleep",
        )
        .await
        .expect("cert");
    subscribe(cp.channel(Some(cert)).await, sleep_node())
        .await
        .expect("subscribed")
}

fn sleep_node() -> Node {
    Node {
        pod_name: "sleep-0".into(),
        namespace: "client".into(),
        ip: "198.18.0.5".into(),
    }
}

async fn next(stream: &mut Streaming<Push>) -> Push {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a push within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn the_ca_signs_only_what_the_token_proves() {
    let cp = start().await;
    let sleep = "spiffe://cluster.local/ns/client/sa/sleep";
    cp.certificate("client", "sleep", sleep)
        .await
        .expect("own identity signed");
    let foreign = cp
        .certificate(
            "client",
            "sleep",
            "spiffe://cluster.local/ns/istio-system/sa/istiod",
        )
        .await
        .expect_err("foreign identity refused");
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    assert!(
        foreign.message().contains("istiod"),
        "{}",
        foreign.message()
    );

    let mut request = Request::new(IstioCertificateRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer forged".parse().expect("header"));
    let unauthenticated = IstioCertificateServiceClient::new(cp.channel(None).await)
        .create_certificate(request)
        .await
        .expect_err("bad token refused");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    assert_eq!(cp.metric("citadel_server_csr_count").await, 3.0);
    assert_eq!(
        cp.metric("citadel_server_success_cert_issuance_count")
            .await,
        1.0
    );
}

#[tokio::test]
async fn discovery_pushes_changes_only_and_counts_nacks() {
    let cp = start().await;
    let (answers, mut stream) = subscribed_as_sleep(&cp).await;
    // The first push is everything: what it makes is a snapshot with no Services yet.
    let mut held = Held::default();
    let first = next(&mut stream).await;
    assert!(first.full);
    let staged = held.stage(first.clone()).expect("a whole state");
    assert!(staged.snapshot.services.is_empty());
    assert!(staged.snapshot.mesh.is_some());
    held.commit(staged);
    answers
        .send(SubscribeRequest {
            version: first.version.clone(),
            ..Default::default()
        })
        .await
        .expect("ack");

    // A second subscriber that never reads what it is sent must not hold the first one up.
    let _idle = subscribed_as_sleep(&cp).await;

    // A file that changes nothing the sidecar sees: no push.
    std::fs::write(cp.config.path().join("notes.yaml"), "# nothing\n").expect("write");
    let quiet = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await;
    assert!(quiet.is_err(), "pushed without a change: {quiet:?}");

    // A Service: only it (and its endpoints) are sent.
    let started = std::time::Instant::now();
    std::fs::write(cp.config.path().join("httpbin.yaml"), SERVICE).expect("write");
    let second = next(&mut stream).await;
    println!(
        "file change reached the subscriber in {:?}",
        started.elapsed()
    );
    assert!(!second.full);
    assert_ne!(second.version, first.version);
    assert_eq!(names(&second), HTTPBIN);
    let staged = held.stage(second.clone()).expect("applies");
    assert_eq!(staged.snapshot.services[0].addresses, ["198.19.0.10"]);
    answers
        .send(SubscribeRequest {
            version: second.version.clone(),
            error: "services[0]: not for me".into(),
            ..Default::default()
        })
        .await
        .expect("nack");
    for _ in 0..50 {
        if cp.metric("pilot_total_xds_rejects").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cp.metric("pilot_total_xds_rejects").await, 1.0);
    let syncz: serde_json::Value = serde_json::from_str(
        get(cp.http, "/debug/syncz")
            .await
            .expect("syncz")
            .split("\r\n\r\n")
            .nth(1)
            .expect("body"),
    )
    .expect("json");
    let answered = syncz
        .as_array()
        .and_then(|all| all.iter().find(|s| s["rejected"].is_object()))
        .unwrap_or_else(|| panic!("no rejection in {syncz}"));
    assert_eq!(answered["pod"], "client/sleep-0");
    assert_eq!(answered["acked"], first.version.as_str());
    assert_eq!(answered["rejected"]["version"], second.version.as_str());
    assert_eq!(answered["rejected"]["reason"], "services[0]: not for me");

    // After the NACK the sidecar still holds the first push only: the next change is computed
    // from that, so the Service is sent again, with its new port.
    std::fs::write(
        cp.config.path().join("httpbin.yaml"),
        SERVICE.replace("port: 8000", "port: 8001"),
    )
    .expect("write");
    let third = next(&mut stream).await;
    assert_eq!(names(&third), HTTPBIN);
    let staged = held.stage(third).expect("applies over the first push");
    assert_eq!(staged.snapshot.services[0].ports[0].port, 8001);
    assert_eq!(cp.metric("pilot_xds").await, 2.0);
    // Three to the first subscriber; the idle one got its first push and, not answering it,
    // nothing more.
    assert_eq!(cp.metric("pilot_xds_pushes").await, 4.0);
}

/// The resources of Service httpbin.demo.
const HTTPBIN: [&str; 2] = [
    "endpoints/httpbin.demo.svc.cluster.local",
    "service/httpbin.demo.svc.cluster.local",
];

/// The names of the resources `push` sends, in order.
fn names(push: &Push) -> Vec<String> {
    let mut names: Vec<String> = push
        .resources
        .iter()
        .map(|bytes| Resource::decode(bytes.clone()).expect("a resource").name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn discovery_refuses_sidecars_that_are_not_who_they_claim() {
    let cp = start().await;
    // No client certificate at all.
    let refused = subscribe(cp.channel(None).await, sleep_node()).await.err();
    assert_eq!(refused.map(|s| s.code()), Some(Code::Unauthenticated));

    // A valid certificate for another account, claiming the sleep pod.
    let other = cp
        .certificate(
            "client",
            "intruder",
            "spiffe://cluster.local/ns/client/sa/intruder",
        )
        .await
        .expect("cert");
    let refused = subscribe(cp.channel(Some(other)).await, sleep_node())
        .await
        .err();
    let status = refused.expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("runs as \"sleep\""),
        "{}",
        status.message()
    );

    // Another namespace.
    let demo = cp
        .certificate("demo", "sleep", "spiffe://cluster.local/ns/demo/sa/sleep")
        .await
        .expect("cert");
    let refused = subscribe(cp.channel(Some(demo)).await, sleep_node())
        .await
        .err();
    assert_eq!(refused.map(|s| s.code()), Some(Code::PermissionDenied));
}

/// POSTs `body` to `path` on the webhook over HTTPS, verifying the serving certificate as the
/// API server does (the mesh root, name `istiod.istio-system.svc`): status and body.
async fn post_review(cp: &ControlPlane, path: &str, body: &[u8]) -> (u16, String) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cp.roots.as_bytes()) {
        roots.add(cert.expect("root PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(cp.webhook)
        .await
        .expect("connect");
    let name = ServerName::try_from("istiod.istio-system.svc").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS with the serving certificate");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: istiod.istio-system.svc\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    // The server may answer (and close) before a too-large body is all sent.
    let _ = tls.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn pod_review(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "demo",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "httpbin-0", "namespace": "demo", "labels": {"app": "httpbin"}},
                "spec": {"containers": [{"name": "httpbin", "image": "kennethreitz/httpbin"}]}
            }
        }
    }))
    .expect("json")
}

/// The image of the sidecar the patch in `answer` adds.
fn patched_image(answer: &str) -> String {
    use base64::Engine as _;
    let review: serde_json::Value = serde_json::from_str(answer).expect("a review");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(review["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: serde_json::Value = serde_json::from_slice(&patch).expect("JSON patch");
    patch
        .as_array()
        .expect("operations")
        .iter()
        .find_map(|op| {
            let value = &op["value"];
            [value.clone(), value["image"].clone()]
                .into_iter()
                .chain(
                    value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| c["image"].clone()),
                )
                .find_map(|v| {
                    v.as_str()
                        .filter(|i| i.contains("proxy"))
                        .map(str::to_owned)
                })
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_webhook_injects_pods_with_the_values_in_force_and_refuses_what_is_no_review() {
    let cp = start().await;
    let (status, answer) = post_review(&cp, "/inject", &pod_review("uid-1")).await;
    assert_eq!(status, 200, "{answer}");
    let review: serde_json::Value = serde_json::from_str(&answer).expect("a review");
    assert_eq!(review["response"]["uid"], "uid-1");
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    assert!(
        patched_image(&answer).starts_with("docker.io/remora/proxy:"),
        "{answer}"
    );

    // New injection values in the config directory are used for the next review.
    std::fs::write(
        cp.config.path().join("injection.yaml"),
        "global: {hub: registry.example/mesh, tag: \"1.2\"}\n",
    )
    .expect("write");
    let mut image = String::new();
    for _ in 0..100 {
        let (_, answer) = post_review(&cp, "/inject", &pod_review("uid-2")).await;
        image = patched_image(&answer);
        if image == "registry.example/mesh/proxy:1.2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(image, "registry.example/mesh/proxy:1.2");

    let oversized = vec![b' '; 1024 * 1024 + 1];
    for (path, body, expected) in [
        ("/inject", b"{not json".to_vec(), "not an AdmissionReview"),
        ("/inject", oversized, "larger than 1048576 bytes"),
        (
            "/inject",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"}}}"#.to_vec(),
            "only admission.k8s.io/v1",
        ),
    ] {
        let (status, answer) = post_review(&cp, path, &body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(expected), "{expected:?} vs {answer}");
    }
    let (status, _) = post_review(&cp, "/other", &pod_review("uid-3")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_big_push_comes_in_parts() {
    let cp = start().await;
    let (answers, mut stream) = subscribed_as_sleep(&cp).await;
    let mut held = Held::default();
    let first = next(&mut stream).await;
    let staged = held.stage(first.clone()).expect("a whole state");
    held.commit(staged);
    answers
        .send(SubscribeRequest {
            version: first.version,
            ..Default::default()
        })
        .await
        .expect("ack");

    // Enough Services at once that the change outgrows one part (about 8 KiB).
    let services: String = (0..400)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: demo}}\n\
                 spec:\n  clusterIP: 198.19.{}.{}\n  ports: [{{name: http, port: 8000}}]\n",
                1 + i / 200,
                1 + i % 200
            )
        })
        .collect();
    std::fs::write(cp.config.path().join("services.yaml"), services).expect("write");
    let mut parts = Parts::default();
    let mut count = 0;
    let whole = loop {
        let part = next(&mut stream).await;
        count += 1;
        assert!(!part.full, "every part says what the push is");
        assert!(
            part.encoded_len() < 16 * 1024,
            "{} bytes",
            part.encoded_len()
        );
        if let Some(whole) = parts.add(part) {
            break whole;
        }
    };
    assert!(count > 1, "one part only");
    let staged = held.stage(whole).expect("the parts make one push");
    assert_eq!(staged.snapshot.services.len(), 400);
}

#[tokio::test]
async fn sidecars_that_never_answer_do_not_hold_up_the_others() {
    let cp = start().await;
    // As many as there are turns to push: each is sent its first push and never answers.
    let mut silent = Vec::new();
    for _ in 0..server::CONCURRENT_PUSHES {
        silent.push(subscribed_as_sleep(&cp).await);
    }
    // One more still gets its first push: the silent ones' turns run out.
    let (_answers, mut stream) = subscribed_as_sleep(&cp).await;
    assert!(next(&mut stream).await.full);
}
