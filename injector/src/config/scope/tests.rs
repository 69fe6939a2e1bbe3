use serde_json::json;

use super::*;

fn sidecar(namespace: &str, name: &str, spec: Value) -> Result<Scope, String> {
    read(
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }),
        namespace,
        name,
    )
}

#[test]
fn egress_hosts_decide_what_is_in_scope() {
    let scope = sidecar(
        "shop",
        "default",
        json!({"egress": [{"hosts": ["./*", "istio-system/*", "*/api.example.com", "data/*.svc.cluster.local"]}]}),
    )
    .expect("valid");
    let cases = [
        ("shop", "cart.shop.svc.cluster.local", true),
        (
            "istio-system",
            "istiod.istio-system.svc.cluster.local",
            true,
        ),
        ("partners", "api.example.com", true),
        ("partners", "other.example.com", false),
        ("data", "db.data.svc.cluster.local", true),
        ("data", "db.data.example.com", false),
        ("payments", "pay.payments.svc.cluster.local", false),
    ];
    for (namespace, host, expected) in cases {
        assert_eq!(
            scope.includes("shop", namespace, host),
            expected,
            "{namespace}/{host}"
        );
    }
    // No egress at all: everything, as Istio's default listener.
    let open = sidecar("shop", "open", json!({})).expect("valid");
    assert!(open.includes("shop", "payments", "pay.payments.svc.cluster.local"));
    // `~/*`: nothing.
    let none = sidecar("shop", "none", json!({"egress": [{"hosts": ["~/*"]}]})).expect("valid");
    assert!(!none.includes("shop", "shop", "cart.shop.svc.cluster.local"));
    // The mesh-wide default in the root namespace: `.` is each workload's own namespace.
    let mesh = sidecar(
        "istio-system",
        "default",
        json!({"egress": [{"hosts": ["./*", "istio-system/*"]}]}),
    )
    .expect("valid");
    assert!(mesh.includes("shop", "shop", "cart.shop.svc.cluster.local"));
    assert!(mesh.includes(
        "shop",
        "istio-system",
        "istiod.istio-system.svc.cluster.local"
    ));
    assert!(!mesh.includes("shop", "payments", "pay.payments.svc.cluster.local"));
}

#[test]
fn what_is_not_acted_on_is_refused_naming_the_field() {
    let cases = [
        (
            json!({"egress": [{"hosts": ["cart"]}]}),
            "spec.egress[0].hosts[0]: \"cart\" is not NAMESPACE/DNSNAME",
        ),
        (
            json!({"egress": [{"hosts": ["./*b.com"]}]}),
            "spec.egress[0].hosts[0]: \"./*b.com\": a wildcard is `*` or `*.SUFFIX`",
        ),
        (
            json!({"egress": [{"hosts": ["./a*b"]}]}),
            "spec.egress[0].hosts[0]: \"./a*b\": \"a*b\" is not a host name",
        ),
        (
            json!({"egress": [{"hosts": []}]}),
            "spec.egress[0].hosts: required",
        ),
        (
            json!({"egress": [{"port": {"number": 80}, "hosts": ["./*"]}]}),
            "spec.egress[0].port: an egress listener on one port is not supported yet",
        ),
        (
            json!({"ingress": [{"port": {"number": 80}}]}),
            "spec.ingress: configuring inbound listeners is not supported yet",
        ),
        (
            json!({"outboundTrafficPolicy": {"mode": "SOMETIMES"}}),
            "spec.outboundTrafficPolicy.mode: \"SOMETIMES\" is neither ALLOW_ANY nor REGISTRY_ONLY",
        ),
        (json!({"egres": []}), "spec.egres: unknown field `egres`"),
    ];
    for (spec, expected) in cases {
        let error = sidecar("shop", "bad", spec).expect_err(expected);
        assert!(error.starts_with(expected), "{error}");
    }
    let policy = sidecar(
        "shop",
        "closed",
        json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    )
    .expect("valid");
    assert_eq!(policy.outbound_policy.as_deref(), Some("REGISTRY_ONLY"));
}

#[test]
fn the_selecting_sidecar_wins_then_the_namespace_then_the_root() {
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let scopes = [
        sidecar("istio-system", "mesh", json!({})).expect("valid"),
        sidecar("shop", "namespace", json!({})).expect("valid"),
        sidecar(
            "shop",
            "web",
            json!({"workloadSelector": {"labels": {"app": "web"}}}),
        )
        .expect("valid"),
        sidecar(
            "shop",
            "api",
            json!({"workloadSelector": {"labels": {"app": "api"}}}),
        )
        .expect("valid"),
        sidecar("other", "namespace", json!({})).expect("valid"),
    ];
    let chosen = |namespace: &str, labels: &BTreeMap<String, String>| {
        select(&scopes, namespace, labels, "istio-system").map(|s| s.key())
    };
    let key = |ns: &str, name: &str| Some((ns.to_owned(), name.to_owned()));
    assert_eq!(chosen("shop", &labels), key("shop", "web"));
    assert_eq!(chosen("shop", &BTreeMap::new()), key("shop", "namespace"));
    assert_eq!(chosen("other", &labels), key("other", "namespace"));
    assert_eq!(chosen("payments", &labels), key("istio-system", "mesh"));
    assert_eq!(
        select(&scopes[1..2], "payments", &labels, "istio-system"),
        None
    );
    // Two that select: the older, whatever their names.
    let dated = |name: &str, created: &str| {
        read(
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "Sidecar",
                "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
                "spec": {"workloadSelector": {"labels": {"app": "web"}}},
            }),
            "shop",
            name,
        )
        .expect("valid")
    };
    let pair = [
        dated("aa", "2021-01-01T00:00:00Z"),
        dated("zz", "2020-01-01T00:00:00Z"),
    ];
    assert_eq!(
        select(&pair, "shop", &labels, "istio-system").map(|s| s.key()),
        key("shop", "zz")
    );
}
