//! What each fuzz target does with one input: the parsers and decisions a hostile peer or a
//! careless manifest reaches, each with the properties that must hold whatever the bytes.
//!
//! The libFuzzer targets in `fuzz/libfuzzer/` (nightly, `cargo fuzz`) are one line each around
//! these functions, and `tests/corpora.rs` replays every file of `fuzz/corpus/<target>/` through
//! them on stable, so the corpora (and every crash found, kept there as a regression) run in CI.
//! A property that does not hold panics, which is what libFuzzer reports.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use prost::Message;
use remora_api::{
    authz::{ConnectionFacts, DecidedBy},
    proto::config as proto,
    protocol::Declared,
    resources, Logical, MeshSettings, Outcome, Security, Snapshot, SpiffeId,
};
use remora_injector::{
    config::Catalog,
    inject::{
        admission::{self, PathParams},
        Injector, Values,
    },
};
use remora_proxy::{
    body,
    detect::{self, Protocol},
    drain::Drain,
    prefixed::PrefixedIo,
    serve, tls, tunnel,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    runtime::Runtime,
};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: [(&str, Target); 8] = [
    ("detect", detect),
    ("http1_head", http1_head),
    ("tunnel_headers", tunnel_headers),
    ("snapshot", snapshot),
    ("yaml_objects", yaml_objects),
    ("admission_review", admission_review),
    ("authz", authz),
    ("route", route),
];

/// One runtime for every input (making one per input would be most of the work).
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Protocol detection on a connection whose first bytes are `data` (and then end): whatever
/// the port declares, every byte read is handed on, none lost or repeated.
pub fn detect(data: &[u8]) {
    const WAIT: Duration = Duration::from_millis(1);
    runtime().block_on(async {
        let declarations = [
            Declared::Undeclared,
            Declared::Http,
            Declared::Tls,
            Declared::Tcp,
        ];
        for declared in declarations {
            let detected = detect::detect_declared(data, declared, WAIT)
                .await
                .expect("reading memory");
            assert_replayed(detected.io, data).await;
            for takes_mtls in [true, false] {
                let detected = detect::detect_inbound(data, declared, takes_mtls, WAIT)
                    .await
                    .expect("reading memory");
                assert!(declared != Declared::Tcp || detected.protocol != Protocol::Http1);
                assert_replayed(detected.io, data).await;
            }
        }
        let (_, io) = tls::client_hello(PrefixedIo::unread(data), WAIT)
            .await
            .expect("reading memory");
        assert_replayed(io, data).await;
    });
}

async fn assert_replayed(mut io: PrefixedIo<&[u8]>, data: &[u8]) {
    let mut replayed = Vec::with_capacity(data.len());
    io.read_to_end(&mut replayed).await.expect("reading memory");
    assert_eq!(replayed, data, "detection lost or repeated bytes");
}

/// `data` as what a client sends the sidecar's HTTP/1 server before closing its side: the
/// sidecar answers with HTTP/1 responses or nothing.
pub fn http1_head(data: &[u8]) {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let service = tower::service_fn(|_: Request<_>| async {
            Ok::<_, Infallible>(Response::new(body::empty()))
        });
        let served = tokio::spawn(async move {
            let _ = serve::http1(server, &Drain::default(), service).await;
        });
        let (mut read, mut write) = tokio::io::split(&mut client);
        let sent = async {
            // The server may stop reading (a request it refused): what is left goes unsent.
            let _ = write.write_all(data).await;
            let _ = write.shutdown().await;
        };
        let mut answer = Vec::new();
        let received = read.read_to_end(&mut answer);
        let ((), received) = tokio::join!(sent, received);
        received.expect("reading the answer");
        served.await.expect("the server task");
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1."),
            "answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(64)])
        );
    });
}

/// `name: value` lines of `data` as headers (lines that are not valid headers are skipped).
fn headers(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    headers
}

/// The tunnel's own headers, as a peer (or a forger) might send them: read only when valid,
/// and gone once stripped.
pub fn tunnel_headers(data: &[u8]) {
    let mut headers = headers(data);
    if let Some(port) = tunnel::dst_port(&headers) {
        let text = headers[tunnel::DST_PORT].to_str().expect("a port is text");
        assert_eq!(text.trim().parse::<u16>().ok(), Some(port));
    }
    let _ = tunnel::orig_proto(&headers);
    tunnel::strip_mesh(&mut headers);
    assert!(!headers.contains_key(tunnel::DST_PORT));
    assert!(!headers.contains_key(tunnel::ORIG_PROTO));
}

/// `data` as a pushed snapshot and as one discovery resource: decoded and checked, refused
/// with a reason or taken, never a panic.
pub fn snapshot(data: &[u8]) {
    if let Ok(wire) = proto::Snapshot::decode(data) {
        if let Err(error) = Snapshot::try_from(wire) {
            assert!(!error.to_string().is_empty());
        }
    }
    if let Ok(resource) = proto::Resource::decode(data) {
        if let Ok(assembled) = resources::assemble([Ok(resource)]) {
            let _ = Snapshot::try_from(assembled);
        }
    }
}

/// `data` as a manifest file the control plane reads: whatever it holds, each rejection
/// names what it rejected.
pub fn yaml_objects(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = Catalog::build(vec![("/fuzz/objects.yaml".to_owned(), text.to_owned())]);
    for rejection in &catalog.rejected {
        assert!(!rejection.object.is_empty() && !rejection.reason.is_empty());
    }
}

/// `data` as the body of an AdmissionReview sent to the injection webhook: an answer, or an
/// error that says what was wrong.
pub fn admission_review(data: &[u8]) {
    static INJECTOR: OnceLock<Injector> = OnceLock::new();
    let injector =
        INJECTOR.get_or_init(|| Injector::new(Values::default(), None).expect("the defaults"));
    match admission::review(injector, data, &PathParams::default()) {
        Ok(answer) => assert!(answer.get("response").is_some(), "{answer}"),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// `data` as a request: its first line the method, its second the URI, the rest headers;
/// `None` when the first two are not valid.
fn request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let method = Method::from_bytes(lines.next()?).ok()?;
    let uri = Uri::try_from(lines.next()?).ok()?;
    let mut req = Request::builder().method(method).uri(uri).body(()).ok()?;
    *req.headers_mut() = headers(lines.next().unwrap_or_default());
    Some(req)
}

/// Policies of every kind a workload can have: allow by path, method, principal, header and
/// JWT claim; deny by path; normalization and JWT verification on the way.
const POLICIES: &str = r#"{
  "authorizationPolicies": [
    {"namespace": "demo", "name": "allow", "action": "ALLOW", "rules": [
      {"from": [{"principals": ["cluster.local/ns/client/sa/*"], "notNamespaces": ["evil"]}],
       "to": [{"paths": ["/get", "/status/*", "*/anything"], "methods": ["GET", "POST"],
               "notPorts": ["9090"], "hosts": ["httpbin*"]}],
       "when": [{"key": "request.headers[x-user]", "values": ["alice", "b*"]},
                {"key": "source.ip", "notValues": ["198.18.0.0/24"]}]},
      {"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]}
    ]},
    {"namespace": "demo", "name": "deny", "action": "DENY", "rules": [
      {"to": [{"paths": ["/admin*"]}]},
      {"when": [{"key": "remote.ip", "values": ["203.0.113.0/24"]}]}
    ]}
  ]
}"#;

/// `data` as a request to a workload with `POLICIES`, from a mesh peer and from a caller
/// in the clear: a decision, never a panic, and one whose verdict agrees with what decided it.
pub fn authz(data: &[u8]) {
    static SECURITY: OnceLock<Security> = OnceLock::new();
    let security = SECURITY.get_or_init(|| {
        let source: proto::Security = serde_json::from_str(POLICIES).expect("valid policies");
        Security::compile(&source).expect("policies that compile")
    });
    let Some(req) = request(data) else {
        return;
    };
    let peer = SpiffeId::new("cluster.local", "client", "sleep").expect("an identity");
    let mesh = MeshSettings {
        num_trusted_proxies: 1,
        ..MeshSettings::default()
    };
    for peer in [Some(&peer), None] {
        let conn = ConnectionFacts {
            peer,
            source: SocketAddr::from(([198, 18, 0, 7], 40000)),
            destination: SocketAddr::from(([198, 18, 0, 9], 8080)),
            sni: None,
        };
        let mut req = req.clone();
        match security.check_request(&mesh, &conn, &mut req) {
            Outcome::Denied(decision) => assert!(
                !matches!(decision.by, DecidedBy::Allow(_) | DecidedBy::NoAllowPolicy),
                "denied by {:?}",
                decision.by
            ),
            Outcome::Allowed(Some(decision)) => assert!(
                matches!(decision.by, DecidedBy::Allow(_) | DecidedBy::NoAllowPolicy),
                "allowed by {:?}",
                decision.by
            ),
            _ => {}
        }
    }
}

/// A Service whose port routes by path, method, header, query and authority, to one of two
/// other Services.
const ROUTED: &str = r#"{
  "services": [
    {"hostname": "web.demo.svc.cluster.local", "addresses": ["198.19.0.1"], "ports": [
      {"port": 80, "name": "http", "httpRoutes": [
        {"kind": "VirtualService", "namespace": "demo", "name": "web", "matches": [
          {"path": {"kind": {"prefix": "/api"}}, "method": "POST",
           "headers": [{"name": "x-canary", "value": {"kind": {"exact": "true"}}}]},
          {"path": {"kind": {"regex": "/v[0-9]+/.*"}, "ignoreCase": true},
           "queryParams": [{"name": "debug", "value": {"kind": {"exact": "1"}}, "invert": true}]},
          {"authority": {"kind": {"prefix": "web."}},
           "path": {"kind": {"pathPrefix": "/static"}}}
        ], "backends": [{"host": "canary.demo.svc.cluster.local", "port": 80, "weight": 1}]},
        {"kind": "VirtualService", "namespace": "demo", "name": "web",
         "backends": [{"host": "stable.demo.svc.cluster.local", "port": 80, "weight": 1}]}
      ]}
    ]},
    {"hostname": "canary.demo.svc.cluster.local", "addresses": ["198.19.0.2"],
     "ports": [{"port": 80, "name": "http"}]},
    {"hostname": "stable.demo.svc.cluster.local", "addresses": ["198.19.0.3"],
     "ports": [{"port": 80, "name": "http"}]}
  ]
}"#;

/// `data` as a request to a Service routed by `ROUTED`: the last route matches everything,
/// so every request is routed.
pub fn route(data: &[u8]) {
    static SNAPSHOT: OnceLock<Arc<Snapshot>> = OnceLock::new();
    let snapshot = SNAPSHOT.get_or_init(|| {
        let wire: proto::Snapshot = serde_json::from_str(ROUTED).expect("a valid snapshot");
        Arc::new(Snapshot::try_from(wire).expect("a snapshot that compiles"))
    });
    let Some(req) = request(data) else {
        return;
    };
    let Logical::Service(port) = snapshot.lookup(SocketAddr::from(([198, 19, 0, 1], 80))) else {
        panic!("the routed Service is not found");
    };
    let selected = port.routes.select(req.method(), req.uri(), req.headers());
    assert!(selected.is_some(), "a request no route took");
}
