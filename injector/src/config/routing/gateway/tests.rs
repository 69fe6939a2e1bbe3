//! Reading HTTPRoute, GRPCRoute and ReferenceGrant (defaults, every rejection naming its
//! field) and translating routes into a Service port's table: attachment (producer, consumer,
//! port), precedence (each step of the order), gRPC matches, backends, filters, timeouts and
//! retries.

use remora_api::proto::config::string_match::Kind;
use serde_json::json;

use super::{route::string_match, syntax::parse_duration, *};

fn value(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("YAML")
}

fn read_yaml(text: &str) -> Result<GatewayObject, String> {
    let value = value(text);
    let kind = value["kind"].as_str().expect("kind").to_owned();
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = value["metadata"]["name"].as_str().expect("name").to_owned();
    read(&kind, value, &namespace, &name)
}

fn route(text: &str) -> Route {
    match read_yaml(text) {
        Ok(GatewayObject::Route(route)) => route,
        other => panic!("a route: {other:?}"),
    }
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|line| format!("{:by$}{line}\n", ""))
        .collect()
}

/// An HTTPRoute `ns/r` attached to Service `ns/svc` with `rules` (a YAML list).
fn http_rules(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: svc}}\n  rules:\n{}",
        indent(rules, 2)
    )
}

/// A GRPCRoute `ns/g` attached to Service `ns/svc` with `rules`.
fn grpc_rules(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: ns}}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: svc}}\n  rules:\n{}",
        indent(rules, 2)
    )
}

/// The table clients in `ns` get for `ns/svc` port 80.
fn table_of(routes: &[&Route]) -> Vec<proto::HttpRoute> {
    table(routes, &[], "ns", "svc", 80, "ns").expect("routes attach")
}

/// The routes of a one-route table.
fn translated(text: &str) -> Vec<proto::HttpRoute> {
    let route = route(text);
    table_of(&[&route])
}

fn rejection(text: &str) -> String {
    match read_yaml(text) {
        Err(reason) => reason,
        Ok(object) => panic!("rejected: {object:?}"),
    }
}

fn exact(value: &str) -> Option<proto::StringMatch> {
    Some(string_match(Kind::Exact(value.to_owned())))
}

fn path_prefix(value: &str) -> Option<proto::StringMatch> {
    Some(string_match(Kind::PathPrefix(value.to_owned())))
}

fn regex(value: &str) -> Option<proto::StringMatch> {
    Some(string_match(Kind::Regex(value.to_owned())))
}

fn header(name: &str, value: &str) -> proto::Header {
    proto::Header {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// `namespace/name[rule] <path>`, for comparing whole tables at a glance.
fn describe(route: &proto::HttpRoute) -> String {
    let path = match route
        .matches
        .first()
        .and_then(|m| m.path.as_ref())
        .and_then(|p| p.kind.as_ref())
    {
        Some(Kind::Exact(v)) => format!("exact {v}"),
        Some(Kind::Prefix(v)) => format!("prefix {v}"),
        Some(Kind::PathPrefix(v)) => format!("pathPrefix {v}"),
        Some(Kind::Regex(v)) => format!("regex {v}"),
        None => "any".to_owned(),
    };
    format!("{}/{}[{}] {path}", route.namespace, route.name, route.rule)
}

#[test]
fn reads_the_kinds_in_their_served_versions() {
    let cases = [
        ("gateway.networking.k8s.io/v1", "HTTPRoute", true),
        ("gateway.networking.k8s.io/v1beta1", "HTTPRoute", true),
        ("gateway.networking.k8s.io/v1", "GRPCRoute", true),
        ("gateway.networking.k8s.io/v1beta1", "GRPCRoute", false),
        ("gateway.networking.k8s.io/v1alpha2", "GRPCRoute", false),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", true),
        ("gateway.networking.k8s.io/v1", "ReferenceGrant", true),
        (
            "gateway.networking.k8s.io/v1alpha2",
            "ReferenceGrant",
            false,
        ),
        ("gateway.networking.k8s.io/v1", "Gateway", false),
        ("gateway.networking.k8s.io/v1", "TCPRoute", false),
        ("networking.istio.io/v1", "HTTPRoute", false),
        ("gateway.networking.k8s.io", "HTTPRoute", false),
        ("v1", "Service", false),
    ];
    for (api_version, kind, expected) in cases {
        assert_eq!(
            is_gateway_kind(api_version, kind),
            expected,
            "{api_version} {kind}"
        );
    }
}

#[test]
fn translates_a_rule_per_match_with_the_crd_defaults() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata:
  name: r
  namespace: ns
  creationTimestamp: "2024-05-01T10:00:00Z"
spec:
  hostnames: [svc.example.com]
  parentRefs:
  - {group: "", kind: Service, name: svc, port: 80}
  - {name: ingress, namespace: gateways, sectionName: http}
  rules:
  - name: first
    matches:
    - path: {type: Exact, value: /exact}
      method: POST
      headers:
      - {name: X-Team, value: a}
      - {name: X-Version, type: RegularExpression, value: "v[0-9]+"}
      queryParams:
      - {name: Debug, value: "1"}
    - path: {value: /prefix/}
    - headers:
      - {name: x-only, value: t}
    backendRefs:
    - {name: backend, port: 8080}
  - {}
"#;
    let route = route(text);
    assert_eq!(
        route.created,
        Some("2024-05-01T10:00:00Z".parse().expect("timestamp"))
    );
    let entries: Vec<&proto::HttpRoute> = route.entries.iter().map(|e| &e.route).collect();
    let backend = proto::RouteBackend {
        host: "backend.ns.svc.cluster.local".to_owned(),
        port: 8080,
        weight: 1,
        ..proto::RouteBackend::default()
    };
    let first = |matched: proto::HttpMatch| proto::HttpRoute {
        kind: "HTTPRoute".to_owned(),
        namespace: "ns".to_owned(),
        name: "r".to_owned(),
        rule: 0,
        matches: vec![matched],
        backends: vec![backend.clone()],
        ..proto::HttpRoute::default()
    };
    let expected = [
        first(proto::HttpMatch {
            path: exact("/exact"),
            headers: vec![
                proto::HeaderMatch {
                    name: "x-team".to_owned(),
                    value: exact("a"),
                    invert: false,
                },
                proto::HeaderMatch {
                    name: "x-version".to_owned(),
                    value: regex("v[0-9]+"),
                    invert: false,
                },
            ],
            query_params: vec![proto::HeaderMatch {
                name: "Debug".to_owned(),
                value: exact("1"),
                invert: false,
            }],
            method: "POST".to_owned(),
            authority: None,
        }),
        first(proto::HttpMatch {
            path: path_prefix("/prefix"),
            ..proto::HttpMatch::default()
        }),
        first(proto::HttpMatch {
            path: path_prefix("/"),
            headers: vec![proto::HeaderMatch {
                name: "x-only".to_owned(),
                value: exact("t"),
                invert: false,
            }],
            ..proto::HttpMatch::default()
        }),
        proto::HttpRoute {
            kind: "HTTPRoute".to_owned(),
            namespace: "ns".to_owned(),
            name: "r".to_owned(),
            rule: 1,
            matches: vec![proto::HttpMatch {
                path: path_prefix("/"),
                ..proto::HttpMatch::default()
            }],
            ..proto::HttpRoute::default()
        },
    ];
    assert_eq!(entries, expected.iter().collect::<Vec<_>>());
    let matches: Vec<u32> = route.entries.iter().map(|e| e.match_index).collect();
    assert_eq!(matches, [0, 1, 2, 0]);
    assert_eq!(route.parents().collect::<Vec<_>>(), [("ns", "svc")]);
}

#[test]
fn an_httproute_without_rules_gets_the_crd_default_rule() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: svc}\n";
    let table = translated(text);
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].matches[0].path, path_prefix("/"));
    assert!(table[0].backends.is_empty(), "answered 500");
}

#[test]
fn rejections_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "- matches:\n  - path: {type: Foo, value: /a}\n",
            "spec.rules[0].matches[0].path.type: \"Foo\" is not one of Exact, PathPrefix, RegularExpression",
        ),
        (
            "- matches:\n  - path: {type: Exact, value: a}\n",
            "spec.rules[0].matches[0].path.value: \"a\" does not start with /",
        ),
        (
            "- matches:\n  - path: {value: /a//b}\n",
            "spec.rules[0].matches[0].path.value: \"/a//b\" contains //",
        ),
        (
            "- matches:\n  - path: {value: /a/./b}\n",
            "path.value: \"/a/./b\" contains /./",
        ),
        (
            "- matches:\n  - path: {value: /a/../b}\n",
            "path.value: \"/a/../b\" contains /../",
        ),
        (
            "- matches:\n  - path: {value: /a%2fb}\n",
            "path.value: \"/a%2fb\" contains %2f",
        ),
        (
            "- matches:\n  - path: {value: /a%2Fb}\n",
            "path.value: \"/a%2Fb\" contains %2F",
        ),
        (
            "- matches:\n  - path: {value: \"/a#b\"}\n",
            "path.value: \"/a#b\" contains #",
        ),
        (
            "- matches:\n  - path: {type: Exact, value: /a/..}\n",
            "path.value: \"/a/..\" ends with /. or /..",
        ),
        (
            "- matches:\n  - path: {value: /a/.}\n",
            "path.value: \"/a/.\" ends with /. or /..",
        ),
        (
            "- matches:\n  - path: {value: \"/a b\"}\n",
            "path.value: \"/a b\" has a character a path cannot hold unescaped",
        ),
        (
            "- matches:\n  - path: {value: /a%zz}\n",
            "path.value: \"/a%zz\" has a % not followed by two hex digits",
        ),
        (
            "- matches:\n  - path: {type: RegularExpression, value: \"/a[\"}\n",
            "spec.rules[0].matches[0].path.value: \"/a[\" is not a regular expression: unclosed character class",
        ),
        (
            "- matches:\n  - headers:\n    - {name: x-a, type: RegularExpression, value: \"(\"}\n",
            "spec.rules[0].matches[0].headers[0].value: \"(\" is not a regular expression",
        ),
        (
            "- matches:\n  - queryParams:\n    - {name: q, type: RegularExpression, value: \"*\"}\n",
            "spec.rules[0].matches[0].queryParams[0].value: \"*\" is not a regular expression",
        ),
        (
            "- matches:\n  - headers:\n    - {name: x-a, value: \"1\"}\n    - {name: x-a, value: \"2\"}\n",
            "spec.rules[0].matches[0].headers[1].name: \"x-a\" is listed twice",
        ),
        (
            "- matches:\n  - queryParams:\n    - {name: q, value: \"1\"}\n    - {name: q, value: \"2\"}\n",
            "spec.rules[0].matches[0].queryParams[1].name: \"q\" is listed twice",
        ),
        (
            "- matches:\n  - headers:\n    - {name: x-a, type: Prefix, value: \"1\"}\n",
            "spec.rules[0].matches[0].headers[0].type: \"Prefix\" is not one of Exact, RegularExpression",
        ),
        (
            "- matches:\n  - headers:\n    - {name: \"x a\", value: \"1\"}\n",
            "spec.rules[0].matches[0].headers[0].name: \"x a\" is not a header name",
        ),
        (
            "- matches:\n  - headers:\n    - {name: x-a, value: \"\"}\n",
            "spec.rules[0].matches[0].headers[0].value: required",
        ),
        (
            "- matches:\n  - method: get\n",
            "spec.rules[0].matches[0].method: \"get\" is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
        ),
        (
            "- matches:\n  - name: m\n",
            "spec.rules[0].matches[0].name: unknown field `name`",
        ),
        ("- foo: 1\n", "spec.rules[0].foo: unknown field `foo`"),
        (
            "- sessionPersistence: {type: Cookie}\n",
            "spec.rules[0].sessionPersistence: is not supported",
        ),
        (
            "- filters:\n  - {type: CORS, cors: {allowOrigins: [\"*\"]}}\n",
            "spec.rules[0].filters[0].type: CORS is not supported",
        ),
        (
            "- filters:\n  - type: ExtensionRef\n    extensionRef: {group: example.com, kind: Filter, name: f}\n",
            "spec.rules[0].filters[0].type: ExtensionRef is not supported",
        ),
        (
            "- filters:\n  - {type: ExternalAuth}\n",
            "spec.rules[0].filters[0].type: ExternalAuth is not supported",
        ),
        (
            "- filters:\n  - {type: Foo}\n",
            "spec.rules[0].filters[0].type: Foo is not supported",
        ),
        (
            "- filters:\n  - {type: RequestHeaderModifier}\n",
            "spec.rules[0].filters[0].requestHeaderModifier: required by type RequestHeaderModifier",
        ),
        (
            "- filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier: {remove: [x]}\n    responseHeaderModifier: {remove: [x-b]}\n",
            "spec.rules[0].filters[0].responseHeaderModifier: set, but the type is RequestHeaderModifier",
        ),
        (
            "- filters:\n  - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [x]}}\n  - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [x-b]}}\n",
            "spec.rules[0].filters[1].type: RequestHeaderModifier is listed twice",
        ),
        (
            "- filters:\n  - {type: RequestRedirect, requestRedirect: {hostname: example.com}}\n  - {type: URLRewrite, urlRewrite: {hostname: example.com}}\n",
            "spec.rules[0].filters: RequestRedirect and URLRewrite cannot be combined",
        ),
        (
            "- filters:\n  - {type: RequestRedirect, requestRedirect: {hostname: example.com}}\n  backendRefs:\n  - {name: b, port: 80}\n",
            "spec.rules[0].backendRefs: cannot be combined with a RequestRedirect filter",
        ),
        (
            "- matches:\n  - path: {type: Exact, value: /a}\n  filters:\n  - type: URLRewrite\n    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n",
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: needs the rule to have exactly one match, a PathPrefix",
        ),
        (
            "- matches:\n  - path: {value: /a}\n  - path: {value: /b}\n  filters:\n  - type: RequestRedirect\n    requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /c}}\n",
            "spec.rules[0].filters[0].requestRedirect.path.replacePrefixMatch: needs the rule to have exactly one match, a PathPrefix",
        ),
        (
            "- filters:\n  - type: URLRewrite\n    urlRewrite: {path: {type: ReplaceFullPath}}\n",
            "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: required by type ReplaceFullPath",
        ),
        (
            "- filters:\n  - type: URLRewrite\n    urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /a, replacePrefixMatch: /b}}\n",
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: set, but the type is ReplaceFullPath",
        ),
        (
            "- filters:\n  - type: URLRewrite\n    urlRewrite: {path: {type: Regex, replaceFullPath: /a}}\n",
            "spec.rules[0].filters[0].urlRewrite.path.type: \"Regex\" is not one of ReplaceFullPath, ReplacePrefixMatch",
        ),
        (
            "- filters:\n  - {type: URLRewrite, urlRewrite: {hostname: Example.com}}\n",
            "spec.rules[0].filters[0].urlRewrite.hostname: \"Example.com\" is not a hostname",
        ),
        (
            "- filters:\n  - {type: RequestRedirect, requestRedirect: {statusCode: 304}}\n",
            "spec.rules[0].filters[0].requestRedirect.statusCode: 304 is not one of 301, 302, 303, 307, 308",
        ),
        (
            "- filters:\n  - {type: RequestRedirect, requestRedirect: {scheme: ftp}}\n",
            "spec.rules[0].filters[0].requestRedirect.scheme: \"ftp\" is not one of http, https",
        ),
        (
            "- filters:\n  - {type: RequestRedirect, requestRedirect: {port: 0}}\n",
            "spec.rules[0].filters[0].requestRedirect.port: must be between 1 and 65535",
        ),
        (
            "- filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier: {set: [{name: x-a, value: \"a\\u0001b\"}]}\n",
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].value: \"a\\u{1}b\" is not a header value",
        ),
        (
            "- filters:\n  - type: ResponseHeaderModifier\n    responseHeaderModifier: {add: [{name: \"x:a\", value: b}]}\n",
            "spec.rules[0].filters[0].responseHeaderModifier.add[0].name: \"x:a\" is not a header name",
        ),
        (
            "- filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier: {set: [{name: x-a, value: a}, {name: x-a, value: b}]}\n",
            "spec.rules[0].filters[0].requestHeaderModifier.set[1].name: \"x-a\" is listed twice",
        ),
        (
            "- filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier: {remove: [\"a b\"]}\n",
            "spec.rules[0].filters[0].requestHeaderModifier.remove[0]: \"a b\" is not a header name",
        ),
        (
            "- filters:\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: m, port: 80}, percent: 101}\n",
            "spec.rules[0].filters[0].requestMirror.percent: 101 is not between 0 and 100",
        ),
        (
            "- filters:\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: m, port: 80}, percent: 5, fraction: {numerator: 1}}\n",
            "spec.rules[0].filters[0].requestMirror: set percent or fraction, not both",
        ),
        (
            "- filters:\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 3, denominator: 2}}\n",
            "spec.rules[0].filters[0].requestMirror.fraction.numerator: 3 is not between 0 and the denominator (2)",
        ),
        (
            "- filters:\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 0, denominator: 0}}\n",
            "spec.rules[0].filters[0].requestMirror.fraction.denominator: 0 is less than 1",
        ),
        (
            "- filters:\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: m}}\n",
            "spec.rules[0].filters[0].requestMirror.backendRef.port: required for a Service",
        ),
        (
            "- filters:\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: m, port: 80, weight: 1}}\n",
            "spec.rules[0].filters[0].requestMirror.backendRef.weight: unknown field `weight`",
        ),
        (
            "- backendRefs:\n  - {name: b}\n",
            "spec.rules[0].backendRefs[0].port: required for a Service",
        ),
        (
            "- backendRefs:\n  - {name: b.ns.svc.cluster.local, port: 80}\n",
            "spec.rules[0].backendRefs[0].name: \"b.ns.svc.cluster.local\" is a hostname; name the Service",
        ),
        (
            "- backendRefs:\n  - {name: b, port: 80, weight: -1}\n",
            "spec.rules[0].backendRefs[0].weight: -1 is not between 0 and 1000000",
        ),
        (
            "- backendRefs:\n  - {name: b, port: 80, weight: 1000001}\n",
            "spec.rules[0].backendRefs[0].weight: 1000001 is not between 0 and 1000000",
        ),
        (
            "- backendRefs:\n  - {name: b, port: 70000}\n",
            "spec.rules[0].backendRefs[0].port: invalid value",
        ),
        (
            "- backendRefs:\n  - name: b\n    port: 80\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: m, port: 80}}\n",
            "spec.rules[0].backendRefs[0].filters[0].type: RequestMirror is not supported",
        ),
        (
            "- backendRefs:\n  - name: b\n    port: 80\n    filters:\n    - {type: URLRewrite, urlRewrite: {hostname: example.com}}\n",
            "spec.rules[0].backendRefs[0].filters[0].type: URLRewrite is not supported",
        ),
        (
            "- timeouts: {request: 1.5s}\n",
            "spec.rules[0].timeouts.request: \"1.5s\" is not a duration such as 10s, 500ms or 1h30m",
        ),
        (
            "- timeouts: {backendRequest: \"10\"}\n",
            "spec.rules[0].timeouts.backendRequest: \"10\" is not a duration",
        ),
        (
            "- timeouts: {request: 1d}\n",
            "spec.rules[0].timeouts.request: \"1d\" is not a duration",
        ),
        (
            "- timeouts: {request: 1s, backendRequest: 2s}\n",
            "spec.rules[0].timeouts.backendRequest: 2000ms is longer than the request timeout (1000ms)",
        ),
        (
            "- timeouts: {foo: 1s}\n",
            "spec.rules[0].timeouts.foo: unknown field `foo`",
        ),
        (
            "- retry: {attempts: 0}\n",
            "spec.rules[0].retry.attempts: 0 is less than 1",
        ),
        (
            "- retry: {codes: [503, 600]}\n",
            "spec.rules[0].retry.codes[1]: 600 is not between 400 and 599",
        ),
        (
            "- retry: {codes: [503, 503]}\n",
            "spec.rules[0].retry.codes[1]: 503 is listed twice",
        ),
        (
            "- retry: {backoff: fast}\n",
            "spec.rules[0].retry.backoff: \"fast\" is not a duration",
        ),
    ];
    for (rules, expected) in cases {
        let reason = rejection(&http_rules(rules));
        assert!(
            reason.contains(expected),
            "{rules}\n got: {reason}\nwant: {expected}"
        );
    }
}

#[test]
fn rejections_outside_rules_name_the_field() {
    let head = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\n";
    let cases = [
        ("", "spec: required"),
        (
            "spec:\n  rules: []\n",
            "spec.rules: must list at least one rule",
        ),
        ("spec:\n  foo: 1\n", "spec.foo: unknown field `foo`"),
        (
            "spec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: svc, port: 0}\n",
            "spec.parentRefs[0].port: must be between 1 and 65535",
        ),
        (
            "spec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: \"\"}\n",
            "spec.parentRefs[0].name: required",
        ),
        (
            "spec:\n  parentRefs:\n  - {kind: Service, name: svc, weight: 1}\n",
            "spec.parentRefs[0].weight: unknown field `weight`",
        ),
        (
            "spec:\n  hostnames: example.com\n",
            "spec.hostnames: invalid type",
        ),
    ];
    for (rest, expected) in cases {
        let reason = rejection(&format!("{head}{rest}"));
        assert!(
            reason.contains(expected),
            "{rest}\n got: {reason}\nwant: {expected}"
        );
    }
}

#[test]
fn every_problem_is_reported_together() {
    let reason = rejection(&http_rules(
        "- matches:\n  - path: {type: Foo}\n  backendRefs:\n  - {name: b}\n- timeouts: {request: soon}\n",
    ));
    assert_eq!(
        reason,
        "spec.rules[0].matches[0].path.type: \"Foo\" is not one of Exact, PathPrefix, RegularExpression; \
         spec.rules[0].backendRefs[0].port: required for a Service; \
         spec.rules[1].timeouts.request: \"soon\" is not a duration such as 10s, 500ms or 1h30m"
    );
}

#[test]
fn grpc_rejections_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "- matches:\n  - method: {type: Prefix, service: a.B}\n",
            "spec.rules[0].matches[0].method.type: \"Prefix\" is not one of Exact, RegularExpression",
        ),
        (
            "- matches:\n  - method: {}\n",
            "spec.rules[0].matches[0].method: one or both of service and method must be set",
        ),
        (
            "- matches:\n  - method: {service: \"\", method: \"\"}\n",
            "spec.rules[0].matches[0].method: one or both of service and method must be set",
        ),
        (
            "- matches:\n  - method: {service: a/B, method: Get}\n",
            "spec.rules[0].matches[0].method.service: \"a/B\" is not a gRPC service name",
        ),
        (
            "- matches:\n  - method: {service: a.B, method: Get.All}\n",
            "spec.rules[0].matches[0].method.method: \"Get.All\" is not a gRPC method name",
        ),
        (
            "- matches:\n  - method: {type: RegularExpression, service: \"a(\"}\n",
            "spec.rules[0].matches[0].method.service: \"a(\" is not a regular expression",
        ),
        (
            "- matches:\n  - headers:\n    - {name: x-a, value: \"1\"}\n    - {name: x-a, value: \"2\"}\n",
            "spec.rules[0].matches[0].headers[1].name: \"x-a\" is listed twice",
        ),
        (
            "- matches:\n  - method: {service: a.B}\n    path: {value: /}\n",
            "spec.rules[0].matches[0].path: unknown field `path`",
        ),
        (
            "- filters:\n  - {type: RequestRedirect, requestRedirect: {hostname: example.com}}\n",
            "spec.rules[0].filters[0].type: RequestRedirect is not supported",
        ),
        (
            "- filters:\n  - type: ExtensionRef\n    extensionRef: {group: example.com, kind: Filter, name: f}\n",
            "spec.rules[0].filters[0].type: ExtensionRef is not supported",
        ),
        (
            "- timeouts: {request: 1s}\n",
            "spec.rules[0].timeouts: unknown field `timeouts`",
        ),
        (
            "- sessionPersistence: {type: Header, header: {name: x-session}}\n",
            "spec.rules[0].sessionPersistence: is not supported",
        ),
        (
            "- backendRefs:\n  - {name: b}\n",
            "spec.rules[0].backendRefs[0].port: required for a Service",
        ),
    ];
    for (rules, expected) in cases {
        let reason = rejection(&grpc_rules(rules));
        assert!(
            reason.contains(expected),
            "{rules}\n got: {reason}\nwant: {expected}"
        );
    }
}

#[test]
fn reads_and_checks_reference_grants() {
    let grant = |version: &str, spec: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/{version}\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: backends}}\n{spec}"
        )
    };
    let valid = "spec:\n  from:\n  - {group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}\n  to:\n  - {group: \"\", kind: Service, name: b}\n  - {group: \"\", kind: Service}\n";
    for version in ["v1beta1", "v1"] {
        assert!(
            matches!(
                read_yaml(&grant(version, valid)),
                Ok(GatewayObject::Grant(_))
            ),
            "{version}"
        );
    }
    let cases = [
        ("", "spec: required"),
        ("spec:\n  from: []\n  to: []\n", "spec.from: must list at least one source; spec.to: must list at least one target"),
        (
            "spec:\n  from:\n  - {group: \"\", kind: HTTPRoute}\n  to:\n  - {group: \"\", kind: Service}\n",
            "spec.from[0]: missing field `namespace`",
        ),
        (
            "spec:\n  from:\n  - {group: \"\", kind: \"\", namespace: apps}\n  to:\n  - {group: \"\", kind: Service, name: \"\"}\n",
            "spec.from[0].kind: required; spec.to[0].name: required",
        ),
        (
            "spec:\n  from:\n  - {group: \"\", kind: HTTPRoute, namespace: apps}\n  to:\n  - {group: \"\", kind: Service, port: 80}\n",
            "spec.to[0].port: unknown field `port`",
        ),
    ];
    for (spec, expected) in cases {
        let reason = match read_yaml(&grant("v1beta1", spec)) {
            Err(reason) => reason,
            Ok(object) => panic!("rejected: {object:?}"),
        };
        assert!(
            reason.contains(expected),
            "{spec}\n got: {reason}\nwant: {expected}"
        );
    }
}

#[test]
fn reads_json_values_too() {
    let value = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "svc"}],
            "rules": [{"backendRefs": [{"name": "b", "port": 80}]}],
        },
    });
    let Ok(GatewayObject::Route(route)) = read("HTTPRoute", value, "ns", "r") else {
        panic!("a route");
    };
    assert_eq!(route.entries.len(), 1);
    assert_eq!(
        read("Gateway", json!({}), "ns", "g").err().as_deref(),
        Some("kind: \"Gateway\" is not a Gateway API kind read here")
    );
}

/// Routes for the attachment cases: Service `shop/svc`, its namespace's producer routes, and
/// consumer routes from other namespaces.
fn attachment_routes() -> Vec<Route> {
    let doc = |namespace: &str, name: &str, kind: &str, parent: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  parentRefs:\n  - {parent}\n{}",
            if kind == "GRPCRoute" && name == "empty" {
                ""
            } else {
                "  rules:\n  - backendRefs:\n    - {name: svc, namespace: shop, port: 80}\n"
            }
        )
    };
    [
        (
            "shop",
            "producer",
            "HTTPRoute",
            r#"{group: "", kind: Service, name: svc}"#,
        ),
        (
            "shop",
            "port-8080",
            "HTTPRoute",
            r#"{group: "", kind: Service, name: svc, port: 8080}"#,
        ),
        (
            "shop",
            "via-gateway",
            "HTTPRoute",
            r#"{name: ingress, namespace: gateways}"#,
        ),
        (
            "shop",
            "kind-service-gateway-group",
            "HTTPRoute",
            r#"{kind: Service, name: svc}"#,
        ),
        (
            "shop",
            "other-service",
            "HTTPRoute",
            r#"{group: "", kind: Service, name: other}"#,
        ),
        (
            "web",
            "consumer",
            "HTTPRoute",
            r#"{group: "", kind: Service, name: svc, namespace: shop}"#,
        ),
        (
            "web",
            "consumer-grpc",
            "GRPCRoute",
            r#"{group: "", kind: Service, name: svc, namespace: shop}"#,
        ),
        (
            "jobs",
            "empty",
            "GRPCRoute",
            r#"{group: "", kind: Service, name: svc, namespace: shop}"#,
        ),
        (
            "web",
            "own-service",
            "HTTPRoute",
            r#"{group: "", kind: Service, name: svc}"#,
        ),
    ]
    .into_iter()
    .map(|(namespace, name, kind, parent)| route(&doc(namespace, name, kind, parent)))
    .collect()
}

#[test]
fn attaches_producer_and_consumer_routes_per_client_namespace() {
    let routes = attachment_routes();
    let refs: Vec<&Route> = routes.iter().collect();
    // (Service namespace, name, port, client namespace, the routes of its table)
    type Case<'a> = (&'a str, &'a str, u16, &'a str, Option<&'a [&'a str]>);
    let cases: &[Case] = &[
        // Any client gets the producer routes of the Service's namespace.
        ("shop", "svc", 80, "billing", Some(&["shop/producer"])),
        ("shop", "svc", 80, "shop", Some(&["shop/producer"])),
        // A route naming a port applies there only, merged with the others.
        (
            "shop",
            "svc",
            8080,
            "billing",
            Some(&["shop/port-8080", "shop/producer"]),
        ),
        // Consumer routes replace producer routes for clients of their own namespace, HTTP and
        // gRPC alike.
        (
            "shop",
            "svc",
            80,
            "web",
            Some(&["web/consumer", "web/consumer-grpc"]),
        ),
        (
            "shop",
            "svc",
            8080,
            "web",
            Some(&["web/consumer", "web/consumer-grpc"]),
        ),
        // A consumer route without rules attaches nothing, so the producer's apply.
        ("shop", "svc", 80, "jobs", Some(&["shop/producer"])),
        (
            "shop",
            "other",
            80,
            "billing",
            Some(&["shop/other-service"]),
        ),
        // `web/own-service` is the producer route of `web/svc`.
        ("web", "svc", 80, "shop", Some(&["web/own-service"])),
        ("shop", "missing", 80, "billing", None),
    ];
    for (namespace, service, port, client, expected) in cases {
        let table = table(&refs, &[], namespace, service, *port, client);
        let names = table.map(|routes| {
            let mut names: Vec<String> = routes
                .iter()
                .map(|r| format!("{}/{}", r.namespace, r.name))
                .collect();
            names.dedup();
            names
        });
        let expected = expected.map(|e| e.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            names, expected,
            "{namespace}/{service}:{port} from {client}"
        );
    }
}

#[test]
fn parents_lists_each_service_once() {
    let route = route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: web}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: a, port: 80}\n  - {group: \"\", kind: Service, name: a, port: 81}\n  - {group: \"\", kind: Service, name: b, namespace: shop}\n  - {name: gw}\n  - {group: networking.istio.io, kind: ServiceEntry, name: se}\n",
    );
    assert_eq!(
        route.parents().collect::<Vec<_>>(),
        [("web", "a"), ("shop", "b")]
    );
}

/// A route `namespace/name` created at `created` (seconds), or undated.
fn dated(namespace: &str, name: &str, created: Option<i64>) -> Route {
    Route {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        created: created.map(|s| Timestamp::from_second(s).expect("timestamp")),
        parents: Vec::new(),
        entries: Vec::new(),
    }
}

fn entry(matched: proto::HttpMatch, rule: u32, match_index: u32) -> Entry {
    Entry {
        match_index,
        route: proto::HttpRoute {
            rule,
            matches: vec![matched],
            ..proto::HttpRoute::default()
        },
    }
}

/// A match on `path` with `method` (or none), `headers` and `query` counts.
fn matching(
    path: Option<proto::StringMatch>,
    method: &str,
    headers: usize,
    query: usize,
) -> proto::HttpMatch {
    let named = |n: usize| {
        (0..n)
            .map(|i| proto::HeaderMatch {
                name: format!("h{i}"),
                value: exact("v"),
                invert: false,
            })
            .collect()
    };
    proto::HttpMatch {
        path,
        headers: named(headers),
        query_params: named(query),
        method: method.to_owned(),
        authority: None,
    }
}

#[test]
fn precedence_orders_every_step() {
    let prefix = |v: &str| Some(string_match(Kind::Prefix(v.to_owned())));
    let old = Some(1_000);
    let new = Some(2_000);
    // Each case: the first must come before the second, though the second wins every later
    // step (so the step named decides).
    type Case = (&'static str, (Route, Entry), (Route, Entry));
    let cases: Vec<Case> = vec![
        (
            "exact path before a (longer) prefix",
            (
                dated("ns", "z", new),
                entry(matching(exact("/a"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/abcdef"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "prefix before a (longer) regex",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/a"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(regex("/abcdef.*"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "regex before no path (a gRPC match without a method)",
            (
                dated("ns", "z", new),
                entry(matching(regex(".*"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(None, "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "character prefix and segment prefix rank alike: longer first",
            (
                dated("ns", "z", new),
                entry(matching(prefix("/svc.A/"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/svc"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "the longest prefix first",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/foo/bar"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/foo"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "length counts characters, not bytes",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/abc"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/éé"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "a longer exact path first (Istio ranks length for every kind)",
            (
                dated("ns", "z", new),
                entry(matching(exact("/ab"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(exact("/a"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "a longer regex first",
            (
                dated("ns", "z", new),
                entry(matching(regex("/a.+"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(regex("/.+"), "GET", 3, 3), 0, 0),
            ),
        ),
        (
            "a method before none",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/a"), "GET", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "", 3, 3), 0, 0),
            ),
        ),
        (
            "more headers first",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/a"), "GET", 2, 0), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "GET", 1, 3), 0, 0),
            ),
        ),
        (
            "more query parameters first",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/a"), "", 1, 2), 1, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "", 1, 1), 0, 0),
            ),
        ),
        (
            "the older route first",
            (
                dated("ns", "z", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", new),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 0),
            ),
        ),
        (
            "a dated route before an undated one",
            (
                dated("ns", "z", new),
                entry(matching(path_prefix("/a"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "a", None),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 0),
            ),
        ),
        (
            "then by namespace",
            (
                dated("a", "z", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 1, 1),
            ),
            (
                dated("b", "a", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 0),
            ),
        ),
        (
            "then by name",
            (
                dated("ns", "a", None),
                entry(matching(path_prefix("/a"), "", 0, 0), 1, 1),
            ),
            (
                dated("ns", "b", None),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 0),
            ),
        ),
        (
            "then the rule's order",
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 1),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 1, 0),
            ),
        ),
        (
            "then the match's order",
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 0),
            ),
            (
                dated("ns", "a", old),
                entry(matching(path_prefix("/a"), "", 0, 0), 0, 1),
            ),
        ),
    ];
    for (step, (first_route, first), (second_route, second)) in &cases {
        let (a, b) = (
            precedence(first_route, first),
            precedence(second_route, second),
        );
        assert!(a < b, "{step}: {a:?} should come before {b:?}");
    }
}

#[test]
fn tables_merge_routes_in_precedence_order() {
    let older = route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: older, namespace: ns, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: svc}\n  rules:\n  - matches:\n    - path: {value: /api}\n    - path: {type: Exact, value: /api/v1}\n  - matches:\n    - path: {value: /api}\n",
    );
    let newer = route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: newer, namespace: ns, creationTimestamp: \"2024-06-01T00:00:00Z\"}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: svc}\n  rules:\n  - matches:\n    - path: {value: /api/items}\n    - path: {type: RegularExpression, value: \"/api/[0-9]+\"}\n    - path: {value: /api}\n      method: GET\n    - path: {value: /api}\n",
    );
    let grpc = route(&grpc_rules(
        "- matches:\n  - method: {service: shop.Cart, method: Add}\n  - method: {service: shop.Cart}\n  - method: {method: Add}\n  - headers:\n    - {name: x-a, value: b}\n- {}\n",
    ));
    let described: Vec<String> = table_of(&[&newer, &grpc, &older])
        .iter()
        .map(describe)
        .collect();
    assert_eq!(
        described,
        [
            "ns/g[0] exact /shop.Cart/Add",
            "ns/older[0] exact /api/v1",
            "ns/g[0] prefix /shop.Cart/",
            "ns/newer[0] pathPrefix /api/items",
            "ns/newer[0] pathPrefix /api",
            "ns/older[0] pathPrefix /api",
            "ns/older[1] pathPrefix /api",
            "ns/newer[0] pathPrefix /api",
            "ns/newer[0] regex /api/[0-9]+",
            "ns/g[0] regex /[^/]+/Add",
            "ns/g[0] any",
            "ns/g[1] any",
        ]
    );
}

#[test]
fn grpc_methods_become_paths() {
    // (method, its path, paths it takes, paths it does not)
    type Case<'a> = (&'a str, Option<Kind>, &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "{service: shop.Cart, method: Add}",
            Some(Kind::Exact("/shop.Cart/Add".to_owned())),
            &["/shop.Cart/Add"],
            &["/shop.Cart/AddMore", "/shop.CartX/Add"],
        ),
        (
            "{type: Exact, service: shop.Cart}",
            Some(Kind::Prefix("/shop.Cart/".to_owned())),
            &["/shop.Cart/Add", "/shop.Cart/Remove"],
            &["/shop.CartX/Add"],
        ),
        (
            "{method: Add}",
            Some(Kind::Regex("/[^/]+/Add".to_owned())),
            &["/shop.Cart/Add", "/other.Svc/Add"],
            &["/shop.Cart/AddMore", "/Add"],
        ),
        (
            "{type: RegularExpression, service: 'shop\\..*', method: 'Add|Remove'}",
            Some(Kind::Regex("/(?:shop\\..*)/(?:Add|Remove)".to_owned())),
            &["/shop.Cart/Add", "/shop.List/Remove"],
            &["/other.Cart/Add", "/shop.Cart/Get"],
        ),
        (
            "{type: RegularExpression, service: 'shop\\.Cart'}",
            Some(Kind::Regex("/(?:shop\\.Cart)/.+".to_owned())),
            &["/shop.Cart/Add"],
            &["/shop.Cart/", "/shopxCart/Add"],
        ),
        (
            "{type: RegularExpression, method: 'Add.*'}",
            Some(Kind::Regex("/[^/]+/(?:Add.*)".to_owned())),
            &["/shop.Cart/AddMore"],
            &["/shop.Cart/Get"],
        ),
    ];
    for (method, expected, matching, other) in cases {
        let table = translated(&grpc_rules(&format!(
            "- matches:\n  - method: {method}\n    headers:\n    - {{name: X-Tenant, value: a}}\n"
        )));
        let matched = &table[0].matches[0];
        let kind = matched.path.as_ref().and_then(|p| p.kind.clone());
        assert_eq!(&kind, expected, "{method}");
        assert_eq!(matched.headers[0].name, "x-tenant", "{method}");
        let accepts = |path: &str| match &kind {
            Some(Kind::Exact(v)) => path == v,
            Some(Kind::Prefix(v)) => path.starts_with(v.as_str()),
            Some(Kind::Regex(v)) => regex::Regex::new(&format!("^(?:{v})$"))
                .expect("regex")
                .is_match(path),
            _ => true,
        };
        for path in *matching {
            assert!(accepts(path), "{method} should take {path}");
        }
        for path in *other {
            assert!(!accepts(path), "{method} should not take {path}");
        }
    }
}

#[test]
fn grpc_routes_translate_headers_filters_and_backends() {
    let table = translated(&grpc_rules(
        "- filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier: {set: [{name: X-A, value: \"1\"}]}\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: copy, port: 9090}}\n  backendRefs:\n  - {name: v1, port: 9090, weight: 70}\n  - {name: v2, port: 9090, weight: 30}\n  - {name: v3, port: 9090, weight: 0}\n",
    ));
    let expected = proto::HttpRoute {
        kind: "GRPCRoute".to_owned(),
        namespace: "ns".to_owned(),
        name: "g".to_owned(),
        rule: 0,
        matches: vec![proto::HttpMatch::default()],
        backends: vec![
            proto::RouteBackend {
                host: "v1.ns.svc.cluster.local".to_owned(),
                port: 9090,
                weight: 70,
                ..proto::RouteBackend::default()
            },
            proto::RouteBackend {
                host: "v2.ns.svc.cluster.local".to_owned(),
                port: 9090,
                weight: 30,
                ..proto::RouteBackend::default()
            },
        ],
        request_headers: Some(proto::HeaderOps {
            set: vec![header("x-a", "1")],
            ..proto::HeaderOps::default()
        }),
        mirrors: vec![proto::Mirror {
            host: "copy.ns.svc.cluster.local".to_owned(),
            port: 9090,
            subset: String::new(),
            percent: 100.0,
        }],
        ..proto::HttpRoute::default()
    };
    assert_eq!(table, [expected]);
}

#[test]
fn backends_resolve_services_and_keep_the_share_of_the_rest() {
    let table = translated(&http_rules(
        "- backendRefs:\n  - {name: a, port: 80}\n  - {name: b, namespace: other, port: 8080, weight: 3}\n  - {name: c, port: 80, weight: 0}\n  - {group: example.com, kind: Bucket, name: d}\n  - {group: \"\", kind: ConfigMap, name: e, port: 80}\n  - {kind: Service, group: multicluster.x-k8s.io, name: f, port: 80, weight: 2}\n  - name: g\n    port: 80\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {add: [{name: X-Backend, value: g}], remove: [X-Drop]}\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {set: [{name: X-From, value: g}]}\n- {}\n",
    ));
    let backend = |host: &str, port: u32, weight: u32| proto::RouteBackend {
        host: host.to_owned(),
        port,
        weight,
        ..proto::RouteBackend::default()
    };
    assert_eq!(
        table[0].backends,
        [
            backend("a.ns.svc.cluster.local", 80, 1),
            backend("b.other.svc.cluster.local", 8080, 3),
            backend("", 0, 1),
            backend("", 80, 1),
            backend("", 80, 2),
            proto::RouteBackend {
                request_headers: Some(proto::HeaderOps {
                    add: vec![header("x-backend", "g")],
                    remove: vec!["x-drop".to_owned()],
                    ..proto::HeaderOps::default()
                }),
                response_headers: Some(proto::HeaderOps {
                    set: vec![header("x-from", "g")],
                    ..proto::HeaderOps::default()
                }),
                ..backend("g.ns.svc.cluster.local", 80, 1)
            },
        ]
    );
    assert!(table[1].backends.is_empty(), "no backendRefs: 500");
    let zero = translated(&http_rules(
        "- backendRefs:\n  - {name: a, port: 80, weight: 0}\n",
    ));
    assert!(zero[0].backends.is_empty(), "every weight 0: 500");
}

#[test]
fn consumer_routes_reach_other_namespaces_without_a_grant() {
    // GEP-1294: mesh routes need no ReferenceGrant, whether they send to their parent (the
    // GAMMA consumer-route conformance test) or elsewhere.
    let consumer = route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: c, namespace: web}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: echo, namespace: shop}\n  rules:\n  - backendRefs:\n    - {name: echo, namespace: shop, port: 80}\n    - {name: echo-v2, namespace: shop, port: 80}\n",
    );
    let table = table(&[&consumer], &[], "shop", "echo", 80, "web").expect("attached");
    let hosts: Vec<&str> = table[0].backends.iter().map(|b| b.host.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "echo.shop.svc.cluster.local",
            "echo-v2.shop.svc.cluster.local"
        ]
    );
}

#[test]
fn filters_translate_to_header_ops_mirrors_and_rewrites() {
    let table = translated(&http_rules(
        "- matches:\n  - path: {value: /old/}\n  filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier:\n      set: [{name: X-Set, value: a}, {name: x-SET, value: ignored}]\n      add: [{name: X-Add, value: \"b, c\"}]\n      remove: [X-Remove, x-remove]\n  - type: ResponseHeaderModifier\n    responseHeaderModifier: {add: [{name: X-Served-By, value: svc}]}\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: shadow, port: 80}, percent: 25}\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: shadow2, namespace: qa, port: 81}, fraction: {numerator: 1, denominator: 3}}\n  - type: RequestMirror\n    requestMirror: {backendRef: {name: elsewhere, kind: Bucket, group: example.com}, fraction: {numerator: 5}}\n  - type: URLRewrite\n    urlRewrite: {hostname: new.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new/}}\n  backendRefs:\n  - {name: b, port: 80}\n",
    ));
    let route = &table[0];
    assert_eq!(route.matches[0].path, path_prefix("/old"));
    assert_eq!(
        route.request_headers,
        Some(proto::HeaderOps {
            set: vec![header("x-set", "a")],
            add: vec![header("x-add", "b, c")],
            remove: vec!["x-remove".to_owned()],
        })
    );
    assert_eq!(
        route.response_headers,
        Some(proto::HeaderOps {
            add: vec![header("x-served-by", "svc")],
            ..proto::HeaderOps::default()
        })
    );
    let mirrors: Vec<(&str, u32, f64)> = route
        .mirrors
        .iter()
        .map(|m| (m.host.as_str(), m.port, m.percent))
        .collect();
    assert_eq!(
        mirrors,
        [
            ("shadow.ns.svc.cluster.local", 80, 25.0),
            ("shadow2.qa.svc.cluster.local", 81, 100.0 / 3.0),
            ("", 0, 5.0),
        ]
    );
    assert_eq!(
        route.rewrite,
        Some(proto::Rewrite {
            authority: "new.example.com".to_owned(),
            prefix: "/new".to_owned(),
            ..proto::Rewrite::default()
        })
    );
    assert_eq!(route.redirect, None);
}

#[test]
fn rewrites_and_redirects_spell_paths_for_the_sidecar() {
    let rewrite = |modifier: &str| {
        let table = translated(&http_rules(&format!(
            "- filters:\n  - type: URLRewrite\n    urlRewrite: {{path: {modifier}}}\n"
        )));
        table[0].rewrite.clone()
    };
    let cases = [
        (
            "{type: ReplaceFullPath, replaceFullPath: /full}",
            ("/full", ""),
        ),
        ("{type: ReplaceFullPath, replaceFullPath: ''}", ("/", "")),
        (
            "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz/}",
            ("", "/xyz"),
        ),
        (
            "{type: ReplacePrefixMatch, replacePrefixMatch: /}",
            ("", "/"),
        ),
        (
            "{type: ReplacePrefixMatch, replacePrefixMatch: ''}",
            ("", "/"),
        ),
    ];
    for (modifier, (path, prefix)) in cases {
        let expected = proto::Rewrite {
            path: path.to_owned(),
            prefix: prefix.to_owned(),
            ..proto::Rewrite::default()
        };
        assert_eq!(rewrite(modifier), Some(expected), "{modifier}");
    }
    assert_eq!(
        translated(&http_rules(
            "- filters:\n  - {type: URLRewrite, urlRewrite: {}}\n"
        ))[0]
            .rewrite,
        None,
        "a rewrite that changes nothing"
    );

    let redirect = |spec: &str| {
        translated(&http_rules(&format!(
            "- filters:\n  - {{type: RequestRedirect, requestRedirect: {spec}}}\n"
        )))[0]
            .redirect
            .clone()
    };
    let cases = [
        (
            "{}",
            proto::Redirect {
                status: 302,
                ..proto::Redirect::default()
            },
        ),
        (
            "{scheme: https, hostname: example.com, port: 8443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /moved}}",
            proto::Redirect {
                scheme: "https".to_owned(),
                host: "example.com".to_owned(),
                port: 8443,
                path: "/moved".to_owned(),
                prefix: String::new(),
                status: 301,
            },
        ),
        (
            "{scheme: https, statusCode: 308, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
            proto::Redirect {
                scheme: "https".to_owned(),
                prefix: "/v2".to_owned(),
                status: 308,
                ..proto::Redirect::default()
            },
        ),
        (
            "{statusCode: 303}",
            proto::Redirect {
                status: 303,
                ..proto::Redirect::default()
            },
        ),
        (
            "{statusCode: 307}",
            proto::Redirect {
                status: 307,
                ..proto::Redirect::default()
            },
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(redirect(spec), Some(expected), "{spec}");
    }
}

#[test]
fn timeouts_follow_istio() {
    // (timeouts, retry, route timeout ms, per-try timeout ms when retry is set)
    let cases = [
        ("{}", "", 0, None),
        ("{request: 10s}", "", 10_000, None),
        ("{request: 0s}", "", 0, None),
        ("{request: 1m30s}", "", 90_000, None),
        // Without a retry stanza Istio makes backendRequest the route's timeout.
        ("{request: 10s, backendRequest: 2s}", "", 2_000, None),
        ("{backendRequest: 500ms}", "", 500, None),
        (
            "{request: 10s, backendRequest: 2s}",
            "retry: {}",
            10_000,
            Some(2_000),
        ),
        (
            "{request: 0s, backendRequest: 1h}",
            "retry: {}",
            0,
            Some(3_600_000),
        ),
        (
            "{request: 10s, backendRequest: 0s}",
            "retry: {}",
            10_000,
            Some(0),
        ),
    ];
    for (timeouts, retry, timeout_ms, per_try) in cases {
        let rule = if retry.is_empty() {
            format!("- timeouts: {timeouts}\n")
        } else {
            format!("- timeouts: {timeouts}\n  {retry}\n")
        };
        let table = translated(&http_rules(&rule));
        assert_eq!(table[0].timeout_ms, timeout_ms, "{rule}");
        assert_eq!(
            table[0].retry.as_ref().map(|r| r.per_try_timeout_ms),
            per_try,
            "{rule}"
        );
    }
}

#[test]
fn retry_follows_istio() {
    let retry = |spec: &str| {
        translated(&http_rules(&format!("- retry: {spec}\n")))[0]
            .retry
            .clone()
            .expect("retry")
    };
    let connection = [
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
    ];
    let cases = [
        ("{}", 2, vec![], connection.to_vec(), 0),
        ("{attempts: 5}", 5, vec![], connection.to_vec(), 0),
        (
            "{attempts: 3, codes: [500, 503], backoff: 100ms}",
            3,
            vec![500, 503],
            [connection.as_slice(), &["retriable-status-codes"]].concat(),
            100,
        ),
    ];
    for (spec, attempts, codes, retry_on, backoff_ms) in cases {
        assert_eq!(
            retry(spec),
            proto::Retry {
                attempts,
                per_try_timeout_ms: 0,
                retry_on: retry_on.iter().map(|s| (*s).to_owned()).collect(),
                codes,
                backoff_ms,
                remote_localities: false,
            },
            "{spec}"
        );
    }
    assert_eq!(
        translated(&http_rules("- {}\n"))[0].retry,
        None,
        "no retry stanza: the mesh's default"
    );
}

#[test]
fn durations_are_gep_2257() {
    let cases = [
        ("0s", Some(0)),
        ("0h", Some(0)),
        ("1h", Some(3_600_000)),
        ("500ms", Some(500)),
        ("1h30m30s500ms", Some(5_430_500)),
        ("1m30s", Some(90_000)),
        ("00060m", Some(3_600_000)),
        ("1h2h20m10m", Some(12_600_000)),
        ("99999h", Some(359_996_400_000)),
        ("", None),
        ("0", None),
        ("10", None),
        ("1.5s", None),
        ("-1s", None),
        ("1d", None),
        ("1us", None),
        ("100000s", None),
        ("1h1h1h1h1h", None),
        ("1s ", None),
        ("s", None),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), expected, "{text:?}");
    }
}
