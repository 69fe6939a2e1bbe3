use std::collections::HashMap;

use http::{HeaderMap, HeaderValue, Method, Uri};

use super::{filters::replace_prefix, matching::anchored, *};
use crate::proto::config::{string_match::Kind, HeaderMatch, HttpMatch, StringMatch};

fn key(host: &str, port: u16) -> ServiceKey {
    ServiceKey {
        hostname: Arc::from(host),
        port,
    }
}

/// Backends `reviews:9080` with subsets v1 and v2, and `ratings:9080`.
struct Fixture(HashMap<(String, u16, String), Arc<Backend>>);

impl Fixture {
    fn new() -> Self {
        let mut map = HashMap::new();
        for (host, subset) in [
            ("reviews", ""),
            ("reviews", "v1"),
            ("reviews", "v2"),
            ("ratings", ""),
        ] {
            let backend = Arc::new(Backend {
                key: BackendKey {
                    service: key(host, 9080),
                    subset: (!subset.is_empty()).then(|| Arc::from(subset)),
                },
                endpoints: Vec::new(),
                dns: None,
                policy: DestinationPolicy::default(),
            });
            map.insert((host.to_owned(), 9080, subset.to_owned()), backend);
        }
        Self(map)
    }
}

impl Resolve for Fixture {
    fn resolve(&mut self, host: &str, port: u16, subset: &str) -> Result<Arc<Backend>, String> {
        self.0
            .get(&(host.to_owned(), port, subset.to_owned()))
            .cloned()
            .ok_or_else(|| format!("no {host}:{port} {subset}"))
    }
}

fn exact(value: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(Kind::Exact(value.into())),
        ignore_case: false,
    })
}
fn prefix(value: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(Kind::Prefix(value.into())),
        ignore_case: false,
    })
}
fn path_prefix(value: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(Kind::PathPrefix(value.into())),
        ignore_case: false,
    })
}
fn regex(value: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(Kind::Regex(value.into())),
        ignore_case: false,
    })
}

fn backend(host: &str, subset: &str, weight: u32) -> proto::RouteBackend {
    proto::RouteBackend {
        host: host.into(),
        port: 9080,
        subset: subset.into(),
        weight,
        ..Default::default()
    }
}

fn route(
    kind: &str,
    rule: u32,
    matches: Vec<HttpMatch>,
    backends: Vec<proto::RouteBackend>,
) -> proto::HttpRoute {
    proto::HttpRoute {
        kind: kind.into(),
        namespace: "shop".into(),
        name: "reviews".into(),
        rule,
        matches,
        backends,
        ..Default::default()
    }
}

fn table(routes: &[proto::HttpRoute]) -> RouteTable {
    compile_table(&key("reviews", 9080), routes, &[], &mut Fixture::new()).expect("compiles")
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    (
        method.parse().expect("method"),
        uri.parse().expect("uri"),
        map,
    )
}

/// The rule index of the route `table` selects for the request, `None` for 404.
fn selected(table: &RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<u32> {
    let (method, uri, headers) = request(method, uri, headers);
    table
        .select(&method, &uri, &headers)
        .map(|s| s.route.id.rule)
}

#[test]
fn string_conditions() {
    let case = |m: Option<StringMatch>, ignore_case: bool, value: &str| {
        let mut m = m.expect("set");
        m.ignore_case = ignore_case;
        StringCondition::compile(&m)
            .expect("compiles")
            .matches(value)
    };
    let cases = [
        (exact("/a"), false, "/a", true),
        (exact("/a"), false, "/A", false),
        (exact("/a"), true, "/A", true),
        (prefix("/api"), false, "/apis", true),
        (prefix("/api"), false, "/ap", false),
        (prefix("/API"), true, "/api/x", true),
        (path_prefix("/api"), false, "/api", true),
        (path_prefix("/api"), false, "/api/", true),
        (path_prefix("/api"), false, "/api/v1", true),
        (path_prefix("/api"), false, "/apis", false),
        (path_prefix("/api/"), false, "/api", true),
        (path_prefix("/"), false, "/anything", true),
        (regex("/v[0-9]+"), false, "/v12", true),
        (regex("/v[0-9]+"), false, "/v12/x", false),
        (regex("/v[0-9]+"), false, "x/v12", false),
    ];
    for (i, (m, ignore_case, value, expected)) in cases.into_iter().enumerate() {
        assert_eq!(case(m, ignore_case, value), expected, "case {i}: {value}");
    }
    assert!(anchored("a|b").expect("compiles").is_match("b"));
    assert!(!anchored("a|b").expect("compiles").is_match("ab"));
}

#[test]
fn requests_match_every_condition_set() {
    fn m(f: impl FnOnce(&mut HttpMatch)) -> RequestMatch {
        let mut m = HttpMatch::default();
        f(&mut m);
        RequestMatch::compile(&m).expect("compiles")
    }
    fn header(name: &str, value: Option<StringMatch>, invert: bool) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            value,
            invert,
        }
    }
    type Case<'a> = (
        RequestMatch,
        (&'a str, &'a str, Vec<(&'a str, &'a str)>),
        bool,
    );
    let cases: Vec<Case> = vec![
        (m(|_| {}), ("GET", "/x", vec![]), true),
        (m(|m| m.method = "POST".into()), ("GET", "/", vec![]), false),
        (m(|m| m.method = "POST".into()), ("POST", "/", vec![]), true),
        (m(|m| m.path = exact("/a")), ("GET", "/a?x=1", vec![]), true),
        (
            m(|m| m.headers = vec![header("X-User", exact("jason"), false)]),
            ("GET", "/", vec![("x-user", "jason")]),
            true,
        ),
        (
            m(|m| m.headers = vec![header("x-user", exact("jason"), false)]),
            ("GET", "/", vec![("x-user", "bob")]),
            false,
        ),
        (
            m(|m| m.headers = vec![header("x-user", exact("a,b"), false)]),
            ("GET", "/", vec![("x-user", "a"), ("x-user", "b")]),
            true,
        ),
        (
            m(|m| m.headers = vec![header("x-user", None, false)]),
            ("GET", "/", vec![("x-user", "")]),
            true,
        ),
        (
            m(|m| m.headers = vec![header("x-user", None, false)]),
            ("GET", "/", vec![]),
            false,
        ),
        (
            m(|m| m.headers = vec![header("x-user", None, true)]),
            ("GET", "/", vec![]),
            true,
        ),
        (
            m(|m| m.headers = vec![header("x-user", exact("bob"), true)]),
            ("GET", "/", vec![("x-user", "jason")]),
            true,
        ),
        (
            m(|m| m.headers = vec![header("x-user", regex("j.*"), false)]),
            ("GET", "/", vec![("x-user", "jason")]),
            true,
        ),
        (
            m(|m| m.query_params = vec![header("tier", exact("gold"), false)]),
            ("GET", "/?a=1&tier=gold", vec![]),
            true,
        ),
        (
            m(|m| m.query_params = vec![header("tier", exact("gold"), false)]),
            ("GET", "/?tier=silver", vec![]),
            false,
        ),
        (
            m(|m| m.query_params = vec![header("debug", None, false)]),
            ("GET", "/?debug", vec![]),
            true,
        ),
        (
            m(|m| m.authority = exact("reviews:9080")),
            ("GET", "/", vec![("host", "reviews:9080")]),
            true,
        ),
        (
            m(|m| m.authority = prefix("ratings")),
            ("GET", "/", vec![("host", "reviews:9080")]),
            false,
        ),
        (
            m(|m| m.authority = prefix("reviews")),
            ("GET", "http://reviews.shop/", vec![]),
            true,
        ),
    ];
    for (i, (m, (method, uri, headers), expected)) in cases.into_iter().enumerate() {
        let (method, uri, headers) = request(method, uri, &headers);
        assert_eq!(m.matches(&method, &uri, &headers), expected, "case {i}");
    }
}

#[test]
fn bad_matches_name_their_field() {
    let mut bad = route(
        "VirtualService",
        0,
        vec![HttpMatch {
            path: regex("(unclosed"),
            headers: vec![HeaderMatch {
                name: "bad header".into(),
                value: None,
                invert: false,
            }],
            method: "GE T".into(),
            ..Default::default()
        }],
        vec![backend("reviews", "", 1)],
    );
    bad.retry = Some(proto::Retry {
        retry_on: vec!["sometimes".into()],
        ..Default::default()
    });
    let err = compile_table(&key("reviews", 9080), &[bad], &[], &mut Fixture::new())
        .expect_err("invalid");
    let text = err.join("\n");
    for expected in [
        "httpRoutes[0].matches[0].path: regex \"(unclosed\"",
        "httpRoutes[0].matches[0].headers[0].name: \"bad header\" is not a header name",
        "httpRoutes[0].matches[0].method: \"GE T\" is not a method",
        "httpRoutes[0].retry.retryOn[0]: \"sometimes\" is not a retry condition",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from {text}");
    }
}

#[test]
fn the_first_matching_route_wins_and_no_match_is_404() {
    let t = table(&[
        route(
            "VirtualService",
            0,
            vec![HttpMatch {
                path: prefix("/api"),
                ..Default::default()
            }],
            vec![backend("reviews", "v2", 1)],
        ),
        route(
            "VirtualService",
            1,
            vec![
                HttpMatch {
                    path: exact("/"),
                    ..Default::default()
                },
                HttpMatch {
                    method: "POST".into(),
                    ..Default::default()
                },
            ],
            vec![backend("reviews", "v1", 1)],
        ),
    ]);
    assert!(t.is_attached());
    assert_eq!(selected(&t, "GET", "/api/x", &[]), Some(0));
    assert_eq!(selected(&t, "GET", "/", &[]), Some(1));
    assert_eq!(selected(&t, "POST", "/other", &[]), Some(1));
    assert_eq!(selected(&t, "GET", "/other", &[]), None);
}

#[test]
fn no_routes_is_the_ports_own_backend() {
    let t = table(&[]);
    assert!(!t.is_attached());
    let (method, uri, headers) = request("GET", "/anything", &[]);
    let selected = t.select(&method, &uri, &headers).expect("default route");
    assert_eq!(selected.route.id.kind, RouteKind::Default);
    assert_eq!(selected.route.retry, RetryPolicy::default());
    let Target::Backend(i) = selected.route.split(7).expect("backend").target else {
        panic!("resolved");
    };
    assert_eq!(
        t.backends()[i].key,
        BackendKey {
            service: key("reviews", 9080),
            subset: None
        }
    );
}

#[test]
fn splits_are_proportional_and_weight_zero_gets_nothing() {
    let t = table(&[route(
        "VirtualService",
        0,
        vec![],
        vec![
            backend("reviews", "v1", 70),
            backend("reviews", "v2", 20),
            backend("ratings", "", 10),
            backend("reviews", "", 0),
        ],
    )]);
    let r = &t.routes()[0];
    let mut counts = HashMap::new();
    for draw in 0..100 {
        let Target::Backend(i) = r.split(draw).expect("backend").target else {
            panic!("resolved")
        };
        *counts.entry(t.backends()[i].key.to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("reviews:9080 (subset v1)"), Some(&70));
    assert_eq!(counts.get("reviews:9080 (subset v2)"), Some(&20));
    assert_eq!(counts.get("ratings:9080"), Some(&10));
    assert_eq!(counts.get("reviews:9080"), None);
    // Backends are listed once however many routes name them.
    assert_eq!(t.backends().len(), 4);
}

#[test]
fn missing_backends_answer_as_their_kind_says() {
    let cases = [
        ("HTTPRoute", backend("nowhere", "", 1), 500),
        ("HTTPRoute", backend("", "", 1), 500),
        ("GRPCRoute", backend("nowhere", "", 1), 500),
        ("VirtualService", backend("reviews", "v3", 1), 503),
        ("VirtualService", backend("nowhere", "", 1), 503),
    ];
    for (kind, missing, status) in cases {
        let t = table(&[route(kind, 0, vec![], vec![missing])]);
        let target = &t.routes()[0].split(0).expect("a share").target;
        assert!(
            matches!(target, Target::Unresolved { status: s, .. } if s.as_u16() == status),
            "{kind}: {target:?}"
        );
    }
    for backends in [vec![], vec![backend("reviews", "", 0)]] {
        let t = table(&[route("HTTPRoute", 0, vec![], backends)]);
        assert_eq!(t.routes()[0].split(3).expect_err("no backend").status, 500);
    }
}

#[test]
fn retry_conditions() {
    let policy = |on: &[&str], codes: &[u32]| {
        RetryPolicy::compile(Some(&proto::Retry {
            attempts: 3,
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            codes: codes.to_vec(),
            ..Default::default()
        }))
        .expect("compiles")
    };
    let answered = |status| Attempt::Answered { status, grpc: None };
    let grpc = |code| Attempt::Answered {
        status: 200,
        grpc: Some(code),
    };
    let default = RetryPolicy::default();
    let cases = [
        (&default, Attempt::ConnectFailure, true),
        (&default, Attempt::RefusedStream, true),
        (&default, Attempt::Reset, false),
        (&default, answered(503), false),
        (&default, grpc(14), true),
        (&default, grpc(1), true),
        (&default, grpc(4), false),
        (&default, Attempt::TimedOut, false),
    ];
    for (i, (policy, attempt, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            policy.retries(attempt),
            expected,
            "default case {i}: {attempt:?}"
        );
    }
    assert_eq!(default.attempts, 2);
    let server = policy(&["5xx"], &[]);
    let gateway = policy(&["gateway-error"], &[]);
    let codes = policy(&[], &[418]);
    let others = policy(&["retriable-4xx", "reset", "deadline-exceeded"], &[]);
    let cases = [
        (&server, answered(500), true),
        (&server, answered(503), true),
        (&server, answered(404), false),
        (&server, Attempt::Reset, true),
        (&server, Attempt::ConnectFailure, true),
        (&server, Attempt::TimedOut, true),
        (&gateway, answered(500), false),
        (&gateway, answered(502), true),
        (&gateway, answered(504), true),
        (&gateway, Attempt::TimedOut, true),
        (&gateway, Attempt::Reset, false),
        (&codes, answered(418), true),
        (&codes, answered(503), false),
        (&others, answered(409), true),
        (&others, Attempt::Reset, true),
        (&others, grpc(4), true),
        (&others, grpc(14), false),
    ];
    for (i, (policy, attempt, expected)) in cases.into_iter().enumerate() {
        assert_eq!(policy.retries(attempt), expected, "case {i}: {attempt:?}");
    }
}

#[test]
fn backoff_is_jittered_exponential_and_capped() {
    let policy = RetryPolicy::default();
    let cases = [
        (1, 0, 0),
        (1, 24_999, 24_999),
        (1, 25_000, 0),
        (2, 49_999, 49_999),
        (3, 99_999, 99_999),
        (9, u64::MAX, u64::MAX % 250_000),
    ];
    for (retry, random, micros) in cases {
        assert_eq!(
            policy.backoff(retry, random),
            Duration::from_micros(micros),
            "retry {retry}"
        );
    }
}

#[test]
fn percentages_and_faults() {
    assert!(Percent::compile(100.0).expect("valid").hit(999_999));
    assert!(!Percent::compile(0.0).expect("valid").hit(0));
    let half = Percent::compile(50.0).expect("valid");
    assert!(half.hit(499_999) && !half.hit(500_000));
    assert!(Percent::compile(0.0001).expect("valid").hit(0));
    assert!(Percent::compile(100.5).is_err());
    let fault = Fault::compile(&proto::Fault {
        delay_ms: 1000,
        delay_percent: 10.0,
        abort_grpc_status: "UNAVAILABLE".into(),
        abort_percent: 0.0,
        ..Default::default()
    })
    .expect("valid");
    assert_eq!(
        fault.delay,
        Some((
            Duration::from_secs(1),
            Percent::compile(10.0).expect("valid")
        ))
    );
    assert_eq!(
        fault.abort,
        Some((Abort::Grpc(14), Percent::compile(0.0).expect("valid")))
    );
    let http = Fault::compile(&proto::Fault {
        abort_status: 418,
        abort_percent: 100.0,
        ..Default::default()
    })
    .expect("valid");
    assert_eq!(
        http.abort,
        Some((Abort::Http(StatusCode::IM_A_TEAPOT), Percent::ALL))
    );
    for (bad, expected) in [
        (
            proto::Fault {
                abort_status: 99,
                ..Default::default()
            },
            "abortStatus: 99",
        ),
        (
            proto::Fault {
                abort_grpc_status: "NOPE".into(),
                ..Default::default()
            },
            "abortGrpcStatus: \"NOPE\"",
        ),
        (
            proto::Fault {
                delay_ms: 5,
                delay_percent: -1.0,
                ..Default::default()
            },
            "delayPercent: -1",
        ),
    ] {
        let err = Fault::compile(&bad).expect_err("invalid").join("\n");
        assert!(err.contains(expected), "{expected:?} missing from {err}");
    }
}

#[test]
fn prefixes_are_replaced_by_characters_or_segments() {
    let cases = [
        ("/foo/bar", ("/foo", false), "/baz", "/baz/bar"),
        ("/foobar", ("/foo", false), "/baz", "/bazbar"),
        ("/foo/bar", ("/foo", true), "/xyz", "/xyz/bar"),
        ("/foo", ("/foo", true), "/xyz", "/xyz"),
        ("/foo/bar", ("/foo", true), "/", "/bar"),
        ("/foo", ("/foo", true), "/", "/"),
        ("/foo/bar", ("/foo", true), "/xyz/", "/xyz/bar"),
        ("/foo/", ("/foo", true), "/xyz", "/xyz/"),
    ];
    for (path, matched, replacement, expected) in cases {
        assert_eq!(
            replace_prefix(path, matched, replacement),
            expected,
            "{path} {matched:?} {replacement}"
        );
    }
}

#[test]
fn rewrites_and_redirects() {
    let rewrite = |path: &str, prefix: &str, regex: &str, substitution: &str| {
        Rewrite::compile(&proto::Rewrite {
            authority: "ratings.shop".into(),
            path: path.into(),
            prefix: prefix.into(),
            regex: regex.into(),
            substitution: substitution.into(),
        })
        .expect("valid")
    };
    let cases = [
        (
            rewrite("/full", "", "", ""),
            "/a/b",
            Some("q=1"),
            Some(("/a", true)),
            Some("/full?q=1"),
        ),
        (
            rewrite("", "/v2", "", ""),
            "/a/b",
            None,
            Some(("/a", true)),
            Some("/v2/b"),
        ),
        (rewrite("", "/v2", "", ""), "/a", None, None, Some("/v2")),
        (
            rewrite("", "", "^/service/([^/]+)(/.*)$", "\\2/instance/\\1"),
            "/service/foo/v1/api",
            None,
            None,
            Some("/v1/api/instance/foo"),
        ),
        (rewrite("", "", "", ""), "/a", None, None, None),
    ];
    for (i, (rewrite, path, query, matched, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            rewrite.path(path, query, matched).as_deref(),
            expected,
            "case {i}"
        );
        assert_eq!(
            rewrite
                .authority
                .as_ref()
                .map(|a| a.to_str().expect("ascii")),
            Some("ratings.shop")
        );
    }
    assert!(Rewrite::compile(&proto::Rewrite {
        path: "/a".into(),
        prefix: "/b".into(),
        ..Default::default()
    })
    .is_err());
    let redirect = |scheme: &str, host: &str, port: u32, path: &str, prefix: &str, status: u32| {
        Redirect::compile(&proto::Redirect {
            scheme: scheme.into(),
            host: host.into(),
            port,
            path: path.into(),
            prefix: prefix.into(),
            status,
        })
        .expect("valid")
    };
    let cases = [
        (
            redirect("", "", 0, "", "", 0),
            "reviews:9080",
            "/a",
            None,
            None,
            301,
            "http://reviews:9080/a",
        ),
        (
            redirect("https", "", 0, "", "", 302),
            "reviews:9080",
            "/a",
            Some("x=1"),
            None,
            302,
            "https://reviews/a?x=1",
        ),
        (
            redirect("https", "", 8443, "", "", 302),
            "reviews",
            "/a",
            None,
            None,
            302,
            "https://reviews:8443/a",
        ),
        (
            redirect("", "example.com", 0, "/new", "", 301),
            "reviews:9080",
            "/a",
            None,
            None,
            301,
            "http://example.com:9080/new",
        ),
        (
            redirect("", "", 80, "", "/v2", 308),
            "reviews:9080",
            "/v1/x",
            None,
            Some(("/v1", true)),
            308,
            "http://reviews/v2/x",
        ),
    ];
    for (i, (redirect, authority, path, query, matched, status, location)) in
        cases.into_iter().enumerate()
    {
        assert_eq!(redirect.status.as_u16(), status, "case {i}");
        assert_eq!(
            redirect.location("http", authority, path, query, matched),
            location,
            "case {i}"
        );
    }
    assert!(Redirect::compile(&proto::Redirect {
        status: 200,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn header_ops_set_add_then_remove() {
    let ops = HeaderOps::compile(Some(&proto::HeaderOps {
        set: vec![proto::Header {
            name: "x-set".into(),
            value: "new".into(),
        }],
        add: vec![proto::Header {
            name: "x-add".into(),
            value: "2".into(),
        }],
        remove: vec!["x-gone".into()],
    }))
    .expect("valid");
    let (_, _, mut headers) = request(
        "GET",
        "/",
        &[("x-set", "old"), ("x-add", "1"), ("x-gone", "bye")],
    );
    ops.apply(&mut headers);
    assert_eq!(headers.get_all("x-set").iter().collect::<Vec<_>>(), ["new"]);
    assert_eq!(
        headers.get_all("x-add").iter().collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert!(headers.get("x-gone").is_none());
    let err = HeaderOps::compile(Some(&proto::HeaderOps {
        remove: vec!["a b".into()],
        ..Default::default()
    }))
    .expect_err("invalid");
    assert_eq!(err, ["remove[0]: \"a b\" is not a header name"]);
}

#[test]
fn destination_policies() {
    let policy = DestinationPolicy::compile(Some(&proto::TrafficPolicy {
        load_balancer: "LEAST_REQUEST".into(),
        connection_pool: Some(proto::ConnectionPool {
            http1_max_pending_requests: 1,
            max_requests_per_connection: 100,
            ..Default::default()
        }),
        outlier_detection: Some(proto::OutlierDetection {
            consecutive_5xx_errors: 1,
            ..Default::default()
        }),
        tls_mode: "DISABLE".into(),
        policy: "shop/reviews".into(),
        tls: None,
    }))
    .expect("valid");
    assert_eq!(policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(policy.pool.max_pending, Some(1));
    assert_eq!(policy.pool.max_requests, None);
    assert_eq!(policy.pool.max_requests_per_connection, Some(100));
    let outlier = policy.outlier.expect("set");
    assert_eq!(
        (
            outlier.consecutive_5xx,
            outlier.interval,
            outlier.max_ejection_percent
        ),
        (Some(1), Duration::from_secs(10), 10)
    );
    assert_eq!(policy.tls, TlsMode::Disable);
    let passthrough = DestinationPolicy::compile(Some(&proto::TrafficPolicy {
        load_balancer: "PASSTHROUGH".into(),
        ..Default::default()
    }))
    .expect("valid");
    assert_eq!(passthrough.load_balancer, LoadBalancer::Passthrough);
    for (bad, expected) in [
        (
            proto::TrafficPolicy {
                load_balancer: "FASTEST".into(),
                ..Default::default()
            },
            "loadBalancer: \"FASTEST\"",
        ),
        (
            proto::TrafficPolicy {
                tls_mode: "OPPORTUNISTIC".into(),
                ..Default::default()
            },
            "tlsMode: \"OPPORTUNISTIC\"",
        ),
        (
            proto::TrafficPolicy {
                load_balancer: "PASSTHROUGH".into(),
                tls_mode: "SIMPLE".into(),
                ..Default::default()
            },
            "loadBalancer: PASSTHROUGH with tls SIMPLE or MUTUAL is not supported yet",
        ),
        (
            proto::TrafficPolicy {
                tls_mode: "MUTUAL".into(),
                tls: Some(proto::OriginateTls {
                    client_certificate: "/etc/certs/cert.pem".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "tls: MUTUAL needs clientCertificate and privateKey",
        ),
        (
            proto::TrafficPolicy {
                tls_mode: "SIMPLE".into(),
                tls: Some(proto::OriginateTls {
                    client_certificate: "/etc/certs/cert.pem".into(),
                    private_key: "/etc/certs/key.pem".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "tls: clientCertificate and privateKey are only for MUTUAL",
        ),
    ] {
        let err = DestinationPolicy::compile(Some(&bad))
            .expect_err("invalid")
            .join("\n");
        assert!(err.contains(expected), "{expected:?} missing from {err}");
    }
}

#[test]
fn tls_origination_settings() {
    let compile = |mode: &str, tls: proto::OriginateTls| {
        DestinationPolicy::compile(Some(&proto::TrafficPolicy {
            tls_mode: mode.into(),
            tls: Some(tls),
            ..Default::default()
        }))
        .expect("valid")
        .tls
    };
    let simple = compile(
        "SIMPLE",
        proto::OriginateTls {
            ca_certificates: "/etc/certs/ca.pem".into(),
            sni: "api.example.com".into(),
            subject_alt_names: vec!["api.example.com".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        simple,
        TlsMode::Originate(Arc::new(Origination {
            ca_certificates: Some("/etc/certs/ca.pem".into()),
            client_certificate: None,
            sni: Some("api.example.com".into()),
            subject_alt_names: vec!["api.example.com".into()],
            insecure_skip_verify: false,
        }))
    );
    let mutual = compile(
        "MUTUAL",
        proto::OriginateTls {
            client_certificate: "/c.pem".into(),
            private_key: "/k.pem".into(),
            insecure_skip_verify: true,
            ..Default::default()
        },
    );
    assert_eq!(
        mutual,
        TlsMode::Originate(Arc::new(Origination {
            ca_certificates: None,
            client_certificate: Some(("/c.pem".into(), "/k.pem".into())),
            sni: None,
            subject_alt_names: Vec::new(),
            insecure_skip_verify: true,
        }))
    );
}

#[test]
fn cors_answers_preflights_and_marks_answers_for_allowed_origins() {
    let cors = |ignore_unmatched_preflights: bool| {
        Cors::compile(&proto::Cors {
            allow_origins: vec![
                exact("https://shop.example").expect("set"),
                regex("https://.*\\.test").expect("set"),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-trace".into()],
            max_age_seconds: 600,
            allow_credentials: true,
            ignore_unmatched_preflights,
        })
        .expect("valid")
    };
    let headers = |pairs: &[(&str, &str)]| request("GET", "/", pairs).2;
    let preflight = [
        ("origin", "https://shop.example"),
        ("access-control-request-method", "POST"),
    ];
    let CorsAction::Preflight(answer) = cors(false).action(&Method::OPTIONS, &headers(&preflight))
    else {
        panic!("a preflight from an allowed origin is answered");
    };
    for (name, value) in [
        ("access-control-allow-origin", "https://shop.example"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "x-token"),
        ("access-control-max-age", "600"),
        ("access-control-allow-credentials", "true"),
    ] {
        assert_eq!(
            answer.get(name).map(|v| v.to_str().expect("ascii")),
            Some(value),
            "{name}"
        );
    }
    assert!(answer.get("access-control-expose-headers").is_none());
    let CorsAction::Respond(added) =
        cors(false).action(&Method::GET, &headers(&[("origin", "https://a.test")]))
    else {
        panic!("an actual request from an allowed origin is marked");
    };
    assert_eq!(
        added.get("access-control-allow-origin").expect("set"),
        "https://a.test"
    );
    assert_eq!(
        added.get("access-control-expose-headers").expect("set"),
        "x-trace"
    );
    let stranger = [
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
    ];
    assert_eq!(
        cors(false).action(&Method::OPTIONS, &headers(&stranger)),
        CorsAction::None
    );
    assert_eq!(
        cors(true).action(&Method::OPTIONS, &headers(&stranger)),
        CorsAction::Preflight(HeaderMap::new())
    );
    assert_eq!(
        cors(false).action(&Method::GET, &headers(&[])),
        CorsAction::None,
        "no Origin"
    );
}

#[test]
fn tcp_and_tls_routes_take_connections_by_server_name() {
    let tcp = |rule: u32, sni: &[&str], backends: Vec<proto::RouteBackend>| proto::TcpRoute {
        kind: "VirtualService".into(),
        namespace: "shop".into(),
        name: "db".into(),
        rule,
        sni_hosts: sni.iter().map(|s| s.to_string()).collect(),
        backends,
    };
    let table = compile_table(
        &key("reviews", 9080),
        &[],
        &[
            tcp(
                0,
                &["api.example.com", "*.Internal.Example"],
                vec![backend("reviews", "v2", 1)],
            ),
            tcp(
                1,
                &[],
                vec![
                    backend("reviews", "v1", 80),
                    backend("ratings", "", 20),
                    backend("nowhere", "", 0),
                ],
            ),
        ],
        &mut Fixture::new(),
    )
    .expect("compiles");
    let rule = |sni: Option<&str>| table.select_tcp(sni).map(|r| r.id.rule);
    let cases = [
        (Some("api.example.com"), Some(0)),
        (Some("API.example.com"), Some(0)),
        (Some("db.internal.example"), Some(0)),
        (Some("a.db.internal.example"), Some(0)),
        (Some("internal.example"), Some(1)),
        (Some("other.example.com"), Some(1)),
        (None, Some(1)),
    ];
    for (sni, expected) in cases {
        assert_eq!(rule(sni), expected, "{sni:?}");
    }
    let route = &table.tcp_routes()[1];
    let shares: Vec<String> = [0, 79, 80, 99]
        .into_iter()
        .map(|draw| match &route.split(draw).expect("a share").target {
            Target::Backend(i) => table.backends()[*i].key.to_string(),
            Target::Unresolved { reason, .. } => reason.clone(),
        })
        .collect();
    assert_eq!(
        shares,
        [
            "reviews:9080 (subset v1)",
            "reviews:9080 (subset v1)",
            "ratings:9080",
            "ratings:9080"
        ]
    );
    let only_tls = compile_table(
        &key("reviews", 9080),
        &[],
        &[tcp(
            0,
            &["api.example.com"],
            vec![backend("nowhere", "", 1)],
        )],
        &mut Fixture::new(),
    )
    .expect("compiles");
    assert!(
        only_tls.select_tcp(None).is_none(),
        "no SNI: the port's own endpoints"
    );
    let unresolved = &only_tls.tcp_routes()[0].split(0).expect("a share").target;
    assert!(matches!(unresolved, Target::Unresolved { status, .. } if status.as_u16() == 503));
    let wrong = compile_table(
        &key("reviews", 9080),
        &[],
        &[proto::TcpRoute {
            kind: "HTTPRoute".into(),
            ..Default::default()
        }],
        &mut Fixture::new(),
    )
    .expect_err("refused");
    assert_eq!(
        wrong,
        ["tcpRoutes[0].kind: \"HTTPRoute\" is not VirtualService"]
    );
}
