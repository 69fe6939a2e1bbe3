//! Reading the security kinds and selecting them per pod: Istio's precedence, scopes and
//! checks, and the most restrictive form a rejected policy is enforced in.

use std::collections::BTreeMap;

use super::*;

fn read_yaml(text: &str) -> Read {
    let value: Value = serde_saphyr::from_str(text).expect("YAML");
    let kind = value["kind"].as_str().expect("kind").to_owned();
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = value["metadata"]["name"].as_str().expect("name").to_owned();
    read(&kind, value, &namespace, &name)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn kept(texts: &[&str]) -> Vec<SecurityPolicy> {
    texts
        .iter()
        .map(|text| {
            let read = read_yaml(text);
            assert!(read.problem.is_none(), "{:?}", read.problem);
            read.kept
        })
        .collect()
}

const ALLOW_CURL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-allow-curl, namespace: team-a}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/team-a/sa/curl"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/orders*"]
        ports: ["8080"]
    when:
    - key: request.headers[x-team]
      values: ["a"]
"#;

#[test]
fn reads_an_authorization_policy_as_istio_spells_it() {
    let read = read_yaml(ALLOW_CURL);
    assert!(read.problem.is_none(), "{:?}", read.problem);
    let SecurityPolicy::Authorization(scope, policy) = read.kept else {
        panic!("an AuthorizationPolicy");
    };
    assert_eq!(scope.full_name(), "team-a/httpbin-allow-curl");
    assert_eq!(policy.action, "ALLOW");
    let rule = &policy.rules[0];
    assert_eq!(rule.from[0].principals, ["cluster.local/ns/team-a/sa/curl"]);
    assert_eq!(rule.to[0].paths, ["/orders*"]);
    assert_eq!(rule.when[0].key, "request.headers[x-team]");
}

#[test]
fn rejections_name_the_field_and_fail_closed() {
    let policy = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
        )
    };
    let cases = [
        (policy("  action: DENY\n"), "spec.rules: a DENY policy needs at least one rule", "DENY"),
        (policy("  rules:\n  - from: []\n"), "spec.rules[0].from: must not be empty when set", "ALLOW"),
        (policy("  rules:\n  - from:\n    - {}\n"), "spec.rules[0].from[0].source: required", "ALLOW"),
        (policy("  rules:\n  - to:\n    - operation: {}\n"), "spec.rules[0].to[0].operation: must set at least one field", "ALLOW"),
        (policy("  rules:\n  - from:\n    - source: {principal: [x]}\n"), "unknown field `principal`", "ALLOW"),
        (policy("  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"\"]}\n"), "spec.rules[0].to[0].operation.paths[0]: must not be empty", "DENY"),
        (policy("  rules:\n  - when:\n    - key: experimental.envoy.filters.x\n      values: [a]\n"), "experimental Envoy filter metadata is not supported", "ALLOW"),
        (policy("  action: ALLOW\n  provider: {name: opa}\n  rules: [{}]\n"), "spec.provider: only a CUSTOM policy names a provider", "ALLOW"),
        (policy("  selector: {matchLabels: {app: a}}\n  targetRef: {kind: Gateway, name: g}\n  rules: [{}]\n"), "spec.selector: cannot be combined with targetRef", "ALLOW"),
    ];
    for (text, expected, enforced_action) in cases {
        let read = read_yaml(&text);
        let problem = read.problem.expect("rejected");
        assert!(
            problem.contains(expected),
            "{expected:?} not in {problem:?}"
        );
        let SecurityPolicy::Authorization(_, kept) = read.kept else {
            panic!("kept as an AuthorizationPolicy");
        };
        assert_eq!(kept.action, enforced_action, "{text}");
        assert!(!kept.rejected.is_empty());
        // Most restrictive: an ALLOW matching nothing, a DENY matching everything.
        let expected_rules = usize::from(enforced_action == "DENY");
        assert_eq!(kept.rules.len(), expected_rules, "{text}");
    }
}

#[test]
fn custom_is_kept_and_reported() {
    let read = read_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: ns}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{to: [{operation: {paths: [\"/x\"]}}]}]\n",
    );
    assert!(read
        .problem
        .expect("reported")
        .contains("CUSTOM is not supported yet"));
    let SecurityPolicy::Authorization(_, policy) = read.kept else {
        panic!("kept");
    };
    assert_eq!(
        (policy.action.as_str(), policy.provider.as_str()),
        ("CUSTOM", "opa")
    );
}

#[test]
fn dry_run_annotation() {
    let text = ALLOW_CURL.replace(
        "metadata: {name: httpbin-allow-curl, namespace: team-a}",
        "metadata:\n  name: d\n  namespace: team-a\n  annotations: {istio.io/dry-run: \"true\"}",
    );
    let SecurityPolicy::Authorization(_, policy) = read_yaml(&text).kept else {
        panic!("kept");
    };
    assert!(policy.dry_run);
    let bad = text.replace("\"true\"", "\"yes\"");
    assert!(read_yaml(&bad)
        .problem
        .expect("rejected")
        .contains("istio.io/dry-run"));
}

#[test]
fn authorization_scope_is_namespace_plus_root() {
    let policies = kept(&[
        ALLOW_CURL,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ns-wide, namespace: team-a}\nspec: {}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other, namespace: team-b}\nspec: {}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: waypoint, namespace: team-a}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: httpbin}]\n  rules: [{}]\n",
    ]);
    let names = |security: &Security| {
        security
            .authorization_policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect::<Vec<_>>()
    };
    let httpbin = select(
        policies.iter(),
        "team-a",
        &labels(&[("app", "httpbin")]),
        "istio-system",
    );
    assert_eq!(
        names(&httpbin),
        [
            "team-a/httpbin-allow-curl",
            "team-a/ns-wide",
            "istio-system/mesh"
        ]
    );
    let curl = select(
        policies.iter(),
        "team-a",
        &labels(&[("app", "curl")]),
        "istio-system",
    );
    assert_eq!(names(&curl), ["team-a/ns-wide", "istio-system/mesh"]);
    let b = select(policies.iter(), "team-b", &labels(&[]), "istio-system");
    assert_eq!(names(&b), ["istio-system/mesh", "team-b/other"]);
}

fn peer_authentication(namespace: &str, name: &str, spec: &str, created: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  creationTimestamp: \"{created}\"\nspec:\n{spec}"
    )
}

#[test]
fn peer_authentication_precedence() {
    let mesh = peer_authentication(
        "istio-system",
        "mesh",
        "  mtls: {mode: STRICT}\n",
        "2026-01-01T00:00:00Z",
    );
    let mesh_selector = peer_authentication(
        "istio-system",
        "ignored",
        "  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: DISABLE}\n",
        "2026-01-01T00:00:00Z",
    );
    let namespace = peer_authentication(
        "team-a",
        "ns",
        "  mtls: {mode: PERMISSIVE}\n",
        "2026-01-02T00:00:00Z",
    );
    let workload = peer_authentication(
        "team-a",
        "httpbin",
        "  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n    9090: {mode: UNSET}\n",
        "2026-01-03T00:00:00Z",
    );
    let newer = peer_authentication(
        "team-a",
        "a-newer",
        "  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: STRICT}\n",
        "2026-02-01T00:00:00Z",
    );
    let policies = kept(&[&mesh, &mesh_selector, &namespace, &workload, &newer]);
    let resolve = |namespace: &str, app: &str, ps: &[SecurityPolicy]| {
        let s = select(
            ps.iter(),
            namespace,
            &labels(&[("app", app)]),
            "istio-system",
        );
        let pa = s.peer_authentication.expect("resolved");
        let ports: Vec<(u32, String)> = pa
            .port_mtls
            .iter()
            .map(|p| (p.port, p.mode.clone()))
            .collect();
        (pa.mode, ports, pa.policy)
    };
    // The older workload policy wins over the newer; its UNSET inherits the namespace's mode,
    // its UNSET port the workload's.
    assert_eq!(
        resolve("team-a", "httpbin", &policies),
        (
            "PERMISSIVE".to_owned(),
            vec![
                (8080, "DISABLE".to_owned()),
                (9090, "PERMISSIVE".to_owned())
            ],
            "team-a/httpbin".to_owned()
        )
    );
    assert_eq!(
        resolve("team-a", "curl", &policies),
        ("PERMISSIVE".to_owned(), vec![], "team-a/ns".to_owned())
    );
    // A root-namespace policy with a selector is ignored elsewhere; the mesh's applies.
    assert_eq!(
        resolve("team-b", "httpbin", &policies),
        ("STRICT".to_owned(), vec![], "istio-system/mesh".to_owned())
    );
    assert_eq!(
        resolve("team-b", "httpbin", &[]),
        (String::new(), vec![], String::new())
    );
}

#[test]
fn peer_authentication_checks() {
    let cases = [
        (
            "  mtls: {mode: ENABLED}\n",
            "spec.mtls.mode: \"ENABLED\" is not one of",
        ),
        (
            "  portLevelMtls:\n    8080: {mode: STRICT}\n",
            "spec.portLevelMtls: needs a workload selector",
        ),
        (
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    http: {mode: STRICT}\n",
            "\"http\" is not a port number",
        ),
    ];
    for (spec, expected) in cases {
        let read = read_yaml(&peer_authentication(
            "ns",
            "p",
            spec,
            "2026-01-01T00:00:00Z",
        ));
        let problem = read.problem.expect("rejected");
        assert!(
            problem.contains(expected),
            "{expected:?} not in {problem:?}"
        );
        let SecurityPolicy::Peer(_, mtls) = read.kept else {
            panic!("kept");
        };
        assert_eq!(mtls.mode.as_deref(), Some("STRICT"), "fails closed");
    }
}

#[test]
fn request_authentication_checks() {
    let ra = |rules: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: ns}}\nspec:\n  jwtRules:\n{rules}")
    };
    let jwks = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}"#;
    let good = ra(&format!("  - issuer: https://issuer\n    jwks: '{jwks}'\n"));
    let read = read_yaml(&good);
    assert!(read.problem.is_none(), "{:?}", read.problem);
    let cases = [
        (
            "  - jwks: '{}'\n".to_owned(),
            "spec.jwtRules[0].issuer: required",
        ),
        (
            "  - issuer: i\n".to_owned(),
            "spec.jwtRules[0].jwksUri: jwks or jwksUri is required",
        ),
        (
            "  - issuer: i\n    jwks: 'nope'\n".to_owned(),
            "spec.jwtRules[0].jwks: not a JSON Web Key Set",
        ),
        (
            format!("  - issuer: i\n    jwks: '{jwks}'\n  - issuer: i\n    jwks: '{jwks}'\n"),
            "spec.jwtRules[1].issuer: \"i\" is listed twice",
        ),
    ];
    for (rules, expected) in cases {
        let read = read_yaml(&ra(&rules));
        let problem = read.problem.expect("rejected");
        assert!(
            problem.contains(expected),
            "{expected:?} not in {problem:?}"
        );
        let SecurityPolicy::Request(_, kept) = read.kept else {
            panic!("kept");
        };
        assert!(!kept.rejected.is_empty(), "fails every token");
    }
}
