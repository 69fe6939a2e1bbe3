use serde_json::json;

use super::*;

fn entry(spec: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "outside", "namespace": "client"},
        "spec": spec,
    })
}

#[test]
fn static_entries_become_services_with_their_endpoints() {
    let read = read(
        entry(json!({
            "hosts": ["Outside.Example"],
            "addresses": ["198.18.9.9"],
            "ports": [
                {"number": 80, "name": "http", "protocol": "HTTP"},
                {"number": 443, "name": "tls", "protocol": "TLS", "targetPort": 8443},
            ],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "endpoints": [
                {"address": "198.18.9.10"},
                {"address": "198.18.9.11", "ports": {"http": 8080}},
            ],
        })),
        "client",
    )
    .expect("valid");
    let services: Vec<proto::Service> = read.services().collect();
    assert_eq!(services.len(), 1);
    let service = &services[0];
    assert_eq!(service.hostname, "outside.example");
    assert_eq!(service.addresses, ["198.18.9.9"]);
    assert!(!service.passthrough);
    let endpoints = |i: usize| -> Vec<&str> {
        service.ports[i]
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect()
    };
    assert_eq!(
        (
            service.ports[0].port,
            service.ports[0].app_protocol.as_str()
        ),
        (80, "http")
    );
    assert_eq!(endpoints(0), ["198.18.9.10:80", "198.18.9.11:8080"]);
    assert_eq!(endpoints(1), ["198.18.9.10:8443", "198.18.9.11:8443"]);
    assert!(service.ports[0]
        .endpoints
        .iter()
        .all(|e| e.identity.is_empty()));
}

#[test]
fn resolution_none_passes_through() {
    let read = read(
        entry(json!({
            "hosts": ["api.example.com"],
            "addresses": ["198.18.9.9"],
            "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
        })),
        "client",
    )
    .expect("valid");
    let service = read.services().next().expect("one host");
    assert!(service.passthrough);
    assert!(service.ports[0].endpoints.is_empty());
}

#[test]
fn dns_resolution_names_endpoints_for_the_sidecar_to_resolve() {
    let cases = [
        // Without endpoints, each host resolves itself, on the port's target.
        (
            json!({"hosts": ["API.example.com", "b.example.com"], "resolution": "DNS",
                   "ports": [{"number": 80, "name": "http", "targetPort": 8080}]}),
            "DNS",
            vec![vec!["api.example.com:8080"], vec!["b.example.com:8080"]],
        ),
        // Endpoints, names or addresses, are every host's.
        (
            json!({"hosts": ["db.example.com"], "resolution": "DNS_ROUND_ROBIN",
                   "ports": [{"number": 5432, "name": "tcp-pg"}],
                   "endpoints": [{"address": "Primary.DB.example"}, {"address": "198.18.5.5", "ports": {"tcp-pg": 6432}}]}),
            "DNS_ROUND_ROBIN",
            vec![vec!["primary.db.example:5432", "198.18.5.5:6432"]],
        ),
    ];
    for (spec, resolution, expected) in cases {
        let read = read(entry(spec), "client").expect("valid");
        let services: Vec<proto::Service> = read.services().collect();
        let addresses: Vec<Vec<&str>> = services
            .iter()
            .map(|s| {
                s.ports[0]
                    .endpoints
                    .iter()
                    .map(|e| e.address.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(addresses, expected);
        assert!(services
            .iter()
            .all(|s| s.resolution == resolution && !s.passthrough));
    }
}

#[test]
fn export_to_limits_who_sees_it() {
    let cases = [
        (None, "other", true),
        (Some(json!(["*"])), "other", true),
        (Some(json!(["."])), "client", true),
        (Some(json!(["."])), "other", false),
        (Some(json!(["other", "third"])), "other", true),
        (Some(json!(["third"])), "client", false),
    ];
    for (export_to, namespace, visible) in cases {
        let mut spec = json!({
            "hosts": ["api.example.com"],
            "ports": [{"number": 80, "name": "http"}],
        });
        if let Some(export_to) = export_to.clone() {
            spec["exportTo"] = export_to;
        }
        let read = read(entry(spec), "client").expect("valid");
        assert_eq!(
            read.visible_to(namespace),
            visible,
            "{export_to:?} {namespace}"
        );
    }
}

#[test]
fn problems_name_their_field() {
    let cases = [
        (
            json!({"ports": [{"number": 80, "name": "http"}]}),
            "spec.hosts: required",
        ),
        (
            json!({"hosts": ["*.example.com"], "ports": [{"number": 80, "name": "http"}]}),
            "spec.hosts[0]: wildcard hosts are not supported yet",
        ),
        (json!({"hosts": ["a.example"]}), "spec.ports: required"),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 70000, "name": "http"}]}),
            "spec.ports[0].number: 70000 is not a port number",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80}]}),
            "spec.ports[0].name: required",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "resolution": "DNS",
                   "endpoints": [{"address": "bad name.example"}]}),
            "spec.endpoints[0].address: \"bad name.example\" is neither an IP address nor a DNS name",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "resolution": "LOOKUP"}),
            "spec.resolution: \"LOOKUP\" is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC"}),
            "spec.endpoints: resolution STATIC needs endpoints",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "addresses": ["10.0.0.0/8"]}),
            "spec.addresses[0]: CIDR ranges are not supported yet",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC",
                   "endpoints": [{"address": "db.example"}]}),
            "spec.endpoints[0].address: \"db.example\" is not an IP address (names need resolution DNS)",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC",
                   "endpoints": [{"address": "198.18.0.1", "ports": {"grpc": 9090}}]}),
            "spec.endpoints[0].ports.grpc: no port of the ServiceEntry is named \"grpc\"",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "location": "OUTSIDE"}),
            "spec.location: \"OUTSIDE\" is neither MESH_EXTERNAL nor MESH_INTERNAL",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "workloadSelector": {"labels": {"app": "vm"}}}),
            "spec.workloadSelector: selecting workloads (WorkloadEntry) is not supported yet",
        ),
        (
            json!({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}], "hosst": []}),
            "spec.hosst: unknown field",
        ),
    ];
    for (spec, expected) in cases {
        let err = read(entry(spec), "client").expect_err("invalid");
        assert!(err.contains(expected), "{expected:?} missing from {err}");
    }
}
