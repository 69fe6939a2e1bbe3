//! The three request paths the benchmark compares, built as pod pairs in one local mesh:
//! a client pod sending load to an app (nginx serving 1 KB) in a server pod,
//! - directly, with no proxy at all (the baseline);
//! - through a Remora sidecar pair (iptables interception, mTLS between the sidecars);
//! - through the same pair with a typical policy set on the server sidecar (an ALLOW for the
//!   caller's principal, a namespace-wide DENY on `/admin*`), so what authorization costs per
//!   request is measured beside the policy-free pair in the same run;
//! - through the same pair called by a Service's cluster IP, routed by a VirtualService (90/10
//!   over two subsets, the default retries, no mirror), so what routing costs per request is
//!   measured beside the pair that calls the pod directly (no routing at all);
//! - through the same pair with no telemetry at all on either sidecar (no standard metric, no
//!   tracing), so what the telemetry defaults cost per request is measured against it in the
//!   same run. Every other Remora pair runs with those defaults: Istio's standard metrics and
//!   1% of requests traced to an OTLP receiver (the e2e fixture, in a pod of its own, reached
//!   through a Service in the sidecars' snapshots); access logs off;
//! - through an nginx mTLS pair: a forward nginx in the client pod (the load generator calls it
//!   explicitly, nginx cannot intercept) and a TLS-terminating nginx in the server pod, with
//!   client certificates verified on both sides, keep-alive upstreams and certificates from the
//!   same mesh CA as Remora's.

use std::{fmt, net::SocketAddr};

use anyhow::Context;
use remora_api::proto::config::{
    AuthorizationPolicy, Endpoint, HttpRoute, Operation, RouteBackend, Rule, Security, Service,
    ServicePort, Source, Subset, Telemetry, TelemetrySide, TraceProvider, TracingPolicy, Workload,
};
use remora_bench::nginx;
use remora_e2e::{two_pods::fixture, Mesh, Pod, SidecarOptions, TRUST_DOMAIN};

const APP_PORT: u16 = 8080;
const NGINX_TLS_PORT: u16 = 8443;
const NGINX_FORWARD: &str = "127.0.0.1:10000";
/// The DNS name in the nginx server's certificate, which the nginx client checks.
const NGINX_SERVER_NAME: &str = "server.bench.svc";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Remora,
    RemoraPolicies,
    RemoraRoutes,
    RemoraTelemetryOff,
    Nginx,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Direct => "direct",
            Kind::Remora => "remora",
            Kind::RemoraPolicies => "remora+policies",
            Kind::RemoraRoutes => "remora+routes",
            Kind::RemoraTelemetryOff => "remora-telemetry-off",
            Kind::Nginx => "nginx",
        })
    }
}

/// One way from the client pod to the app.
pub struct RequestPath {
    pub kind: Kind,
    pub client: Pod,
    /// What the load generator calls.
    pub url: String,
    /// The proxies on the path, client side first: (side, pid).
    pub proxies: Vec<(&'static str, u32)>,
}

/// Builds the paths in `mesh`; without `features` the remora+policies pair runs without its
/// policies and the remora+routes pair calls the pod directly (an A/A control).
pub fn build(mesh: &Mesh, features: bool) -> anyhow::Result<Vec<RequestPath>> {
    let collector = collector(mesh)?;
    let defaults = || Features {
        telemetry: telemetry_defaults(),
        collector: Some(collector.clone()),
        ..Features::default()
    };
    Ok(vec![
        direct(mesh)?,
        remora(mesh, Kind::Remora, "r", defaults())?,
        remora(
            mesh,
            Kind::RemoraPolicies,
            "p",
            Features {
                security: features.then(typical_policies),
                ..defaults()
            },
        )?,
        remora(
            mesh,
            Kind::RemoraRoutes,
            "v",
            Features {
                routed: features,
                ..defaults()
            },
        )?,
        remora(
            mesh,
            Kind::RemoraTelemetryOff,
            "t",
            if features {
                Features {
                    telemetry: telemetry_off(),
                    ..Features::default()
                }
            } else {
                defaults()
            },
        )?,
        nginx(mesh)?,
    ])
}

/// The collector's Service host and OTLP/gRPC port.
const COLLECTOR_HOST: &str = "otel-collector.bench.svc.cluster.local";
const COLLECTOR_PORT: u16 = 4317;

/// Starts the OTLP receiver in a pod without a sidecar: the Service the sidecars export to.
fn collector(mesh: &Mesh) -> anyhow::Result<Service> {
    let pod = mesh.add_pod_without_sidecar("o-collector", "bench", "collector")?;
    let script = fixture("otlp_receiver.py");
    let out = pod.dir.join("spans.jsonl");
    let out = out.to_string_lossy();
    mesh.start_app(
        &pod,
        "collector",
        &["python3", &script, "--out", &out],
        COLLECTOR_PORT,
    )?;
    Ok(Service {
        hostname: COLLECTOR_HOST.to_owned(),
        ports: vec![ServicePort {
            port: u32::from(COLLECTOR_PORT),
            name: "grpc-otlp".to_owned(),
            endpoints: vec![Endpoint {
                address: SocketAddr::from((pod.ip, COLLECTOR_PORT)).to_string(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// The cluster IP the remora+routes client calls.
const CLUSTER_IP: &str = "198.19.200.1";
const HOST: &str = "server.bench.svc.cluster.local";

/// A canary as users write it: Service `server` split 90/10 over subsets v1 and v2 by a
/// VirtualService with the default retries (both subsets select the one server pod, so the
/// app behind either is the same), as the control plane would translate it.
fn canary(server: &Pod) -> (Service, Workload) {
    let workload = Workload {
        namespace: "bench".to_owned(),
        name: server.name.clone(),
        labels: [("app".to_owned(), "server".to_owned())].into(),
        identity: String::new(),
        addresses: vec![server.ip.to_string()],
        workload_name: "server".to_owned(),
        canonical_service: "server".to_owned(),
        canonical_revision: "latest".to_owned(),
        app: "server".to_owned(),
        version: String::new(),
    };
    let identity = format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/server");
    let subset = |name: &str| Subset {
        name: name.to_owned(),
        labels: [("app".to_owned(), "server".to_owned())].into(),
        traffic_policy: None,
    };
    let backend = |subset: &str, weight: u32| RouteBackend {
        host: HOST.to_owned(),
        port: u32::from(APP_PORT),
        subset: subset.to_owned(),
        weight,
        ..Default::default()
    };
    let service = Service {
        hostname: HOST.to_owned(),
        addresses: vec![CLUSTER_IP.to_owned()],
        ports: vec![ServicePort {
            port: u32::from(APP_PORT),
            name: "http".to_owned(),
            app_protocol: "http".to_owned(),
            endpoints: vec![Endpoint {
                address: SocketAddr::from((server.ip, APP_PORT)).to_string(),
                identity,
                workload: format!("bench/{}", server.name),
            }],
            http_routes: vec![HttpRoute {
                kind: "VirtualService".to_owned(),
                namespace: "bench".to_owned(),
                name: "server".to_owned(),
                backends: vec![backend("v1", 90), backend("v2", 10)],
                ..Default::default()
            }],
            subsets: vec![subset("v1"), subset("v2")],
            ..Default::default()
        }],
        passthrough: false,
        ..Default::default()
    };
    (service, workload)
}

fn direct(mesh: &Mesh) -> anyhow::Result<RequestPath> {
    let client = mesh.add_pod_without_sidecar("d-client", "bench", "client")?;
    let server = mesh.add_pod_without_sidecar("d-server", "bench", "server")?;
    start_app(mesh, &server)?;
    Ok(RequestPath {
        kind: Kind::Direct,
        url: format!("http://{}:{APP_PORT}/", server.ip),
        client,
        proxies: Vec::new(),
    })
}

/// What a team typically has on a workload: only its one caller allowed, admin paths denied
/// namespace-wide. The load's requests (`GET /`) pass both.
fn typical_policies() -> Security {
    let policy = |name: &str, action: &str, rule: Rule| AuthorizationPolicy {
        namespace: "bench".to_owned(),
        name: name.to_owned(),
        action: action.to_owned(),
        rules: vec![rule],
        ..Default::default()
    };
    Security {
        authorization_policies: vec![
            policy(
                "server-allow-client",
                "ALLOW",
                Rule {
                    from: vec![Source {
                        principals: vec![format!("{TRUST_DOMAIN}/ns/bench/sa/client")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            policy(
                "deny-admin",
                "DENY",
                Rule {
                    to: vec![Operation {
                        paths: vec!["/admin*".to_owned()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
        ],
        ..Default::default()
    }
}

/// What a Remora pair runs with beside the defaults.
#[derive(Default)]
struct Features {
    /// The server sidecar's policies.
    security: Option<Security>,
    /// The client calls the server's Service, routed by [`canary`].
    routed: bool,
    /// Both sidecars' telemetry.
    telemetry: Option<Telemetry>,
    /// The collector's Service, in both sidecars' snapshots.
    collector: Option<Service>,
}

/// Istio's defaults with a tracing provider: every standard metric, 1% of requests traced to
/// the collector over OTLP/gRPC, no access log.
fn telemetry_defaults() -> Option<Telemetry> {
    let side = TelemetrySide {
        tracing: Some(TracingPolicy {
            sampling: 1.0,
            provider: Some(TraceProvider {
                name: "otel".to_owned(),
                service: COLLECTOR_HOST.to_owned(),
                port: u32::from(COLLECTOR_PORT),
                timeout_ms: 3000,
                max_tag_length: 256,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(Telemetry {
        client: Some(side.clone()),
        server: Some(side),
    })
}

/// No telemetry on either side: no standard metric (a Telemetry resource whose metrics
/// providers name no Prometheus provider), no tracing provider.
fn telemetry_off() -> Option<Telemetry> {
    let off = TelemetrySide {
        metrics_disabled: true,
        ..Default::default()
    };
    Some(Telemetry {
        client: Some(off.clone()),
        server: Some(off),
    })
}

/// A Remora pair.
fn remora(
    mesh: &Mesh,
    kind: Kind,
    prefix: &str,
    features: Features,
) -> anyhow::Result<RequestPath> {
    let Features {
        security,
        routed,
        telemetry,
        collector,
    } = features;
    let client = mesh.add_pod(&format!("{prefix}-client"), "bench", "client")?;
    let server = mesh.add_pod(&format!("{prefix}-server"), "bench", "server")?;
    start_app(mesh, &server)?;
    mesh.start_sidecar(
        &server,
        &SidecarOptions {
            security,
            telemetry: telemetry.clone(),
            services: collector.iter().cloned().collect(),
            ..Default::default()
        },
    )?;
    let identity = remora_api::SpiffeId::new(TRUST_DOMAIN, "bench", "server")?;
    let (service, workload) = canary(&server);
    let url = if routed {
        format!("http://{CLUSTER_IP}:{APP_PORT}/")
    } else {
        format!("http://{}:{APP_PORT}/", server.ip)
    };
    mesh.start_sidecar(
        &client,
        &SidecarOptions {
            endpoints: vec![(SocketAddr::from((server.ip, APP_PORT)), identity)],
            services: std::iter::once(service).chain(collector).collect(),
            workloads: vec![workload],
            telemetry,
            ..Default::default()
        },
    )?;
    let proxies = vec![
        ("client", pid(mesh, &client, "sidecar")?),
        ("server", pid(mesh, &server, "sidecar")?),
    ];
    Ok(RequestPath {
        kind,
        url,
        client,
        proxies,
    })
}

fn nginx(mesh: &Mesh) -> anyhow::Result<RequestPath> {
    let client = mesh.add_pod_without_sidecar("n-client", "bench", "client")?;
    let server = mesh.add_pod_without_sidecar("n-server", "bench", "server")?;
    start_app(mesh, &server)?;
    for pod in [&client, &server] {
        mesh.issue_cert(
            &pod.namespace,
            &pod.service_account,
            &[NGINX_SERVER_NAME],
            &pod.dir.join("certs"),
        )?;
    }
    let certs = server.dir.join("certs");
    let terminate = format!(
        "upstream app {{ server 127.0.0.1:{APP_PORT}; keepalive 64; }}
        server {{
            listen {NGINX_TLS_PORT} ssl;
            keepalive_requests 1000000;
            ssl_protocols TLSv1.3;
            ssl_certificate {chain};
            ssl_certificate_key {key};
            ssl_client_certificate {roots};
            ssl_verify_client on;
            location / {{
                proxy_pass http://app;
                proxy_http_version 1.1;
                proxy_set_header Connection \"\";
            }}
        }}",
        chain = certs.join("cert-chain.pem").display(),
        key = certs.join("key.pem").display(),
        roots = certs.join("root-cert.pem").display(),
    );
    start_nginx(mesh, &server, "nginx-mtls", 2, &terminate, NGINX_TLS_PORT)?;
    let certs = client.dir.join("certs");
    let originate = format!(
        "upstream mtls {{ server {server_ip}:{NGINX_TLS_PORT}; keepalive 64; }}
        server {{
            listen {NGINX_FORWARD};
            keepalive_requests 1000000;
            location / {{
                proxy_pass https://mtls;
                proxy_http_version 1.1;
                proxy_set_header Connection \"\";
                proxy_ssl_protocols TLSv1.3;
                proxy_ssl_certificate {chain};
                proxy_ssl_certificate_key {key};
                proxy_ssl_trusted_certificate {roots};
                proxy_ssl_verify on;
                proxy_ssl_name {NGINX_SERVER_NAME};
                proxy_ssl_session_reuse on;
            }}
        }}",
        server_ip = server.ip,
        chain = certs.join("cert-chain.pem").display(),
        key = certs.join("key.pem").display(),
        roots = certs.join("root-cert.pem").display(),
    );
    start_nginx(mesh, &client, "nginx-forward", 2, &originate, 10000)?;
    let proxies = vec![
        ("client", pid(mesh, &client, "nginx-forward")?),
        ("server", pid(mesh, &server, "nginx-mtls")?),
    ];
    Ok(RequestPath {
        kind: Kind::Nginx,
        url: format!("http://{NGINX_FORWARD}/"),
        client,
        proxies,
    })
}

/// The app: nginx answering every request with 1 KB, so the app costs next to nothing.
fn start_app(mesh: &Mesh, server: &Pod) -> anyhow::Result<()> {
    start_nginx(
        mesh,
        server,
        "app",
        1,
        &nginx::one_kilobyte_app(APP_PORT),
        APP_PORT,
    )
}

/// Runs nginx in the foreground with `http` as its whole `http {}` block.
fn start_nginx(
    mesh: &Mesh,
    pod: &Pod,
    name: &str,
    workers: u32,
    http: &str,
    port: u16,
) -> anyhow::Result<()> {
    let path = nginx::write_config(&pod.dir.join(name), workers, http)?;
    let path = path.to_string_lossy().into_owned();
    mesh.start_app(pod, name, &["nginx", "-c", &path], port)
}

fn pid(mesh: &Mesh, pod: &Pod, name: &str) -> anyhow::Result<u32> {
    mesh.pid(pod, name)
        .with_context(|| format!("no {name} process in {}", pod.name))
}
