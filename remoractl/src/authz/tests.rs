use std::fs;

use super::*;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin, namespace: team-a}
spec:
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin}}
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        ports: [{containerPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-allow-curl, namespace: team-a}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/team-a/sa/curl]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: team-a}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-posts
  namespace: team-a
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: [POST]}}]
"#;

fn check(dir: &std::path::Path, from: &str, method: &str, path: &str) -> Check {
    Check {
        config_dirs: vec![dir.to_owned()],
        to: "team-a/httpbin".into(),
        from: from.into(),
        method: method.into(),
        path: path.into(),
        port: None,
        host: None,
        headers: Vec::new(),
        jwt: None,
        source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        tcp: false,
    }
}

#[test]
fn explains_each_step_of_the_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("app.yaml"), MANIFESTS).expect("write");
    let curl_a = "spiffe://cluster.local/ns/team-a/sa/curl";
    let cases = [
        (
            check(dir.path(), curl_a, "GET", "/get"),
            "ALLOW\nby: ALLOW policy team-a/httpbin-allow-curl, rule 0\n",
        ),
        (
            check(dir.path(), "spiffe://cluster.local/ns/team-b/sa/curl", "GET", "/get"),
            "DENY\nby: no ALLOW policy matched (denied by default)\n",
        ),
        (
            check(dir.path(), curl_a, "GET", "/public/../admin/x"),
            "DENY\nby: DENY policy team-a/deny-admin, rule 0\n",
        ),
        (
            check(dir.path(), curl_a, "POST", "/post"),
            "ALLOW\nby: ALLOW policy team-a/httpbin-allow-curl, rule 0\naudit: team-a/audit-posts (AUDIT policy team-a/audit-posts, rule 0)\n",
        ),
        (
            check(dir.path(), "plaintext", "GET", "/get"),
            "DENY\nby: no ALLOW policy matched (denied by default)\n",
        ),
    ];
    for (check, expected) in cases {
        assert_eq!(
            check.run().expect("decided"),
            expected,
            "{} {}",
            check.from,
            check.path
        );
    }
}

#[test]
fn bad_input_names_the_flag_or_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("app.yaml"), MANIFESTS).expect("write");
    let mut missing = check(dir.path(), "plaintext", "GET", "/");
    missing.to = "team-a/nothing".into();
    let mut shape = check(dir.path(), "plaintext", "GET", "/");
    shape.to = "httpbin".into();
    let cases = [
        (
            missing,
            "--to team-a/nothing: no Deployment or Pod team-a/nothing",
        ),
        (shape, "--to \"httpbin\": expected NAMESPACE/NAME"),
        (check(dir.path(), "curl", "GET", "/"), "--from \"curl\""),
        (
            check(dir.path(), "plaintext", "GET", "no-slash"),
            "--path \"no-slash\"",
        ),
    ];
    for (check, expected) in cases {
        let error = format!("{:#}", check.run().expect_err("refused"));
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }
}
