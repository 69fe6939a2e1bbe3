use std::{collections::BTreeMap, net::IpAddr};

use remora_api::proto::config::{Endpoint, Service, ServicePort};

use super::*;
use crate::config::cluster_ip;

fn documents(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(origin, text)| ((*origin).to_owned(), (*text).to_owned()))
        .collect()
}

fn node(namespace: &str, pod_name: &str) -> Node {
    Node {
        pod_name: pod_name.to_owned(),
        namespace: namespace.to_owned(),
        ip: String::new(),
    }
}

/// The endpoint `address` of the pod `workload` (`namespace/name`).
fn endpoint(address: &str, identity: &str, workload: &str) -> Endpoint {
    Endpoint {
        address: address.to_owned(),
        identity: identity.to_owned(),
        workload: workload.to_owned(),
    }
}

const MESH: &str = "defaultConfig:\n  drainDuration: 10s\n";

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: 2
  selector:
    matchLabels: {app: httpbin}
  template:
    metadata:
      labels: {app: httpbin}
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
spec:
  selector: {app: httpbin}
  ports:
  - name: http
    port: 8000
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
spec:
  clusterIP: 10.96.0.20
  ports:
  - name: metrics
    port: 15014
    appProtocol: http
  - name: grpc-api
    port: 9090
  - name: dns
    port: 53
    protocol: UDP
---
apiVersion: v1
kind: Service
metadata:
  name: headless
spec:
  clusterIP: None
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: external
spec:
  type: ExternalName
  externalName: example.com
"#;

/// The Pods and EndpointSlices the local launcher records for the Deployment above, plus a pod
/// without a sidecar and one with a malformed `proxy.istio.io/config`.
const RECORDED: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: httpbin-0
  labels: {app: httpbin, version: v1, pod-template-hash: 5d8f}
  annotations:
    sidecar.istio.io/status: '{"containers":["istio-proxy"]}'
    proxy.istio.io/config: |
      drainDuration: 2s
spec:
  serviceAccountName: httpbin
  containers:
  - name: httpbin
    ports:
    - containerPort: 8080
status:
  podIP: 198.18.0.10
---
apiVersion: v1
kind: Pod
metadata:
  name: httpbin-1
  labels: {app: httpbin}
  annotations:
    sidecar.istio.io/status: '{}'
spec:
  serviceAccountName: httpbin
  containers:
  - name: httpbin
    ports:
    - containerPort: 8080
status:
  podIP: 198.18.0.9
---
apiVersion: v1
kind: Pod
metadata:
  name: legacy-0
spec:
  containers:
  - name: legacy
    ports:
    - containerPort: 8080
status:
  podIP: 198.18.0.20
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-0
  annotations:
    sidecar.istio.io/status: '{}'
    proxy.istio.io/config: 'drainDuration: soon'
spec:
  containers:
  - name: reviews
status:
  podIP: 198.18.0.30
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: httpbin-abcde
  labels:
    kubernetes.io/service-name: httpbin
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: [198.18.0.20]
  conditions: {ready: true}
- addresses: [198.18.0.10]
  targetRef: {kind: Pod, name: httpbin-0, namespace: default}
- addresses: [198.18.0.9]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abcde
  labels:
    kubernetes.io/service-name: reviews
addressType: IPv4
ports:
- name: grpc-api
  port: 9090
- name: metrics
  port: 15014
endpoints:
- addresses: [198.18.0.30]
"#;

const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const DEFAULT_ID: &str = "spiffe://cluster.local/ns/default/sa/default";

fn example() -> Vec<(String, String)> {
    documents(&[
        ("/m/app.yaml", APP),
        ("/m/mesh.yaml", MESH),
        ("/m/recorded.yaml", RECORDED),
    ])
}

#[test]
fn translates_manifests_into_a_snapshot() {
    let catalog = Catalog::build(example());
    let rejected: Vec<(&str, &str)> = catalog
        .rejected
        .iter()
        .map(|r| (r.object.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!(
        rejected[0].0,
        "Pod default/reviews-0 in /m/recorded.yaml (document 4)"
    );
    assert!(
        rejected[0].1.starts_with(
            "metadata.annotations[proxy.istio.io/config]: drainDuration: \"soon\" is not a \
             duration such as \"5s\""
        ),
        "{}",
        rejected[0].1
    );
    let allocated = cluster_ip::allocate(&[
        ("default", "httpbin", None),
        ("default", "reviews", Some(IpAddr::from([10, 96, 0, 20]))),
    ])[&("default".to_owned(), "httpbin".to_owned())];

    let snapshot = catalog.snapshot_for(&node("default", "httpbin-1"));
    assert_eq!(snapshot.version, "");
    // In the order of their resources' names (`address/IP:PORT`).
    assert_eq!(
        snapshot.endpoints,
        [
            endpoint("198.18.0.10:8080", HTTPBIN_ID, "default/httpbin-0"),
            endpoint("198.18.0.30:15014", DEFAULT_ID, "default/reviews-0"),
            endpoint("198.18.0.30:9090", DEFAULT_ID, "default/reviews-0"),
            endpoint("198.18.0.9:8080", HTTPBIN_ID, "default/httpbin-1"),
        ]
    );
    assert_eq!(
        snapshot.services,
        [
            Service {
                hostname: "httpbin.default.svc.cluster.local".into(),
                addresses: vec![allocated.to_string()],
                ports: vec![ServicePort {
                    port: 8000,
                    name: "http".into(),
                    app_protocol: "http".into(),
                    // 198.18.0.9 is not ready; 198.18.0.20 runs without a sidecar.
                    endpoints: vec![
                        endpoint("198.18.0.10:8080", HTTPBIN_ID, "default/httpbin-0"),
                        endpoint("198.18.0.20:8080", "", "default/legacy-0"),
                    ],
                    ..Default::default()
                }],
                passthrough: false,
                ..Default::default()
            },
            Service {
                hostname: "reviews.default.svc.cluster.local".into(),
                addresses: vec!["10.96.0.20".into()],
                ports: vec![
                    ServicePort {
                        port: 9090,
                        name: "grpc-api".into(),
                        app_protocol: "grpc".into(),
                        endpoints: vec![endpoint(
                            "198.18.0.30:9090",
                            DEFAULT_ID,
                            "default/reviews-0"
                        )],
                        ..Default::default()
                    },
                    ServicePort {
                        port: 15014,
                        name: "metrics".into(),
                        app_protocol: "http".into(),
                        endpoints: vec![endpoint(
                            "198.18.0.30:15014",
                            DEFAULT_ID,
                            "default/reviews-0"
                        )],
                        ..Default::default()
                    },
                ],
                passthrough: false,
                ..Default::default()
            },
        ]
    );
    let mesh = snapshot.mesh.expect("mesh settings");
    assert_eq!(mesh.drain_duration_ms, 10_000);
    assert_eq!(mesh.trust_domain, "cluster.local");
}

#[test]
fn mesh_settings_follow_the_pod() {
    let catalog = Catalog::build(example());
    let cases = [
        (node("default", "httpbin-0"), 2_000),
        (node("default", "httpbin-1"), 10_000),
        // Malformed override: rejected at build, mesh defaults apply.
        (node("default", "reviews-0"), 10_000),
        (node("default", "unknown"), 10_000),
        (node("other", "httpbin-0"), 10_000),
    ];
    for (node, drain_ms) in cases {
        let snapshot = catalog.snapshot_for(&node);
        let mesh = snapshot.mesh.expect("mesh settings");
        assert_eq!(mesh.drain_duration_ms, drain_ms, "{node:?}");
    }
}

#[test]
fn pods_report_their_service_account() {
    let catalog = Catalog::build(example());
    let cases = [
        ("default", "httpbin-0", Some("httpbin")),
        ("default", "legacy-0", Some("default")),
        ("default", "reviews-0", Some("default")),
        ("default", "missing", None),
        ("other", "httpbin-0", None),
    ];
    for (namespace, pod, expected) in cases {
        assert_eq!(
            catalog.pod_service_account(namespace, pod),
            expected,
            "{namespace}/{pod}"
        );
    }
}

#[test]
fn output_is_deterministic() {
    let mut reversed = example();
    reversed.reverse();
    let node = node("default", "httpbin-0");
    let first = Catalog::build(example()).snapshot_for(&node);
    assert_eq!(Catalog::build(example()).snapshot_for(&node), first);
    assert_eq!(Catalog::build(reversed).snapshot_for(&node), first);
    // Byte for byte (labels included), since the version is a hash of the encoding.
    assert!(
        first.workloads.iter().any(|w| w.labels.len() > 1),
        "labels to order"
    );
    let version = Catalog::build(example()).version_for(&node);
    for _ in 0..20 {
        assert_eq!(Catalog::build(example()).version_for(&node), version);
    }
}

#[test]
fn conflicting_addresses_and_identities_are_rejected() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec:
  clusterIP: 10.96.0.1
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec:
  clusterIP: 10.96.0.1
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: first
  annotations: {sidecar.istio.io/status: '{}'}
spec: {containers: [{name: app, ports: [{containerPort: 80}]}]}
status: {podIP: 198.18.0.5}
---
apiVersion: v1
kind: Pod
metadata:
  name: second
spec: {containers: []}
status: {podIP: 198.18.0.5}
---
apiVersion: v1
kind: Pod
metadata:
  name: done
spec: {containers: []}
status: {podIP: 198.18.0.5, phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata:
  name: shouty
  annotations: {sidecar.istio.io/status: '{}'}
spec: {serviceAccountName: Admin, containers: []}
"#;
    let catalog = Catalog::build(documents(&[("/m/x.yaml", text)]));
    let rejected: Vec<(&str, &str)> = catalog
        .rejected
        .iter()
        .map(|r| (r.object.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:#?}");
    assert_eq!(
        rejected[0].0,
        "Pod default/second in /m/x.yaml (document 4)"
    );
    assert_eq!(
        rejected[0].1,
        "status.podIP: 198.18.0.5 is already the IP of Pod default/first"
    );
    assert_eq!(
        rejected[1].0,
        "Pod default/shouty in /m/x.yaml (document 6)"
    );
    assert!(
        rejected[1].1.starts_with("no valid SPIFFE identity: "),
        "{}",
        rejected[1].1
    );
    assert_eq!(
        rejected[2],
        (
            "Service default/b in /m/x.yaml (document 2)",
            "spec.clusterIP: 10.96.0.1 is already the cluster IP of Service default/a"
        )
    );
    // Rejected pods are unknown; the finished one keeps running as far as accounts go.
    assert_eq!(catalog.pod_service_account("default", "second"), None);
    assert_eq!(catalog.pod_service_account("default", "shouty"), None);
    assert_eq!(
        catalog.pod_service_account("default", "done"),
        Some("default")
    );
    let snapshot = catalog.snapshot_for(&node("default", "first"));
    assert_eq!(
        snapshot.endpoints,
        [endpoint(
            "198.18.0.5:80",
            "spiffe://cluster.local/ns/default/sa/default",
            "default/first"
        )]
    );
    let hostnames: Vec<&str> = snapshot
        .services
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    assert_eq!(hostnames, ["a.default.svc.cluster.local"]);
    // The rejected Service is not among the accepted objects either.
    let services: Vec<Option<&str>> = catalog
        .accepted()
        .services()
        .map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(services, [Some("a")]);
    assert_eq!(
        catalog.accepted().cluster_ip("default", "a"),
        Some(IpAddr::from([10, 96, 0, 1]))
    );
    assert_eq!(catalog.accepted().cluster_ip("default", "b"), None);
}

#[test]
fn accepted_objects_for_the_launcher() {
    let namespaces = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  selector: {matchLabels: {app: other}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, command: [web]}]}
"#;
    let mesh = "trustDomain: example.org\ndefaultConfig: {proxyMetadata: {A: mesh, B: mesh}, \
                concurrency: 4}\n";
    let catalog = Catalog::build(documents(&[
        ("/m/app.yaml", APP),
        ("/m/mesh.yaml", mesh),
        ("/m/more.yaml", namespaces),
    ]));
    let rejected: Vec<&str> = catalog.rejected.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(
        rejected,
        [
            "Namespace demo in /m/more.yaml (document 2)",
            "Deployment demo/web in /m/more.yaml (document 3)"
        ]
    );
    let labels = catalog
        .accepted()
        .namespace("demo")
        .and_then(|ns| ns.metadata.labels.clone())
        .expect("the first demo Namespace");
    assert_eq!(labels["istio-injection"], "enabled");
    assert!(catalog.accepted().namespace("other").is_none());
    let deployments: Vec<Option<&str>> = catalog
        .accepted()
        .deployments()
        .map(|d| d.metadata.name.as_deref())
        .collect();
    assert_eq!(
        deployments,
        [Some("httpbin")],
        "the rejected one is left out"
    );
    assert!(catalog
        .accepted()
        .deployment("default", "httpbin")
        .is_some());
    assert!(catalog.accepted().deployment("demo", "web").is_none());
    let services: Vec<Option<&str>> = catalog
        .accepted()
        .services()
        .map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(
        services,
        [
            Some("external"),
            Some("headless"),
            Some("httpbin"),
            Some("reviews")
        ]
    );
    assert_eq!(catalog.accepted().cluster_ip("default", "headless"), None);
    assert_eq!(catalog.accepted().cluster_ip("default", "external"), None);
    assert_eq!(
        catalog.accepted().cluster_ip("default", "reviews"),
        Some(IpAddr::from([10, 96, 0, 20]))
    );
    assert_eq!(catalog.trust_domain(), "example.org");
    // The injector of this read renders the mesh's defaultConfig, the pod's annotation
    // merged over it, into the sidecar.
    let sidecar = |annotations: &str| {
        let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(&format!(
            "metadata: {{name: p, namespace: default, annotations: {annotations}}}\n\
             spec: {{containers: [{{name: app, image: app}}]}}\n"
        ))
        .expect("test pod");
        let workload = crate::inject::Workload::of_pod(&pod, "default");
        let injected = catalog
            .accepted()
            .injector()
            .inject(&pod, &workload)
            .expect("injected");
        let spec = injected.spec.expect("spec");
        let proxy = spec
            .containers
            .into_iter()
            .find(|c| c.name == "istio-proxy")
            .expect("istio-proxy");
        let env: BTreeMap<String, String> = proxy
            .env
            .into_iter()
            .flatten()
            .filter(|var| ["A", "B", "C"].contains(&var.name.as_str()))
            .map(|var| (var.name, var.value.unwrap_or_default()))
            .collect();
        (env, proxy.args.unwrap_or_default())
    };
    let pairs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        sidecar(
            r#"{"proxy.istio.io/config": "{proxyMetadata: {B: pod, C: pod}, concurrency: 0}"}"#
        ),
        (
            pairs(&[("A", "mesh"), ("B", "pod"), ("C", "pod")]),
            vec!["--concurrency".to_owned(), "0".to_owned()]
        )
    );
    assert_eq!(
        sidecar("{}"),
        (
            pairs(&[("A", "mesh"), ("B", "mesh")]),
            vec!["--concurrency".to_owned(), "4".to_owned()]
        )
    );
}

/// A mesh config the control plane rejects leaves it (and so the launcher) on the defaults.
#[test]
fn a_rejected_mesh_config_means_the_default_trust_domain() {
    let catalog = Catalog::build(documents(&[(
        "/m/mesh.yaml",
        "trustDomain: example.org\noutboundTrafficPolicy: {mode: SOMETIMES}\n",
    )]));
    assert_eq!(catalog.rejected.len(), 1, "{:?}", catalog.rejected);
    assert_eq!(catalog.trust_domain(), "cluster.local");
}

#[test]
fn unnamed_ports_ipv6_and_trust_domain() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{port: 8080}]
endpoints:
- addresses: ["fd00::5"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-elsewhere
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 9999}]
endpoints:
- addresses: [198.18.0.99]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  annotations: {sidecar.istio.io/status: '{}'}
spec: {containers: []}
status: {podIP: "fd00::5"}
"#;
    let catalog = Catalog::build(documents(&[
        ("/m/web.yaml", text),
        ("/m/mesh.yaml", "trustDomain: example.org\n"),
    ]));
    assert!(catalog.rejected.is_empty(), "{:#?}", catalog.rejected);
    let snapshot = catalog.snapshot_for(&node("shop", "web-0"));
    let identity = "spiffe://example.org/ns/shop/sa/default";
    assert_eq!(
        snapshot.endpoints,
        [endpoint("[fd00::5]:8080", identity, "shop/web-0")]
    );
    assert_eq!(snapshot.services.len(), 1);
    let service = &snapshot.services[0];
    assert_eq!(service.hostname, "web.shop.svc.cluster.local");
    assert_eq!(
        service.ports,
        [ServicePort {
            port: 80,
            name: String::new(),
            app_protocol: String::new(),
            endpoints: vec![endpoint("[fd00::5]:8080", identity, "shop/web-0")],
            ..Default::default()
        }]
    );
}

#[test]
fn a_missing_object_is_traced_to_its_rejection() {
    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  \
                              namespace: demo\nspec:\n  replicas: two\n";
    let catalog = Catalog::build(documents(&[
        ("/dir/web.yaml", DEPLOYMENT),
        ("/dir/mesh.yaml", "trustDomain: [not, a, string]\n"),
        ("/dir/notes.yaml", "just: notes\n"),
    ]));
    let rejection = catalog
        .rejection_of("Deployment", "demo", "web", "/dir/web.yaml")
        .expect("its own rejection");
    assert!(rejection.reason.contains("spec.replicas"), "{rejection:?}");
    for (kind, namespace, name) in [
        ("Deployment", "demo", "api"),
        ("Deployment", "other", "web"),
        ("Service", "demo", "web"),
    ] {
        assert_eq!(
            catalog.rejection_of(kind, namespace, name, "/dir/web.yaml"),
            None,
            "{kind} {namespace}/{name}: the mesh config, another file's unidentified document \
             and another object's rejection are not it"
        );
    }

    // A file that cannot be parsed may have held any object it held before.
    let catalog = Catalog::build(documents(&[("/dir/web.yaml", "kind: [unclosed\n")]));
    let rejection = catalog
        .rejection_of("Deployment", "demo", "api", "/dir/web.yaml")
        .expect("maybe in the broken file");
    assert_eq!(rejection.object, "/dir/web.yaml");
    assert_eq!(
        catalog.rejection_of("Deployment", "demo", "api", "/dir/api.yaml"),
        None
    );
    let catalog = Catalog::build(documents(&[("/dir/app.yaml", APP)]));
    assert_eq!(
        catalog.accepted().deployment_origin("default", "httpbin"),
        Some("/dir/app.yaml")
    );
}

#[test]
fn security_policies_reach_the_pods_they_select() {
    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-curl, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: default}
spec:
  action: DENY
"#;
    let mut files = example();
    files.push(("/dir/policies.yaml".to_owned(), POLICIES.to_owned()));
    let catalog = Catalog::build(files);
    let rejected: Vec<_> = catalog.rejected.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(
        rejected
            .iter()
            .filter(|o| o.starts_with("AuthorizationPolicy"))
            .collect::<Vec<_>>(),
        [&"AuthorizationPolicy default/broken in /dir/policies.yaml (document 3)"]
    );
    let snapshot = catalog.snapshot_for(&node("default", "httpbin-1"));
    let security = snapshot.security.expect("httpbin's policies");
    let names: Vec<&str> = security
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["allow-curl", "broken"]);
    let peer = security.peer_authentication.expect("resolved");
    assert_eq!((peer.mode.as_str(), peer.port_mtls.len()), ("STRICT", 1));
    // Callers learn that httpbin's 8080 takes no mTLS: they send in the clear.
    assert!(snapshot
        .endpoints
        .iter()
        .filter(|e| e.address.ends_with(":8080") && e.address.starts_with("198.18.0.1"))
        .all(|e| e.identity.is_empty()));
    let service = snapshot
        .services
        .iter()
        .find(|s| s.hostname.starts_with("httpbin."))
        .expect("httpbin");
    assert!(service.ports[0]
        .endpoints
        .iter()
        .all(|e| e.identity.is_empty()));
    // Other workloads keep theirs, and their own policies.
    assert!(snapshot
        .endpoints
        .iter()
        .any(|e| e.address == "198.18.0.30:9090" && !e.identity.is_empty()));
    let other = catalog.snapshot_for(&node("default", "reviews-0"));
    assert!(other
        .security
        .is_none_or(|s| s.authorization_policies.iter().all(|p| p.name == "broken")));
}

/// ServiceEntries, routes and subsets as a client sidecar gets them: visible by `exportTo`,
/// refused when they would take what a Service holds, and routed by a VirtualService.
#[test]
fn service_entries_and_routes_reach_the_clients_that_see_them() {
    let entries = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  addresses: ["198.51.100.7"]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{number: 8000, name: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  subsets: [{name: v1, labels: {app: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin]
  http:
    - route: [{destination: {host: httpbin, subset: v1}}]
"#;
    let mut files = example();
    files.push(("/m/routing.yaml".to_owned(), entries.to_owned()));
    let catalog = Catalog::build(files);
    // The example's own rejection (a pod's bad override) aside.
    let rejected: Vec<String> = catalog
        .rejected
        .iter()
        .filter(|r| !r.object.starts_with("Pod "))
        .map(|r| format!("{}: {}", r.object, r.reason))
        .collect();
    assert_eq!(
        rejected,
        [
            "ServiceEntry default/shadow in /m/routing.yaml (document 2): spec.hosts: \
          httpbin.default.svc.cluster.local is already registered (a Service's or an earlier \
          ServiceEntry's)"
        ]
    );
    let snapshot = catalog.snapshot_for(&node("default", "httpbin-0"));
    let api = snapshot
        .services
        .iter()
        .find(|s| s.hostname == "api.example.com")
        .expect("exported to its own namespace");
    assert!(api.passthrough);
    assert_eq!(api.addresses, ["198.51.100.7"]);
    let httpbin = &snapshot
        .services
        .iter()
        .find(|s| s.hostname == "httpbin.default.svc.cluster.local")
        .expect("httpbin")
        .ports[0];
    assert_eq!(httpbin.http_routes.len(), 1);
    assert_eq!(httpbin.http_routes[0].backends[0].subset, "v1");
    assert_eq!(httpbin.subsets[0].name, "v1");
    assert!(
        remora_api::Snapshot::try_from(snapshot).is_ok(),
        "the sidecar takes it"
    );
    let elsewhere = catalog.snapshot_for(&node("other", "nobody"));
    assert!(elsewhere
        .services
        .iter()
        .all(|s| s.hostname != "api.example.com"));
}

/// The admin endpoint dumps a snapshot as JSON and the launcher reads it back to see whether a
/// sidecar runs the config it should: every field must survive the round trip.
#[test]
fn snapshots_survive_a_json_round_trip() {
    let routing = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3}
    connectionPool: {http: {http1MaxPendingRequests: 2}}
  subsets: [{name: v1, labels: {app: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin]
  http:
    - match: [{uri: {prefix: /api}, headers: {x-user: {regex: "j.*"}}, queryParams: {q: {exact: "1"}}}]
      route: [{destination: {host: httpbin, subset: v1}, weight: 100}]
      retries: {attempts: 3, retryOn: "5xx,409"}
      timeout: 3s
      fault: {abort: {httpStatus: 418, percentage: {value: 12.5}}}
      mirror: {host: httpbin}
      corsPolicy: {allowOrigins: [{exact: "https://a.example"}], maxAge: 1m}
    - redirect: {uri: /new}
"#;
    let mut files = example();
    files.push(("/m/routing.yaml".to_owned(), routing.to_owned()));
    let catalog = Catalog::build(files);
    let snapshot = catalog.snapshot_for(&node("default", "httpbin-0"));
    assert!(!snapshot.services[0].ports[0].http_routes.is_empty());
    let json = serde_json::to_value(&snapshot).expect("serializes");
    let back: Snapshot = serde_json::from_value(json.clone()).expect("deserializes");
    assert_eq!(back, snapshot, "{json:#}");
}

/// The repository's examples (routes of every kind included) give the same snapshot, byte for
/// byte, however often they are read.
#[test]
fn the_examples_give_stable_versions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let catalog = || crate::config::read_directories(std::slice::from_ref(&dir));
    let read = || {
        catalog()
            .workload_snapshot("shop", "sleep")
            .expect("shop/sleep")
    };
    let sleep = node("shop", "sleep-0");
    let first = read();
    let version = catalog().version_for(&sleep);
    assert!(first
        .services
        .iter()
        .any(|s| s.ports.iter().any(|p| !p.http_routes.is_empty())));
    for _ in 0..10 {
        assert_eq!(read(), first);
        assert_eq!(catalog().version_for(&sleep), version);
    }
}

#[test]
fn telemetry_reaches_the_snapshots_of_the_pods_it_selects() {
    const TELEMETRY: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_SIZE}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: broken, namespace: default}
spec:
  metrics:
  - providers: [{name: nowhere}]
"#;
    let mut files = example();
    files.push(("/m/telemetry.yaml".to_owned(), TELEMETRY.to_owned()));
    let catalog = Catalog::build(files);
    let rejected: Vec<&str> = catalog
        .rejected
        .iter()
        .filter(|r| r.object.starts_with("Telemetry"))
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(
        rejected,
        ["spec.metrics[0].providers[0]: no extension provider \"nowhere\""]
    );
    let snapshot = catalog.snapshot_for(&node("default", "httpbin-1"));
    let telemetry = snapshot.telemetry.expect("telemetry");
    for side in [telemetry.client, telemetry.server] {
        let side = side.expect("a side");
        assert!(side
            .metric_overrides
            .iter()
            .any(|o| o.metric == "request_bytes" && o.disabled));
    }
}

/// A `Sidecar` keeps what its egress hosts name and what those route to; a Service's
/// `networking.istio.io/exportTo` hides it from other namespaces; the Sidecar's
/// `outboundTrafficPolicy` replaces the mesh's for the pods it applies to.
#[test]
fn sidecars_and_export_to_scope_what_a_sidecar_is_sent() {
    let service = |namespace: &str, name: &str, annotations: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             \x20 annotations: {{{annotations}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
        )
    };
    let pod = |namespace: &str, name: &str, app: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             \x20 labels: {{app: {app}}}\n  annotations: {{sidecar.istio.io/status: '{{}}'}}\n\
             spec:\n  containers: [{{name: app}}]\n"
        )
    };
    let text = [
        service("shop", "a", ""),
        service("data", "b", "networking.istio.io/exportTo: \".\""),
        service("pay", "c", ""),
        service("pay", "d", ""),
        pod("shop", "client-0", "client"),
        pod("shop", "web-0", "web"),
        pod("data", "x-0", "x"),
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {name: a, namespace: shop}\nspec:\n  hosts: [a]\n  http:\n  \
         - route: [{destination: {host: c.pay.svc.cluster.local}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
         metadata: {name: default, namespace: shop}\nspec:\n  egress: [{hosts: [./*]}]\n  \
         outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
         metadata: {name: web, namespace: shop}\nspec:\n  \
         workloadSelector: {labels: {app: web}}\n  egress: [{hosts: [\"*/*\"]}]\n"
            .to_owned(),
    ]
    .concat();
    let catalog = Catalog::build(vec![("/m/scoped.yaml".to_owned(), text)]);
    assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
    let seen = |namespace: &str, pod: &str| {
        let snapshot = catalog.snapshot_for(&node(namespace, pod));
        let hosts: Vec<String> = snapshot
            .services
            .iter()
            .map(|s| s.hostname.split('.').take(2).collect::<Vec<_>>().join("."))
            .collect();
        let policy = snapshot.mesh.map(|m| m.outbound_traffic_policy);
        (hosts, policy.unwrap_or_default())
    };
    assert_eq!(
        seen("shop", "client-0"),
        (
            vec!["a.shop".into(), "c.pay".into()],
            "REGISTRY_ONLY".into()
        ),
        "its namespace's Services, and where they route"
    );
    assert_eq!(
        seen("shop", "web-0"),
        (
            vec!["a.shop".into(), "c.pay".into(), "d.pay".into()],
            "ALLOW_ANY".into()
        ),
        "the Sidecar selecting it wins; b is not exported to shop"
    );
    assert_eq!(
        seen("data", "x-0"),
        (
            vec![
                "a.shop".into(),
                "b.data".into(),
                "c.pay".into(),
                "d.pay".into()
            ],
            "ALLOW_ANY".into()
        ),
        "no Sidecar: everything exported to it"
    );
}

#[test]
fn own_resources_are_made_of_the_same_things_while_nothing_they_read_changes() {
    let pod =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: demo, labels: {app: web}}\n\
               spec: {containers: [{name: app}]}\nstatus: {podIP: 10.0.0.1}\n";
    let telemetry = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
                     metadata: {name: quiet, namespace: demo}\n\
                     spec: {metrics: [{providers: [{name: prometheus}], \
                     overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]}\n";
    let reads = |text: &str| -> Vec<Read> {
        objects::documents_of(&[("a.yaml", text)])
            .into_iter()
            .flat_map(|d| d.map(Document::read).unwrap_or_default())
            .collect()
    };
    let web = node("demo", "web-0");
    let mut memo = Memo::default();
    let pods = reads(pod);
    let first = Catalog::from_reads(pods.clone(), &mut memo);
    let again = Catalog::from_reads(pods.clone(), &mut memo);
    assert!(first.own_source(&web) == again.own_source(&web));
    // A Telemetry resource: the same pod, other own resources.
    let mut with_telemetry = pods.clone();
    with_telemetry.extend(reads(telemetry));
    let changed = Catalog::from_reads(with_telemetry, &mut memo);
    assert!(again.own_source(&web) != changed.own_source(&web));
    assert_ne!(again.own_resources(&web), changed.own_resources(&web));
    // The pod read again (a new object, as after an edit): its facts are made again.
    let reread = Catalog::from_reads(reads(pod), &mut memo);
    assert!(first.own_source(&web) != reread.own_source(&web));
    // A pod the catalog does not know yet: nothing of its own but the catalog's inputs.
    let unknown = node("demo", "web-1");
    assert!(first.own_source(&unknown) == again.own_source(&unknown));
}

#[test]
fn pods_learn_what_their_own_ports_declare() {
    // A second Service in front of httpbin-0's 8080, declaring it TCP: the first Service by
    // name decides.
    const RAW: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: aaa-raw}
spec:
  selector: {app: httpbin, version: v1}
  ports:
  - {name: tcp-raw, port: 9000, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: aaa-raw-abcde
  labels: {kubernetes.io/service-name: aaa-raw}
addressType: IPv4
ports:
- {name: tcp-raw, port: 8080}
endpoints:
- addresses: [198.18.0.10]
"#;
    let mut files = example();
    files.push(("/dir/raw.yaml".to_owned(), RAW.to_owned()));
    let catalog = Catalog::build(files);
    let declared = |pod: &str| -> Vec<(u32, String)> {
        let snapshot = catalog.snapshot_for(&node("default", pod));
        snapshot
            .inbound_ports
            .into_iter()
            .map(|p| (p.port, p.app_protocol))
            .collect()
    };
    assert_eq!(declared("httpbin-0"), [(8080, "tcp".to_owned())]);
    // Not ready yet, and still told: its port speaks HTTP whenever it is reached.
    assert_eq!(declared("httpbin-1"), [(8080, "http".to_owned())]);
    // `appProtocol` over the name; by the slices' resolution of each port.
    assert_eq!(
        declared("reviews-0"),
        [(9090, "grpc".to_owned()), (15014, "http".to_owned())]
    );
    assert_eq!(declared("unknown-0"), []);
}

#[test]
fn a_pods_runtime_values_set_its_load_limits() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: demo\n  \
               annotations:\n    proxy.istio.io/config: |\n      runtimeValues:\n        \
               remora.listener_max_connections: \"100\"\n\
               spec: {containers: [{name: app}]}\nstatus: {podIP: 10.0.0.1}\n";
    let catalog = Catalog::build(documents(&[("/dir/pod.yaml", pod)]));
    assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
    let mesh = catalog
        .snapshot_for(&node("demo", "web-0"))
        .mesh
        .expect("mesh");
    let overload = mesh.overload.expect("limits");
    assert_eq!(overload.listener_max_connections, 100);
}
