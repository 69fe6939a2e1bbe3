use std::fs;

use super::*;

/// A shop: `reviews` with two versions behind a VirtualService (API calls with a tenant
/// header to v2, the rest split 90/10, a mirror, retries and a timeout), `sleep` calling it.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.9
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep, namespace: shop}
spec:
  selector: {matchLabels: {app: sleep}}
  template:
    metadata: {labels: {app: sleep}}
    spec:
      containers: [{name: sleep, image: curl}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}, headers: {x-tenant: {exact: gold}}}]
    route: [{destination: {host: reviews, subset: v2}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,409"}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 308}
  - match: [{uri: {prefix: /}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v3}, weight: 10}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 25}
"#;

fn check(dir: &std::path::Path, url: &str, headers: &[&str]) -> anyhow::Result<String> {
    Check {
        config_dirs: vec![dir.to_owned()],
        from: "shop/sleep".into(),
        url: url.into(),
        method: "GET".into(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
    }
    .run()
}

#[test]
fn explains_the_route_a_request_takes() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("shop.yaml"), MANIFESTS).expect("write");
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "http://reviews:9080/api/items",
            &["x-tenant=gold"],
            &[
                "route: VirtualService shop/reviews http[0] (matches[0])",
                "100% reviews.shop.svc.cluster.local:9080 (subset v2) [RoundRobin]: none ready (503)",
                "timeout: 2s",
                "retries: 3 on 5xx,retriable-status-codes,409; per try timeout 500ms",
            ],
        ),
        (
            "http://reviews.shop.svc.cluster.local:9080/api/items",
            &[],
            &[
                "route: VirtualService shop/reviews http[2] (matches[0])",
                "90% reviews.shop.svc.cluster.local:9080 (subset v1)",
                "10% unresolved (503): subset \"v3\" of reviews.shop.svc.cluster.local:9080 is not defined",
                "mirror: reviews.shop.svc.cluster.local:9080 (subset v2), 25% of requests",
                "timeout: none",
                "retries: 2 on connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable",
            ],
        ),
        (
            "http://10.96.0.9:9080/old/page?x=1",
            &[],
            &["redirect: 308 to http://10.96.0.9:9080/new?x=1"],
        ),
        (
            "http://reviews.shop:9080/",
            &[],
            &["route: VirtualService shop/reviews http[2]"],
        ),
    ];
    for (url, headers, expected) in cases {
        let out = check(dir.path(), url, headers).expect("explained");
        for line in expected {
            assert!(out.contains(line), "{url}: {line:?} missing from\n{out}");
        }
    }
}

#[test]
fn bad_input_names_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("shop.yaml"), MANIFESTS).expect("write");
    let cases = [
        (
            "http://reviews:9080/",
            "shop/nobody",
            "--from shop/nobody: no Deployment or Pod",
        ),
        (
            "http://ratings:9080/",
            "shop/sleep",
            "no Service port ratings:9080",
        ),
        ("https://reviews:9080/", "shop/sleep", "plain http://"),
        ("not a url", "shop/sleep", "--url \"not a url\""),
    ];
    for (url, from, expected) in cases {
        let err = Check {
            config_dirs: vec![dir.path().to_owned()],
            from: from.into(),
            url: url.into(),
            method: "GET".into(),
            headers: Vec::new(),
        }
        .run()
        .expect_err("refused");
        assert!(
            format!("{err:#}").contains(expected),
            "{expected:?} missing from {err:#}"
        );
    }
}
