//! Reading VirtualServices and DestinationRules (each rejection naming its field) and
//! translating them per client and port as Istio's sidecars see them: host resolution,
//! `exportTo`, match filters, which VirtualService wins a host, DestinationRule lookup and
//! policy merging.

use remora_api::proto::config::{self as proto, string_match::Kind};

use super::{
    checks::check_wildcard_domain,
    duration::parse_duration,
    hosts::{hosts_overlap, more_specific, resolve_host, service_namespace},
    virtual_service::DEFAULT_RETRY_ON,
    *,
};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const ROOT: &str = "istio-system";

fn doc(kind: &str, namespace: &str, name: &str, created: Option<&str>, spec: &str) -> String {
    let created = created
        .map(|c| format!(", creationTimestamp: \"{c}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {namespace}{created}}}\nspec: {spec}\n"
    )
}

fn read_doc(text: &str) -> Result<IstioObject, String> {
    let value: Value = serde_saphyr::from_str(text).expect("YAML");
    let kind = value["kind"].as_str().expect("kind").to_owned();
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = value["metadata"]["name"].as_str().expect("name").to_owned();
    read(&kind, value, &namespace, &name)
}

fn vs_at(namespace: &str, name: &str, created: Option<&str>, spec: &str) -> VirtualService {
    match read_doc(&doc("VirtualService", namespace, name, created, spec)) {
        Ok(IstioObject::VirtualService(vs)) => vs,
        other => panic!("{spec}: {other:?}"),
    }
}

fn vs(spec: &str) -> VirtualService {
    vs_at("shop", "reviews", None, spec)
}

fn dr_at(namespace: &str, name: &str, created: Option<&str>, spec: &str) -> DestinationRule {
    match read_doc(&doc("DestinationRule", namespace, name, created, spec)) {
        Ok(IstioObject::DestinationRule(dr)) => *dr,
        other => panic!("{spec}: {other:?}"),
    }
}

fn dr(spec: &str) -> DestinationRule {
    dr_at("shop", "reviews", None, spec)
}

fn rejection(kind: &str, spec: &str) -> String {
    match read_doc(&doc(kind, "shop", "reviews", None, spec)) {
        Err(reason) => reason,
        Ok(object) => panic!("{spec}: accepted as {object:?}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn client<'a>(namespace: &'a str, labels: &'a BTreeMap<String, String>) -> Client<'a> {
    Client {
        namespace,
        labels,
        root_namespace: ROOT,
    }
}

fn no_ports(_: &str) -> Option<Vec<u16>> {
    None
}

/// The table for `REVIEWS` on `port` from a client in `shop` with no labels.
fn table(services: &[&VirtualService], port: u16) -> Option<Vec<proto::HttpRoute>> {
    let none = BTreeMap::new();
    http_table(services, REVIEWS, port, &client("shop", &none), &no_ports)
}

/// The single route of a one-rule VirtualService on port 80.
fn only_route(spec: &str) -> proto::HttpRoute {
    let vs = vs(spec);
    let mut routes = table(&[&vs], 80).expect("routes");
    assert_eq!(routes.len(), 1, "{routes:?}");
    routes.remove(0)
}

fn exact(value: &str) -> Option<proto::StringMatch> {
    Some(proto::StringMatch {
        kind: Some(Kind::Exact(value.to_owned())),
        ignore_case: false,
    })
}

fn prefix(value: &str) -> Option<proto::StringMatch> {
    Some(proto::StringMatch {
        kind: Some(Kind::Prefix(value.to_owned())),
        ignore_case: false,
    })
}

fn regex(value: &str) -> Option<proto::StringMatch> {
    Some(proto::StringMatch {
        kind: Some(Kind::Regex(value.to_owned())),
        ignore_case: false,
    })
}

fn backend(host: &str, port: u32, subset: &str, weight: u32) -> proto::RouteBackend {
    proto::RouteBackend {
        host: host.to_owned(),
        port,
        subset: subset.to_owned(),
        weight,
        ..Default::default()
    }
}

fn header(name: &str, value: &str) -> proto::Header {
    proto::Header {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

const ROUTE: &str = "route: [{destination: {host: reviews}}]";

#[test]
fn kinds_are_read_in_three_api_versions() {
    for version in API_VERSIONS {
        assert!(is_istio_kind(version, "VirtualService"), "{version}");
        assert!(is_istio_kind(version, "DestinationRule"), "{version}");
        assert!(!is_istio_kind(version, "Gateway"), "{version}");
    }
    assert!(!is_istio_kind("security.istio.io/v1", "VirtualService"));
    assert!(!is_istio_kind("networking.istio.io/v2", "DestinationRule"));
}

#[test]
fn reads_a_virtual_service_as_istio_spells_it() {
    let text = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews-route, namespace: shop, creationTimestamp: "2024-05-01T10:00:00Z"}
spec:
  hosts: [reviews, Ratings.Shop.svc.cluster.local]
  gateways: [mesh]
  exportTo: ["."]
  http:
  - name: v2-for-jason
    match:
    - name: jason
      headers:
        End-User: {exact: jason}
      uri: {prefix: /reviews}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v2}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,503"}
  - route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 75
      headers:
        request:
          set: {X-Version: v1}
    - destination: {host: reviews, subset: v3}
      weight: 25
"#;
    let Ok(IstioObject::VirtualService(vs)) = read_doc(text) else {
        panic!("a VirtualService");
    };
    assert_eq!(vs.namespace(), "shop");
    assert_eq!(vs.name(), "reviews-route");
    assert_eq!(
        vs.hosts(),
        [
            REVIEWS.to_owned(),
            "ratings.shop.svc.cluster.local".to_owned()
        ]
    );
    let routes = table(&[&vs], 9080).expect("routes");
    let expected = vec![
        proto::HttpRoute {
            kind: "VirtualService".to_owned(),
            namespace: "shop".to_owned(),
            name: "reviews-route".to_owned(),
            rule: 0,
            matches: vec![proto::HttpMatch {
                path: Some(proto::StringMatch {
                    kind: Some(Kind::Prefix("/reviews".to_owned())),
                    ignore_case: true,
                }),
                headers: vec![proto::HeaderMatch {
                    name: "end-user".to_owned(),
                    value: exact("jason"),
                    invert: false,
                }],
                ..Default::default()
            }],
            backends: vec![backend(REVIEWS, 9080, "v2", 100)],
            timeout_ms: 2000,
            retry: Some(proto::Retry {
                attempts: 3,
                per_try_timeout_ms: 500,
                retry_on: vec!["5xx".to_owned(), "retriable-status-codes".to_owned()],
                codes: vec![503],
                ..Default::default()
            }),
            ..Default::default()
        },
        proto::HttpRoute {
            kind: "VirtualService".to_owned(),
            namespace: "shop".to_owned(),
            name: "reviews-route".to_owned(),
            rule: 1,
            backends: vec![
                proto::RouteBackend {
                    request_headers: Some(proto::HeaderOps {
                        set: vec![header("x-version", "v1")],
                        ..Default::default()
                    }),
                    ..backend(REVIEWS, 9080, "v1", 75)
                },
                backend(REVIEWS, 9080, "v3", 25),
            ],
            ..Default::default()
        },
    ];
    assert_eq!(routes, expected);
}

#[test]
fn virtual_service_rejections_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("{}", "spec.hosts: required"),
        ("{hosts: [reviews]}", "spec: one of http, tcp or tls is required"),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: -3}]}]}",
            "spec.http[0].route[0].weight: -3 is not between 0",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: a}, weight: 10}, {destination: {host: b}, weight: -3}]}]}",
            "spec.http[0].route[1].weight: -3 is not between 0",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]}",
            "spec.http[0].route: the weights add up to 0",
        ),
        (
            "{hosts: [reviews], http: [{route: [{weight: 100}]}]}",
            "spec.http[0].route[0].destination: required",
        ),
        ("{hosts: [reviews], http: [{}]}", "spec.http[0]: one of route, redirect"),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], redirect: {uri: /x}}]}",
            "spec.http[0]: redirect and route cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}}]}",
            "spec.http[0]: redirect and fault cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {uri: /x}, rewrite: {uri: /y}}]}",
            "spec.http[0]: redirect and rewrite cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirror: {host: a}, mirrors: [{destination: {host: b}}]}]}",
            "spec.http[0]: mirror and mirrors cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {allowOrigins: [{}], unmatchedPreflights: DROP}}]}",
            "spec.http[0].corsPolicy.allowOrigins[0]: one of exact, prefix or regex is required",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {unmatchedPreflights: DROP}}]}",
            "spec.http[0].corsPolicy.unmatchedPreflights: \"DROP\" is not one of FORWARD, IGNORE",
        ),
        (
            "{hosts: [reviews], http: [{delegate: {name: other}}]}",
            "spec.http[0].delegate: not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{directResponse: {status: 503}}]}",
            "spec.http[0].directResponse: not supported yet",
        ),
        (
            "{hosts: [reviews], tcp: [{match: [{destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: reviews}}]}]}",
            "spec.tcp[0].match[0].destinationSubnets: not supported yet",
        ),
        (
            "{hosts: [reviews], tls: [{match: [{sniHosts: [reviews]}]}]}",
            "spec.tls[0].route: required",
        ),
        (
            "{hosts: [reviews], tls: [{match: [{port: 443}], route: [{destination: {host: reviews}}]}]}",
            "spec.tls[0].match[0].sniHosts: required",
        ),
        (
            "{hosts: [reviews], tcp: [{match: [{sniHosts: [a.example]}], route: [{destination: {host: reviews}}]}]}",
            "spec.tcp[0].match[0].sniHosts: only `tls` rules match server names",
        ),
        (
            "{hosts: [reviews], tcp: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]}]}",
            "spec.tcp[0].route: the weights add up to 0",
        ),
        (
            "{hosts: [\"*\"], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.hosts[0]: \"*\" is not allowed",
        ),
        (
            "{hosts: [reviews, reviews], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.hosts: \"reviews\" and \"reviews\" overlap",
        ),
        (
            "{hosts: [\"*.shop.svc.cluster.local\", reviews.shop.svc.cluster.local], http: [{route: [{destination: {host: reviews}}]}]}",
            "overlap",
        ),
        (
            "{hosts: [rev_iews], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.hosts[0]: \"rev_iews\" is not a host name",
        ),
        (
            "{hosts: [reviews], exportTo: [\"~\"], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.exportTo[0]: \"~\"",
        ),
        (
            "{hosts: [reviews], exportTo: [\".\", shop], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.exportTo[1]: \"shop\" is listed twice",
        ),
        (
            "{hosts: [reviews], exportTo: [\"*\", other], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.exportTo: \"*\" cannot be combined",
        ),
        (
            "{hosts: [reviews], gateways: [\"bad/gate/way\"], http: [{route: [{destination: {host: reviews}}]}]}",
            "spec.gateways[0]:",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 0s}]}",
            "spec.http[0].timeout: must be at least 1ms",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 1500us}]}",
            "spec.http[0].timeout: only whole milliseconds",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: soon}]}",
            "spec.http[0].timeout: \"soon\" is not a duration",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: -1}}]}",
            "spec.http[0].retries.attempts: -1",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 0, perTryTimeout: 1s}}]}",
            "spec.http[0].retries: perTryTimeout, retryOn and retryRemoteLocalities need attempts",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryOn: \"5xx, reset\"}}]}",
            "spec.http[0].retries.retryOn: \" reset\" is neither a retry condition nor an HTTP status",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryOn: \"599\"}}]}",
            "spec.http[0].retries.retryOn: \"599\" is neither",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryOn: retriable-headers}}]}",
            "spec.http[0].retries.retryOn: \"retriable-headers\" is not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryIgnorePreviousHosts: false}}]}",
            "spec.http[0].retries.retryIgnorePreviousHosts: not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, backoff: 0.5ms}}]}",
            "spec.http[0].retries.backoff: must be at least 1ms",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {}}]}",
            "spec.http[0].fault: delay or abort is required",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {httpStatus: 503, percentage: {value: 150}}}}]}",
            "spec.http[0].fault.abort.percentage.value: 150 is neither 0 nor between 0.0001 and 100",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 0.00001}}}}]}",
            "spec.http[0].fault.delay.percentage.value",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {delay: {fixedDelay: 1s, percent: 101}}}]}",
            "spec.http[0].fault.delay.percent: 101",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {delay: {exponentialDelay: 1s}}}]}",
            "spec.http[0].fault.delay.exponentialDelay: not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {httpStatus: 700}}}]}",
            "spec.http[0].fault.abort.httpStatus: 700 is not between 200 and 599",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {grpcStatus: SO_SAD}}}]}",
            "spec.http[0].fault.abort.grpcStatus: \"SO_SAD\"",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {http2Error: REFUSED_STREAM}}}]}",
            "spec.http[0].fault.abort.http2Error: not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {uri: /x, redirectCode: 305}}]}",
            "spec.http[0].redirect.redirectCode: 305 is not one of",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {scheme: ftp}}]}",
            "spec.http[0].redirect.scheme: \"ftp\"",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}}]}",
            "spec.http[0].redirect: port and derivePort cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {derivePort: FROM_NOWHERE}}]}",
            "spec.http[0].redirect.derivePort: \"FROM_NOWHERE\"",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {redirectCode: 302}}]}",
            "spec.http[0].redirect: one of uri, prefixRewrite, authority, scheme, port or derivePort is required",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {port: 70000}}]}",
            "spec.http[0].redirect.port: 70000",
        ),
        (
            "{hosts: [reviews], http: [{match: [{uri: {exact: /a}}], redirect: {prefixRewrite: /b}}]}",
            "spec.http[0].redirect.prefixRewrite: every uri match of the rule must be a prefix match",
        ),
        (
            "{hosts: [reviews], http: [{redirect: {uri: /a, prefixRewrite: /b}}]}",
            "spec.http[0].redirect: uri and prefixRewrite cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}}]}",
            "spec.http[0].rewrite: uri and uriRegexRewrite cannot both be set",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], rewrite: {}}]}",
            "spec.http[0].rewrite: one of uri, uriRegexRewrite or authority is required",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], rewrite: {uriRegexRewrite: {match: \"^/a\"}}}]}",
            "spec.http[0].rewrite.uriRegexRewrite: match and rewrite are both required",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], rewrite: {authority: a}, headers: {request: {set: {host: b}}}}]}",
            "spec.http[0].headers.request: the authority is rewritten more than once",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: a}, weight: 50, headers: {request: {set: {host: x}}}}, {destination: {host: b}, weight: 50}]}]}",
            "spec.http[0].route[0].headers.request: rewriting the authority per destination is not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], headers: {request: {remove: [Host]}}}]}",
            "spec.http[0].headers.request.remove[0]: \"Host\" cannot be changed",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], headers: {request: {set: {\":path\": /x}}}}]}",
            "spec.http[0].headers.request.set.:path: \":path\" cannot be changed",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], headers: {response: {add: {host: x}}}}]}",
            "spec.http[0].headers.response.add.host: \"host\" cannot be changed",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], headers: {request: {set: {x-peer: \"%DOWNSTREAM_REMOTE_ADDRESS%\"}}}}]}",
            "spec.http[0].headers.request.set.x-peer: \"%DOWNSTREAM_REMOTE_ADDRESS%\": %VARIABLE% substitutions are not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], headers: {request: {set: {x-a: \"a\\u0001b\"}}}}]}",
            "spec.http[0].headers.request.set.x-a: \"a\\u{1}b\" holds control characters",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], headers: {request: {set: {\"bad header\": x}}}}]}",
            "\"bad header\" is not a header name",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: \"*\"}}]}]}",
            "spec.http[0].route[0].destination.host: \"*\" is not a destination",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: \"\"}}]}]}",
            "spec.http[0].route[0].destination.host: the host name must not be empty",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: V_1}}]}]}",
            "spec.http[0].route[0].destination.subset: \"V_1\" is not a subset name",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews, port: {}}}]}]}",
            "spec.http[0].route[0].destination.port.number: 0 is not between 1 and 65535",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirror: {host: m}, mirrorPercentage: {value: 101}}]}",
            "spec.http[0].mirrorPercentage.value: 101 is not between 0 and 100",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirror: {host: m}, mirrorPercent: 101}]}",
            "spec.http[0].mirrorPercent: 101",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirrors: [{destination: {host: m}, percentage: {value: -1}}]}]}",
            "spec.http[0].mirrors[0].percentage.value: -1 is not between 0 and 100",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirrors: [{percentage: {value: 5}}]}]}",
            "spec.http[0].mirrors[0].destination: required",
        ),
        (
            "{hosts: [reviews], http: [{match: [{scheme: {exact: https}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].scheme: not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{match: [{method: {prefix: G}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].method: only exact method matches are supported yet",
        ),
        (
            "{hosts: [reviews], http: [{match: [{method: {exact: \"GE T\"}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].method.exact: \"GE T\" is not an HTTP method",
        ),
        (
            "{hosts: [reviews], http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].uri: only one of exact, prefix and regex may be set",
        ),
        (
            "{hosts: [reviews], http: [{match: [{uri: {regex: \"\"}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].uri.regex: must not be empty",
        ),
        (
            "{hosts: [reviews], http: [{match: [{authority: {prefix: \"\"}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].authority.prefix: must not be empty",
        ),
        (
            "{hosts: [reviews], http: [{match: [{headers: {x-a: null}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].headers.x-a: must not be null",
        ),
        (
            "{hosts: [reviews], http: [{match: [{headers: {x-a: {regex: \"*\"}}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].headers.x-a: \"*\" is not a regex",
        ),
        (
            "{hosts: [reviews], http: [{match: [{headers: {\"@request.auth.claims.group\": {exact: a}}}], route: [{destination: {host: reviews}}]}]}",
            "JWT claim routing is only supported for gateways",
        ),
        (
            "{hosts: [reviews], http: [{match: [{headers: {\":method\": {exact: GET}}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].headers.:method: pseudo-header matches are not supported yet",
        ),
        (
            "{hosts: [reviews], http: [{match: [{withoutHeaders: {\"x a\": {}}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].withoutHeaders.x a: \"x a\" is not a header name",
        ),
        (
            "{hosts: [reviews], http: [{match: [{queryParams: {q: {prefix: \"\"}}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].queryParams.q.prefix: must not be empty",
        ),
        (
            "{hosts: [reviews], http: [{match: [{port: 70000}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].port: 70000 is not between 1 and 65535",
        ),
        (
            "{hosts: [reviews], http: [{match: [{sourceNamespace: Not_A_Namespace}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].sourceNamespace: \"Not_A_Namespace\"",
        ),
        (
            "{hosts: [reviews], http: [{match: [{sourceLabels: {\"-app\": x}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].sourceLabels.-app: \"-app\" is not a label name",
        ),
        (
            "{hosts: [reviews], http: [{match: [{sourceLabels: {app: \"a b\"}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].sourceLabels.app: \"a b\" is not a label value",
        ),
        (
            "{hosts: [reviews], http: [{match: [{gateways: [\"-bad\"]}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].gateways[0]:",
        ),
        (
            "{hosts: [reviews], http: [{match: [{uri: {suffix: /a}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0].match[0].uri.suffix: unknown field `suffix`",
        ),
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: lots}]}]}",
            "spec.http[0].route[0].weight: invalid type",
        ),
    ];
    for (spec, expected) in cases {
        let reason = rejection("VirtualService", spec);
        assert!(
            reason.contains(expected),
            "{spec}\n  got: {reason}\n  want: {expected}"
        );
    }
}

#[test]
fn what_the_sidecar_cannot_compile_is_rejected_too() {
    let cases = [
        (
            "{hosts: [reviews], http: [{route: [{destination: {host: a}}]}, {match: [{uri: {regex: \"(\"}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[1]: the sidecar refuses it: matches[0]",
        ),
        (
            "{hosts: [reviews], http: [{match: [{headers: {x-a: {regex: \"[a\"}}}], route: [{destination: {host: reviews}}]}]}",
            "spec.http[0]: the sidecar refuses it: matches[0]",
        ),
        (
            "{hosts: [reviews], http: [{rewrite: {uriRegexRewrite: {match: \"a)\", rewrite: b}}, route: [{destination: {host: reviews}}]}]}",
            "spec.http[0]: the sidecar refuses it: rewrite",
        ),
    ];
    for (spec, expected) in cases {
        let reason = rejection("VirtualService", spec);
        assert!(
            reason.contains(expected),
            "{spec}\n  got: {reason}\n  want: {expected}"
        );
    }
}

#[test]
fn every_problem_is_reported() {
    let reason = rejection(
        "VirtualService",
        "{hosts: [reviews], http: [{route: [{destination: {host: a}, weight: -1}], timeout: 0s, corsPolicy: {maxAge: 0s}}]}",
    );
    for expected in [
        "spec.http[0].corsPolicy.maxAge: must be at least 1ms",
        "spec.http[0].route[0].weight: -1",
        "spec.http[0].timeout: must be at least 1ms",
    ] {
        assert!(reason.contains(expected), "{reason}");
    }
}

#[test]
fn accepts_what_istio_accepts_and_ignores() {
    let route = only_route(
        "{hosts: [reviews], http: [{name: r, match: [{name: m, statPrefix: s, uri: {prefix: /}}], route: [{destination: {host: reviews}}], fault: {delay: {percentage: {value: 50}}, abort: {percentage: {value: 50}}}}]}",
    );
    assert_eq!(
        route.fault, None,
        "no delay type nor error type: nothing injected"
    );
    // An empty uri prefix matches every path, as Envoy takes it.
    let route = only_route(
        "{hosts: [reviews], http: [{match: [{uri: {prefix: \"\"}}], route: [{destination: {host: reviews}}]}]}",
    );
    assert_eq!(route.matches[0].path, prefix(""));
}

#[test]
fn matches_translate_condition_by_condition() {
    let cases: &[(&str, proto::HttpMatch)] = &[
        (
            "{uri: {exact: /a}, ignoreUriCase: true}",
            proto::HttpMatch {
                path: Some(proto::StringMatch {
                    kind: Some(Kind::Exact("/a".to_owned())),
                    ignore_case: true,
                }),
                ..Default::default()
            },
        ),
        (
            // Envoy ignores case for exact and prefix only.
            "{uri: {regex: \"/a/[0-9]+\"}, ignoreUriCase: true}",
            proto::HttpMatch {
                path: regex("/a/[0-9]+"),
                ..Default::default()
            },
        ),
        (
            "{uri: {}}",
            proto::HttpMatch::default(),
        ),
        (
            "{method: {exact: POST}, authority: {prefix: shop.}}",
            proto::HttpMatch {
                method: "POST".to_owned(),
                authority: prefix("shop."),
                ..Default::default()
            },
        ),
        (
            "{headers: {X-B: {regex: \"b.*\"}, x-a: {}}, withoutHeaders: {X-C: {exact: c}, x-d: {regex: \"*\"}}}",
            proto::HttpMatch {
                headers: vec![
                    proto::HeaderMatch {
                        name: "x-a".to_owned(),
                        value: None,
                        invert: false,
                    },
                    proto::HeaderMatch {
                        name: "x-b".to_owned(),
                        value: regex("b.*"),
                        invert: false,
                    },
                    proto::HeaderMatch {
                        name: "x-c".to_owned(),
                        value: exact("c"),
                        invert: true,
                    },
                    proto::HeaderMatch {
                        name: "x-d".to_owned(),
                        value: None,
                        invert: true,
                    },
                ],
                ..Default::default()
            },
        ),
        (
            "{queryParams: {Debug: {exact: \"\"}, page: {prefix: \"1\"}, flag: {}}}",
            proto::HttpMatch {
                query_params: vec![
                    proto::HeaderMatch {
                        name: "Debug".to_owned(),
                        value: exact(""),
                        invert: false,
                    },
                    proto::HeaderMatch {
                        name: "flag".to_owned(),
                        value: None,
                        invert: false,
                    },
                    proto::HeaderMatch {
                        name: "page".to_owned(),
                        value: prefix("1"),
                        invert: false,
                    },
                ],
                ..Default::default()
            },
        ),
    ];
    for (spec, expected) in cases {
        let route = only_route(&format!(
            "{{hosts: [reviews], http: [{{match: [{spec}], {ROUTE}}}]}}"
        ));
        assert_eq!(route.matches, std::slice::from_ref(expected), "{spec}");
    }
}

#[test]
fn matches_are_filtered_by_port_and_client() {
    let app_a = labels(&[("app", "a"), ("version", "v1")]);
    let app_b = labels(&[("app", "b")]);
    // (match, port, client namespace, client labels, whether it is kept)
    type Case<'a> = (&'a str, u16, &'a str, &'a BTreeMap<String, String>, bool);
    let cases: &[Case] = &[
        ("{port: 9080}", 9080, "shop", &app_a, true),
        ("{port: 9080}", 80, "shop", &app_a, false),
        ("{sourceLabels: {app: a}}", 80, "shop", &app_a, true),
        ("{sourceLabels: {app: a}}", 80, "shop", &app_b, false),
        (
            "{sourceLabels: {app: a, version: v2}}",
            80,
            "shop",
            &app_a,
            false,
        ),
        ("{sourceNamespace: shop}", 80, "shop", &app_a, true),
        ("{sourceNamespace: shop}", 80, "other", &app_a, false),
        (
            "{sourceNamespace: shop, sourceLabels: {app: a}}",
            80,
            "shop",
            &app_b,
            false,
        ),
        ("{gateways: [mesh]}", 80, "shop", &app_a, true),
        ("{gateways: [shop/ingress]}", 80, "shop", &app_a, false),
        // Istio: match-level gateways decide alone, the source filters are not looked at.
        (
            "{gateways: [mesh], sourceLabels: {app: a}}",
            80,
            "shop",
            &app_b,
            true,
        ),
        ("{gateways: [mesh], port: 9080}", 80, "shop", &app_a, false),
    ];
    for (m, port, namespace, client_labels, kept) in cases {
        let vs = vs(&format!(
            "{{hosts: [reviews], http: [{{match: [{m}], {ROUTE}}}, {{route: [{{destination: {{host: other}}}}]}}]}}"
        ));
        let routes = http_table(
            &[&vs],
            REVIEWS,
            *port,
            &client(namespace, client_labels),
            &no_ports,
        )
        .expect("the second rule takes every request");
        let first_kept = routes[0].rule == 0;
        assert_eq!(
            first_kept, *kept,
            "{m} port {port} from {namespace} {client_labels:?}"
        );
    }
}

#[test]
fn a_rule_whose_matches_are_all_left_out_is_left_out_and_so_is_an_empty_table() {
    let vs = vs(
        "{hosts: [reviews], http: [{match: [{port: 1}, {sourceNamespace: elsewhere}], route: [{destination: {host: a}}]}, {match: [{port: 80, uri: {prefix: /b}}, {port: 2}], route: [{destination: {host: b}}]}]}",
    );
    let routes = table(&[&vs], 80).expect("routes");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].rule, 1);
    assert_eq!(routes[0].matches.len(), 1, "the port 2 match is left out");
    assert_eq!(
        table(&[&vs], 3),
        None,
        "nothing applies: the port's default route"
    );
}

#[test]
fn nothing_after_a_rule_that_takes_every_request() {
    let vs = vs(
        "{hosts: [reviews], http: [{match: [{headers: {x-a: {}}}], route: [{destination: {host: a}}]}, {match: [{uri: {prefix: /}}, {uri: {prefix: /never}}], route: [{destination: {host: b}}]}, {route: [{destination: {host: c}}]}]}",
    );
    let routes = table(&[&vs], 80).expect("routes");
    assert_eq!(routes.len(), 2);
    assert_eq!(
        routes[1].matches,
        [proto::HttpMatch {
            path: prefix("/"),
            ..Default::default()
        }]
    );
    let vs = vs_at(
        "shop",
        "r",
        None,
        "{hosts: [reviews], http: [{route: [{destination: {host: a}}]}, {route: [{destination: {host: b}}]}]}",
    );
    assert_eq!(table(&[&vs], 80).expect("routes").len(), 1);
}

#[test]
fn destinations_become_weighted_backends() {
    let cases: &[(&str, u16, Vec<proto::RouteBackend>)] = &[
        // One destination takes everything, whatever its weight.
        ("[{destination: {host: reviews}, weight: 30}]", 80, vec![backend(REVIEWS, 80, "", 100)]),
        // No port: the port the client called, even for another Service.
        (
            "[{destination: {host: ratings, subset: v1}}]",
            9080,
            vec![backend("ratings.shop.svc.cluster.local", 9080, "v1", 100)],
        ),
        (
            "[{destination: {host: ratings.other.svc.cluster.local, port: {number: 8080}}}]",
            9080,
            vec![backend("ratings.other.svc.cluster.local", 8080, "", 100)],
        ),
        // Names with a dot stay as written; unknown hosts are kept (the sidecar answers 503).
        (
            "[{destination: {host: ratings.other}}]",
            80,
            vec![backend("ratings.other", 80, "", 100)],
        ),
        (
            "[{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 3}, {destination: {host: c}, weight: 1}]",
            80,
            vec![
                backend("b.shop.svc.cluster.local", 80, "", 3),
                backend("c.shop.svc.cluster.local", 80, "", 1),
            ],
        ),
    ];
    for (destinations, port, expected) in cases {
        let vs = vs(&format!(
            "{{hosts: [reviews], http: [{{route: {destinations}}}]}}"
        ));
        let routes = table(&[&vs], *port).expect("routes");
        assert_eq!(&routes[0].backends, expected, "{destinations}");
    }
}

#[test]
fn header_operations_per_route_and_per_destination() {
    let route = only_route(
        r#"{hosts: [reviews], http: [{headers: {request: {set: {X-A: "1", ":authority": shop.example}, add: {x-b: "100%%"}, remove: [X-C]}, response: {set: {x-d: d}, remove: [x-e]}}, route: [{destination: {host: reviews}, headers: {request: {add: {x-f: f}}, response: {remove: [x-g]}}}]}]}"#,
    );
    assert_eq!(
        route.request_headers,
        Some(proto::HeaderOps {
            set: vec![header("x-a", "1")],
            add: vec![header("x-b", "100%")],
            remove: vec!["x-c".to_owned()],
        })
    );
    assert_eq!(
        route.response_headers,
        Some(proto::HeaderOps {
            set: vec![header("x-d", "d")],
            remove: vec!["x-e".to_owned()],
            ..Default::default()
        })
    );
    assert_eq!(
        route.rewrite.as_ref().map(|r| r.authority.as_str()),
        Some("shop.example"),
        "the authority set as a header is a rewrite"
    );
    let backend = &route.backends[0];
    assert_eq!(
        backend.request_headers,
        Some(proto::HeaderOps {
            add: vec![header("x-f", "f")],
            ..Default::default()
        })
    );
    assert_eq!(
        backend.response_headers,
        Some(proto::HeaderOps {
            remove: vec!["x-g".to_owned()],
            ..Default::default()
        })
    );
}

#[test]
fn authority_rewrites_take_istio_precedence() {
    let cases = [
        ("rewrite: {authority: r}, ", "", Some("r")),
        (
            "headers: {request: {add: {host: added}}}, ",
            "",
            Some("added"),
        ),
        (
            "",
            ", headers: {request: {set: {Host: per-destination}}}",
            Some("per-destination"),
        ),
        (
            "rewrite: {authority: r}, ",
            ", headers: {request: {set: {host: per-destination}}}",
            Some("r"),
        ),
        ("", "", None),
    ];
    for (rule, destination, expected) in cases {
        let route = only_route(&format!(
            "{{hosts: [reviews], http: [{{{rule}route: [{{destination: {{host: reviews}}{destination}}}]}}]}}"
        ));
        let authority = route.rewrite.as_ref().map(|r| r.authority.as_str());
        assert_eq!(authority, expected, "{rule} {destination}");
        assert!(
            route.backends[0].request_headers.is_none(),
            "{rule} {destination}"
        );
    }
}

#[test]
fn a_uri_rewrite_replaces_what_each_match_matched() {
    let vs = vs(
        "{hosts: [reviews], http: [{match: [{uri: {prefix: /old}}, {uri: {exact: /exact}}, {uri: {regex: \"/r.*\"}}, {headers: {x-a: {}}}], rewrite: {uri: /new, authority: a}, route: [{destination: {host: reviews}}]}]}",
    );
    let routes = table(&[&vs], 80).expect("routes");
    let got: Vec<_> = routes
        .iter()
        .map(|r| {
            let rewrite = r.rewrite.clone().expect("rewrite");
            assert_eq!(rewrite.authority, "a");
            (r.matches[0].path.clone(), rewrite.prefix, rewrite.path)
        })
        .collect();
    let new = "/new".to_owned();
    assert_eq!(
        got,
        [
            (prefix("/old"), new.clone(), String::new()),
            (exact("/exact"), String::new(), new.clone()),
            (regex("/r.*"), String::new(), new.clone()),
            // Envoy matches a rule without uri as the prefix `/`, which the rewrite replaces.
            (prefix("/"), new.clone(), String::new()),
        ]
    );
    assert!(routes.iter().all(|r| r.rule == 0));
    let route = only_route(
        "{hosts: [reviews], http: [{rewrite: {uri: /v2/}, route: [{destination: {host: reviews}}]}]}",
    );
    assert_eq!(
        route.matches,
        [proto::HttpMatch {
            path: prefix("/"),
            ..Default::default()
        }]
    );
    assert_eq!(route.rewrite.expect("rewrite").prefix, "/v2/");
}

#[test]
fn a_regex_rewrite_keeps_envoy_substitutions() {
    let route = only_route(
        r#"{hosts: [reviews], http: [{match: [{uri: {prefix: /service}}, {uri: {prefix: /other}}], rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "/customprefix/\\2/\\1"}}, route: [{destination: {host: reviews}}]}]}"#,
    );
    assert_eq!(route.matches.len(), 2, "one route for both matches");
    let rewrite = route.rewrite.expect("rewrite");
    assert_eq!(rewrite.regex, "^/service/([^/]+)(/.*)$");
    assert_eq!(rewrite.substitution, "/customprefix/\\2/\\1");
    assert_eq!(rewrite.path, "");
}

#[test]
fn redirects() {
    // (redirect, port, expected)
    let cases: &[(&str, u16, proto::Redirect)] = &[
        (
            "{uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local}",
            80,
            proto::Redirect {
                path: "/v1/bookRatings".to_owned(),
                host: "newratings.default.svc.cluster.local".to_owned(),
                status: 301,
                ..Default::default()
            },
        ),
        (
            "{scheme: https, port: 8443, redirectCode: 308}",
            80,
            proto::Redirect {
                scheme: "https".to_owned(),
                port: 8443,
                status: 308,
                ..Default::default()
            },
        ),
        // No explicit :443 for https, nor :80 for http (the default scheme).
        (
            "{scheme: https, port: 443}",
            80,
            proto::Redirect {
                scheme: "https".to_owned(),
                status: 301,
                ..Default::default()
            },
        ),
        (
            "{derivePort: FROM_REQUEST_PORT}",
            9080,
            proto::Redirect {
                port: 9080,
                status: 301,
                ..Default::default()
            },
        ),
        (
            "{derivePort: FROM_REQUEST_PORT}",
            80,
            proto::Redirect {
                status: 301,
                ..Default::default()
            },
        ),
        (
            "{derivePort: FROM_PROTOCOL_DEFAULT, scheme: https}",
            9080,
            proto::Redirect {
                scheme: "https".to_owned(),
                status: 301,
                ..Default::default()
            },
        ),
    ];
    for (redirect, port, expected) in cases {
        let vs = vs(&format!(
            "{{hosts: [reviews], http: [{{redirect: {redirect}}}]}}"
        ));
        let routes = table(&[&vs], *port).expect("routes");
        assert_eq!(
            routes[0].redirect.as_ref(),
            Some(expected),
            "{redirect} on {port}"
        );
        assert!(routes[0].backends.is_empty(), "{redirect}");
    }
    let vs = vs(
        "{hosts: [reviews], http: [{match: [{uri: {prefix: /foo/}}, {headers: {x-a: {}}}], redirect: {prefixRewrite: /, authority: foo.example.com}}]}",
    );
    let routes = table(&[&vs], 80).expect("routes");
    let paths: Vec<_> = routes.iter().map(|r| r.matches[0].path.clone()).collect();
    assert_eq!(paths, [prefix("/foo/"), prefix("/")]);
    assert!(routes
        .iter()
        .all(|r| r.redirect.as_ref().is_some_and(|d| d.prefix == "/")));
}

#[test]
fn retries() {
    let cases: &[(&str, Option<proto::Retry>)] = &[
        // Unset: the mesh's default, applied by the sidecar.
        ("", None),
        // Attempts 0 disables retries.
        ("retries: {attempts: 0}, ", Some(proto::Retry::default())),
        ("retries: {}, ", Some(proto::Retry::default())),
        (
            "retries: {attempts: 3}, ",
            Some(proto::Retry {
                attempts: 3,
                retry_on: DEFAULT_RETRY_ON.map(str::to_owned).to_vec(),
                ..Default::default()
            }),
        ),
        (
            "retries: {attempts: 2, perTryTimeout: 1.5s, retryOn: \"gateway-error,connect-failure,409,retriable-status-codes\", retryRemoteLocalities: true, backoff: 100ms}, ",
            Some(proto::Retry {
                attempts: 2,
                per_try_timeout_ms: 1500,
                retry_on: vec![
                    "gateway-error".to_owned(),
                    "connect-failure".to_owned(),
                    "retriable-status-codes".to_owned(),
                ],
                codes: vec![409],
                backoff_ms: 100,
                remote_localities: true,
            }),
        ),
    ];
    for (retries, expected) in cases {
        let route = only_route(&format!(
            "{{hosts: [reviews], http: [{{{retries}route: [{{destination: {{host: reviews}}}}]}}]}}"
        ));
        assert_eq!(&route.retry, expected, "{retries}");
    }
}

#[test]
fn faults_without_a_percentage_apply_to_no_request() {
    let cases: &[(&str, Option<proto::Fault>)] = &[
        (
            "{delay: {fixedDelay: 5s}}",
            Some(proto::Fault {
                delay_ms: 5000,
                delay_percent: 0.0,
                ..Default::default()
            }),
        ),
        (
            "{delay: {fixedDelay: 7s, percent: 10}}",
            Some(proto::Fault {
                delay_ms: 7000,
                delay_percent: 10.0,
                ..Default::default()
            }),
        ),
        (
            "{delay: {fixedDelay: 100ms, percent: 10, percentage: {value: 0.5}}}",
            Some(proto::Fault {
                delay_ms: 100,
                delay_percent: 0.5,
                ..Default::default()
            }),
        ),
        (
            "{abort: {httpStatus: 503}}",
            Some(proto::Fault {
                abort_status: 503,
                abort_percent: 0.0,
                ..Default::default()
            }),
        ),
        (
            "{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 25}}, delay: {fixedDelay: 1s, percentage: {value: 100}}}",
            Some(proto::Fault {
                delay_ms: 1000,
                delay_percent: 100.0,
                abort_grpc_status: "UNAVAILABLE".to_owned(),
                abort_percent: 25.0,
                ..Default::default()
            }),
        ),
        ("{abort: {percentage: {value: 25}}}", None),
    ];
    for (fault, expected) in cases {
        let route = only_route(&format!(
            "{{hosts: [reviews], http: [{{fault: {fault}, {ROUTE}}}]}}"
        ));
        assert_eq!(&route.fault, expected, "{fault}");
    }
}

#[test]
fn mirrors() {
    let mirror = |host: &str, port: u32, subset: &str, percent: f64| proto::Mirror {
        host: host.to_owned(),
        port,
        subset: subset.to_owned(),
        percent,
    };
    let cases: &[(&str, Vec<proto::Mirror>)] = &[
        (
            "mirror: {host: shadow, subset: v2}",
            vec![mirror("shadow.shop.svc.cluster.local", 9080, "v2", 100.0)],
        ),
        (
            "mirror: {host: shadow, port: {number: 80}}, mirrorPercentage: {value: 12.5}",
            vec![mirror("shadow.shop.svc.cluster.local", 80, "", 12.5)],
        ),
        ("mirror: {host: shadow}, mirrorPercentage: {value: 0}", vec![]),
        (
            "mirror: {host: shadow}, mirrorPercent: 30",
            vec![mirror("shadow.shop.svc.cluster.local", 9080, "", 30.0)],
        ),
        (
            "mirror: {host: shadow}, mirrorPercent: 30, mirrorPercentage: {value: 40}",
            vec![mirror("shadow.shop.svc.cluster.local", 9080, "", 40.0)],
        ),
        (
            "mirrors: [{destination: {host: a}}, {destination: {host: b}, percentage: {value: 0}}, {destination: {host: c.other.svc.cluster.local}, percentage: {value: 5}}]",
            vec![
                mirror("a.shop.svc.cluster.local", 9080, "", 100.0),
                mirror("c.other.svc.cluster.local", 9080, "", 5.0),
            ],
        ),
    ];
    for (spec, expected) in cases {
        let vs = vs(&format!(
            "{{hosts: [reviews], http: [{{{spec}, {ROUTE}}}]}}"
        ));
        let routes = table(&[&vs], 9080).expect("routes");
        assert_eq!(&routes[0].mirrors, expected, "{spec}");
    }
}

#[test]
fn durations_take_go_syntax() {
    let cases = [
        ("5s", Some(5_000_000_000)),
        ("0.5s", Some(500_000_000)),
        ("1m30s", Some(90_000_000_000)),
        ("250ms", Some(250_000_000)),
        ("1h", Some(3_600_000_000_000)),
        ("1.5h", Some(5_400_000_000_000)),
        ("10us", Some(10_000)),
        ("10µs", Some(10_000)),
        ("7ns", Some(7)),
        (".5s", Some(500_000_000)),
        ("0", Some(0)),
        ("", None),
        ("5", None),
        ("-1s", None),
        ("5 s", None),
        ("1d", None),
        ("s", None),
    ];
    for (text, nanos) in cases {
        let parsed = parse_duration(text).ok().map(|d| d.as_nanos());
        assert_eq!(parsed, nanos, "{text:?}");
    }
    for (timeout, ms) in [("2s", 2000), ("0.25s", 250), ("1m", 60_000), ("15ms", 15)] {
        let route = only_route(&format!(
            "{{hosts: [reviews], http: [{{timeout: {timeout}, {ROUTE}}}]}}"
        ));
        assert_eq!(route.timeout_ms, ms, "{timeout}");
    }
}

#[test]
fn hosts_resolve_as_istio_resolves_short_names() {
    let cases = [
        ("reviews", "reviews.shop.svc.cluster.local"),
        ("Reviews", "reviews.shop.svc.cluster.local"),
        ("reviews.prod", "reviews.prod"),
        (
            "reviews.prod.svc.cluster.local",
            "reviews.prod.svc.cluster.local",
        ),
        ("*.prod.svc.cluster.local", "*.prod.svc.cluster.local"),
        ("*", "*"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
    ];
    for (host, expected) in cases {
        assert_eq!(resolve_host(host, "shop"), expected, "{host}");
    }
    let vs = vs("{hosts: [reviews, 10.0.0.1, \"*.prod.svc.cluster.local\"], http: [{route: [{destination: {host: reviews}}]}]}");
    assert_eq!(
        vs.hosts(),
        [REVIEWS, "10.0.0.1", "*.prod.svc.cluster.local"].map(str::to_owned)
    );
}

#[test]
fn gateways_and_export_to_decide_who_sees_a_virtual_service() {
    let none = BTreeMap::new();
    // (gateways and exportTo, client namespace, applies)
    let cases = [
        ("", "shop", true),
        ("", "other", true),
        ("gateways: [mesh], ", "other", true),
        ("gateways: [shop/ingress], ", "shop", false),
        ("gateways: [ingress, mesh], ", "shop", true),
        ("exportTo: [\".\"], ", "shop", true),
        ("exportTo: [\".\"], ", "other", false),
        ("exportTo: [\"*\"], ", "other", true),
        ("exportTo: [other], ", "other", true),
        ("exportTo: [other], ", "shop", false),
        ("exportTo: [\".\", other], ", "other", true),
        ("exportTo: [\".\", other], ", "third", false),
    ];
    for (spec, namespace, applies) in cases {
        let vs = vs(&format!(
            "{{hosts: [reviews], {spec}http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}"
        ));
        let routes = http_table(&[&vs], REVIEWS, 80, &client(namespace, &none), &no_ports);
        assert_eq!(routes.is_some(), applies, "{spec} from {namespace}");
    }
}

/// The VirtualService whose routes a client in `namespace` gets for `REVIEWS`.
fn winner(
    services: &[&VirtualService],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    let routes = http_table(services, REVIEWS, 80, &client(namespace, labels), &no_ports)?;
    Some(format!("{}/{}", routes[0].namespace, routes[0].name))
}

#[test]
fn one_virtual_service_per_host_as_istio_picks_it() {
    let none = BTreeMap::new();
    let spec = |hosts: &str, export: &str| {
        format!(
            "{{hosts: [{hosts}], {export}http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}"
        )
    };
    let old = "2024-01-01T00:00:00Z";
    let new = "2024-06-01T00:00:00Z";

    // The oldest wins; at the same age the first by name, then by namespace.
    let a = vs_at("shop", "b-older", Some(old), &spec(REVIEWS, ""));
    let b = vs_at("shop", "a-newer", Some(new), &spec(REVIEWS, ""));
    assert_eq!(
        winner(&[&b, &a], "shop", &none).as_deref(),
        Some("shop/b-older")
    );
    let c = vs_at("shop", "a-same", Some(old), &spec(REVIEWS, ""));
    assert_eq!(
        winner(&[&a, &c], "shop", &none).as_deref(),
        Some("shop/a-same")
    );
    let d = vs_at("alpha", "a-same", Some(old), &spec(REVIEWS, ""));
    assert_eq!(
        winner(&[&c, &d], "other", &none).as_deref(),
        Some("alpha/a-same")
    );
    // Without a creation time, as Go's zero time: the oldest.
    let e = vs_at("shop", "z", None, &spec(REVIEWS, ""));
    assert_eq!(winner(&[&a, &e], "shop", &none).as_deref(), Some("shop/z"));

    // Private to the client's namespace beats exported by name beats public, whatever the age.
    let public = vs_at("shop", "public", Some(old), &spec(REVIEWS, ""));
    let named = vs_at(
        "shop",
        "named",
        Some(new),
        &spec(REVIEWS, "exportTo: [other], "),
    );
    let private = vs_at(
        "other",
        "private",
        Some(new),
        &spec(REVIEWS, "exportTo: [\".\"], "),
    );
    assert_eq!(
        winner(&[&public, &named], "other", &none).as_deref(),
        Some("shop/named")
    );
    assert_eq!(
        winner(&[&public, &named, &private], "other", &none).as_deref(),
        Some("other/private")
    );
    assert_eq!(
        winner(&[&public, &named, &private], "shop", &none).as_deref(),
        Some("shop/public")
    );

    // The first with routes for this client wins; one without is skipped.
    let picky = vs_at(
        "shop",
        "picky",
        Some(old),
        &format!(
            "{{hosts: [reviews], http: [{{match: [{{sourceLabels: {{app: a}}}}], {ROUTE}}}]}}"
        ),
    );
    let general = vs_at("shop", "general", Some(new), &spec("reviews", ""));
    assert_eq!(
        winner(&[&picky, &general], "shop", &none).as_deref(),
        Some("shop/general")
    );
    let app_a = labels(&[("app", "a")]);
    assert_eq!(
        winner(&[&picky, &general], "shop", &app_a).as_deref(),
        Some("shop/picky")
    );

    // A VirtualService bound to a gateway only is not seen.
    let gateway = vs_at(
        "shop",
        "gateway",
        Some(old),
        &spec("reviews", "gateways: [shop/gw], "),
    );
    assert_eq!(
        winner(&[&gateway, &general], "shop", &none).as_deref(),
        Some("shop/general")
    );
}

#[test]
fn an_exact_host_beats_wildcards_and_the_most_specific_wildcard_beats_others() {
    let none = BTreeMap::new();
    let spec = |host: &str| {
        format!("{{hosts: [\"{host}\"], http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}")
    };
    let old = Some("2024-01-01T00:00:00Z");
    let wide = vs_at("shop", "wide", old, &spec("*.svc.cluster.local"));
    let narrow = vs_at("shop", "narrow", None, &spec("*.shop.svc.cluster.local"));
    let exact = vs_at(
        "shop",
        "exact",
        Some("2025-01-01T00:00:00Z"),
        &spec(REVIEWS),
    );
    assert_eq!(
        winner(&[&wide, &narrow], "shop", &none).as_deref(),
        Some("shop/narrow")
    );
    assert_eq!(
        winner(&[&wide, &narrow, &exact], "shop", &none).as_deref(),
        Some("shop/exact")
    );
    let other = vs_at("shop", "other", None, &spec("*.other.svc.cluster.local"));
    assert_eq!(winner(&[&other], "shop", &none), None);

    // The wildcard's winner has no routes for this client: no VirtualService applies (unlike
    // exact hosts, where the next one is tried).
    let picky = vs_at(
        "shop",
        "picky",
        None,
        &format!("{{hosts: [\"*.shop.svc.cluster.local\"], http: [{{match: [{{sourceLabels: {{app: a}}}}], {ROUTE}}}]}}"),
    );
    let later = vs_at("shop", "later", old, &spec("*.shop.svc.cluster.local"));
    assert_eq!(winner(&[&picky, &later], "shop", &none), None);
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

#[test]
fn reads_a_destination_rule_as_istio_spells_it() {
    let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRetries: 3, maxRequestsPerConnection: 10}
    outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 2, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
"#;
    let Ok(IstioObject::DestinationRule(rule)) = read_doc(text) else {
        panic!("a DestinationRule");
    };
    assert_eq!(rule.host, REVIEWS);
    let none = BTreeMap::new();
    let (policy, subsets) = destination_policy(&[&rule], REVIEWS, 9080, &client("shop", &none));
    let expected = proto::TrafficPolicy {
        load_balancer: "LEAST_REQUEST".to_owned(),
        connection_pool: Some(proto::ConnectionPool {
            max_connections: 100,
            http1_max_pending_requests: 10,
            http2_max_requests: 1000,
            max_requests_per_connection: 10,
            max_retries: 3,
        }),
        outlier_detection: Some(proto::OutlierDetection {
            consecutive_5xx_errors: 7,
            consecutive_gateway_errors: 2,
            interval_ms: 300_000,
            base_ejection_time_ms: 900_000,
            max_ejection_percent: 50,
        }),
        tls_mode: "ISTIO_MUTUAL".to_owned(),
        policy: "shop/reviews".to_owned(),
        tls: None,
    };
    assert_eq!(policy.as_ref(), Some(&expected));
    assert_eq!(subsets.len(), 2);
    assert_eq!(subsets[0].name, "v1");
    assert_eq!(
        subsets[0].labels.get("version").map(String::as_str),
        Some("v1")
    );
    assert_eq!(subsets[0].traffic_policy.as_ref(), Some(&expected));
    assert_eq!(
        subsets[1].traffic_policy,
        Some(proto::TrafficPolicy {
            load_balancer: "ROUND_ROBIN".to_owned(),
            ..expected
        })
    );
}

#[test]
fn unset_fields_take_istio_defaults() {
    let cases: &[(&str, proto::TrafficPolicy)] = &[
        (
            "{outlierDetection: {}}",
            proto::TrafficPolicy {
                outlier_detection: Some(proto::OutlierDetection {
                    consecutive_5xx_errors: 5,
                    consecutive_gateway_errors: 0,
                    interval_ms: 10_000,
                    base_ejection_time_ms: 30_000,
                    max_ejection_percent: 10,
                }),
                ..Default::default()
            },
        ),
        (
            "{outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, consecutiveErrors: 4, maxEjectionPercent: 0, minHealthPercent: 0}}",
            proto::TrafficPolicy {
                outlier_detection: Some(proto::OutlierDetection {
                    consecutive_5xx_errors: 0,
                    consecutive_gateway_errors: 3,
                    interval_ms: 10_000,
                    base_ejection_time_ms: 30_000,
                    max_ejection_percent: 10,
                }),
                ..Default::default()
            },
        ),
        (
            "{tls: {}}",
            proto::TrafficPolicy {
                tls_mode: "DISABLE".to_owned(),
                ..Default::default()
            },
        ),
        (
            "{loadBalancer: {}, connectionPool: {http: {h2UpgradePolicy: DEFAULT, useClientProtocol: false, maxConcurrentStreams: 0}}}",
            proto::TrafficPolicy {
                connection_pool: Some(proto::ConnectionPool::default()),
                ..Default::default()
            },
        ),
        (
            "{loadBalancer: {simple: UNSPECIFIED}, tls: {mode: DISABLE}}",
            proto::TrafficPolicy {
                tls_mode: "DISABLE".to_owned(),
                ..Default::default()
            },
        ),
        (
            "{tls: {mode: SIMPLE, caCertificates: /etc/certs/ca.pem, sni: api.example.com, subjectAltNames: [api.example.com]}}",
            proto::TrafficPolicy {
                tls_mode: "SIMPLE".to_owned(),
                tls: Some(proto::OriginateTls {
                    ca_certificates: "/etc/certs/ca.pem".to_owned(),
                    sni: "api.example.com".to_owned(),
                    subject_alt_names: vec!["api.example.com".to_owned()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "{tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, insecureSkipVerify: true}}",
            proto::TrafficPolicy {
                tls_mode: "MUTUAL".to_owned(),
                tls: Some(proto::OriginateTls {
                    client_certificate: "/c.pem".to_owned(),
                    private_key: "/k.pem".to_owned(),
                    insecure_skip_verify: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    let none = BTreeMap::new();
    for (policy, expected) in cases {
        let rule = dr(&format!("{{host: reviews, trafficPolicy: {policy}}}"));
        let (got, _) = destination_policy(&[&rule], REVIEWS, 80, &client("shop", &none));
        let expected = proto::TrafficPolicy {
            policy: "shop/reviews".to_owned(),
            ..expected.clone()
        };
        assert_eq!(got, Some(expected), "{policy}");
    }
}

#[test]
fn destination_rule_rejections_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("{}", "spec.host: the host name must not be empty"),
        ("{host: \"bad host\"}", "spec.host: \"bad host\" is not a host name"),
        ("{host: reviews, trafficPolicy: {}}", "spec.trafficPolicy: must set at least one field"),
        (
            "{host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_LOADED}}}",
            "spec.trafficPolicy.loadBalancer.simple: \"LEAST_LOADED\" is not one of",
        ),
        (
            "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false}}}}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {loadBalancer: {warmupDurationSecs: 10s}}}",
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {}}}",
            "spec.trafficPolicy.connectionPool: must set tcp or http",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections: -1 is not between 0 and 2147483647",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 30ms}}}}",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {}}}}}",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {http: {idleTimeout: 1s}}}}",
            "spec.trafficPolicy.connectionPool.http.idleTimeout: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}}",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {http: {maxConcurrentStreams: 10}}}}",
            "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {connectionPool: {http: {http2MaxRequests: -5}}}}",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests: -5",
        ),
        (
            "{host: reviews, trafficPolicy: {outlierDetection: {splitExternalLocalOriginErrors: true}}}",
            "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {outlierDetection: {minHealthPercent: 10}}}",
            "spec.trafficPolicy.outlierDetection.minHealthPercent: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: 101 is not between 0 and 100",
        ),
        (
            "{host: reviews, trafficPolicy: {outlierDetection: {interval: 0s}}}",
            "spec.trafficPolicy.outlierDetection.interval: must be at least 1ms",
        ),
        (
            "{host: reviews, trafficPolicy: {outlierDetection: {consecutive5xxErrors: -1}}}",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors: -1",
        ),
        (
            "{host: reviews, trafficPolicy: {outlierDetection: {outlierDetectionHttpErrorCodes: [500]}}}",
            "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, credentialName: api-cert}}}",
            "spec.trafficPolicy.tls.credentialName: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, privateKey: /k}}}",
            "spec.trafficPolicy.tls.privateKey: only with mode MUTUAL",
        ),
        (
            "{host: reviews, trafficPolicy: {tls: {mode: MUTUAL, privateKey: /k}}}",
            "spec.trafficPolicy.tls.clientCertificate: required with mode MUTUAL",
        ),
        (
            "{host: reviews, trafficPolicy: {tls: {mode: DISABLE, caCertificates: /c}}}",
            "spec.trafficPolicy.tls.caCertificates: only with mode SIMPLE or MUTUAL (the mode is DISABLE)",
        ),
        (
            "{host: reviews, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, sni: reviews}}}",
            "spec.trafficPolicy.tls.sni: only with mode SIMPLE or MUTUAL (the mode is ISTIO_MUTUAL)",
        ),
        (
            "{host: reviews, trafficPolicy: {tls: {mode: STRICT}}}",
            "spec.trafficPolicy.tls.mode: \"STRICT\" is not one of",
        ),
        (
            "{host: reviews, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}",
            "spec.trafficPolicy.portLevelSettings[0].port: required",
        ),
        (
            "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 0}, tls: {}}]}}",
            "spec.trafficPolicy.portLevelSettings[0].port.number: 0 is not between 1 and 65535",
        ),
        (
            "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}}",
            "spec.trafficPolicy.portLevelSettings[0]: must set one of",
        ),
        (
            "{host: reviews, trafficPolicy: {tunnel: {targetHost: a, targetPort: 1}}}",
            "spec.trafficPolicy.tunnel: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {proxyProtocol: {}}}",
            "spec.trafficPolicy.proxyProtocol: not supported yet",
        ),
        (
            "{host: reviews, trafficPolicy: {retryBudget: {}}}",
            "spec.trafficPolicy.retryBudget: not supported yet",
        ),
        ("{host: reviews, subsets: [{labels: {a: b}}]}", "spec.subsets[0].name: required"),
        ("{host: reviews, subsets: [{name: V_1}]}", "spec.subsets[0].name: \"V_1\" is not a subset name"),
        (
            "{host: reviews, subsets: [{name: v1}, {name: v1}]}",
            "spec.subsets[1].name: \"v1\" is listed twice",
        ),
        (
            "{host: reviews, subsets: [{name: v1, labels: {version: \"v 1\"}}]}",
            "spec.subsets[0].labels.version: \"v 1\" is not a label value",
        ),
        (
            "{host: reviews, subsets: [{name: v1, trafficPolicy: {tls: {mode: MUTUAL}}}]}",
            "spec.subsets[0].trafficPolicy.tls.clientCertificate: required with mode MUTUAL",
        ),
        (
            "{host: reviews, workloadSelector: {matchLabels: {app: \"*\"}}}",
            "spec.workloadSelector.matchLabels.app: wildcards are not supported",
        ),
        (
            "{host: reviews, workloadSelector: {matchLabels: {app: a}}, exportTo: [other]}",
            "spec.exportTo: a DestinationRule with a workload selector cannot be exported beyond its namespace",
        ),
        (
            "{host: reviews, exportTo: [\"Not A Namespace\"]}",
            "spec.exportTo[0]: \"Not A Namespace\" is neither",
        ),
        (
            "{host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}, extra: 1}}",
            "spec.trafficPolicy.extra: unknown field `extra`",
        ),
    ];
    for (spec, expected) in cases {
        let reason = rejection("DestinationRule", spec);
        assert!(
            reason.contains(expected),
            "{spec}\n  got: {reason}\n  want: {expected}"
        );
    }
}

#[test]
fn port_level_settings_replace_the_policy_for_their_port() {
    let rule = dr(
        "{host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, connectionPool: {tcp: {maxConnections: 10}}, portLevelSettings: [{port: {number: 9080}, loadBalancer: {simple: RANDOM}}, {port: {number: 9080}, tls: {}}]}}",
    );
    let none = BTreeMap::new();
    let at = |port| destination_policy(&[&rule], REVIEWS, port, &client("shop", &none)).0;
    assert_eq!(
        at(9080),
        Some(proto::TrafficPolicy {
            load_balancer: "RANDOM".to_owned(),
            policy: "shop/reviews".to_owned(),
            ..Default::default()
        }),
        "the first settings for the port, nothing inherited"
    );
    assert_eq!(
        at(80),
        Some(proto::TrafficPolicy {
            load_balancer: "ROUND_ROBIN".to_owned(),
            connection_pool: Some(proto::ConnectionPool {
                max_connections: 10,
                ..Default::default()
            }),
            policy: "shop/reviews".to_owned(),
            ..Default::default()
        })
    );
    let only_ports = dr(
        "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 9080}, tls: {mode: DISABLE}}]}}",
    );
    let (policy, _) = destination_policy(&[&only_ports], REVIEWS, 80, &client("shop", &none));
    assert_eq!(policy, None, "nothing for other ports");
}

#[test]
fn subset_policies_merge_over_the_port_policy() {
    let rule = dr(r#"{host: reviews,
            trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, connectionPool: {tcp: {maxConnections: 10}},
                            portLevelSettings: [{port: {number: 9080}, tls: {mode: ISTIO_MUTUAL}}]},
            subsets: [
              {name: plain, labels: {v: "1"}},
              {name: blocks, labels: {v: "2"}, trafficPolicy: {loadBalancer: {simple: RANDOM}}},
              {name: ported, labels: {v: "3"}, trafficPolicy: {loadBalancer: {simple: RANDOM},
                                                               portLevelSettings: [{port: {number: 80}, tls: {mode: DISABLE}}]}}]}"#);
    let none = BTreeMap::new();
    let subsets = |port| {
        destination_policy(&[&rule], REVIEWS, port, &client("shop", &none))
            .1
            .into_iter()
            .map(|s| {
                (
                    s.name,
                    s.traffic_policy.map(|p| {
                        (
                            p.load_balancer,
                            p.connection_pool.map(|c| c.max_connections),
                            p.tls_mode,
                        )
                    }),
                )
            })
            .collect::<Vec<_>>()
    };
    let some = |lb: &str, max: Option<u32>, tls: &str| Some((lb.to_owned(), max, tls.to_owned()));
    assert_eq!(
        subsets(80),
        [
            ("plain".to_owned(), some("ROUND_ROBIN", Some(10), "")),
            ("blocks".to_owned(), some("RANDOM", Some(10), "")),
            // Port-level settings of a subset replace everything for their port.
            ("ported".to_owned(), some("", None, "DISABLE")),
        ]
    );
    assert_eq!(
        subsets(9080),
        [
            ("plain".to_owned(), some("", None, "ISTIO_MUTUAL")),
            ("blocks".to_owned(), some("RANDOM", None, "ISTIO_MUTUAL")),
            ("ported".to_owned(), some("RANDOM", None, "ISTIO_MUTUAL")),
        ]
    );
    let bare = dr("{host: reviews, subsets: [{name: v1, labels: {v: \"1\"}}]}");
    let (policy, subsets) = destination_policy(&[&bare], REVIEWS, 80, &client("shop", &none));
    assert_eq!(policy, None);
    assert_eq!(subsets.len(), 1);
    assert_eq!(subsets[0].traffic_policy, None);
}

/// `(policy name, subset names)` a client in `namespace` gets for `REVIEWS` port 80.
fn chosen(
    rules: &[&DestinationRule],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> (Option<String>, Vec<String>) {
    let (policy, subsets) = destination_policy(rules, REVIEWS, 80, &client(namespace, labels));
    (
        policy.map(|p| p.policy),
        subsets.into_iter().map(|s| s.name).collect(),
    )
}

const POLICY: &str = "trafficPolicy: {loadBalancer: {simple: RANDOM}}";

#[test]
fn destination_rules_are_looked_up_as_istio_looks_them_up() {
    let none = BTreeMap::new();
    let rule = |namespace: &str, name: &str, rest: &str| {
        dr_at(
            namespace,
            name,
            None,
            &format!("{{host: {REVIEWS}, {POLICY}{rest}}}"),
        )
    };
    let name = |n: &str| (Some(n.to_owned()), Vec::new());

    let own = rule("shop", "own", "");
    // The service's namespace exports it everywhere by default.
    assert_eq!(chosen(&[&own], "other", &none), name("shop/own"));
    // The client's own namespace first.
    let client_side = rule("other", "client-side", "");
    assert_eq!(
        chosen(&[&own, &client_side], "other", &none),
        name("other/client-side")
    );
    assert_eq!(
        chosen(&[&own, &client_side], "shop", &none),
        name("shop/own")
    );
    // Private to the service's namespace: the root namespace's rule instead.
    let private = rule("shop", "private", ", exportTo: [\".\"]");
    let mesh_wide = rule(ROOT, "mesh-wide", "");
    assert_eq!(
        chosen(&[&private, &mesh_wide], "other", &none),
        name("istio-system/mesh-wide")
    );
    assert_eq!(
        chosen(&[&private, &mesh_wide], "shop", &none),
        name("shop/private")
    );
    assert_eq!(chosen(&[&private], "other", &none), (None, Vec::new()));
    // Exported by name.
    let named = rule("shop", "named", ", exportTo: [other]");
    assert_eq!(
        chosen(&[&named, &mesh_wide], "other", &none),
        name("shop/named")
    );
    assert_eq!(
        chosen(&[&named, &mesh_wide], "third", &none),
        name("istio-system/mesh-wide")
    );
    // A client in the root namespace sees the root's private rules first, exported ones last.
    let root_private = rule(ROOT, "root-private", ", exportTo: [\".\"]");
    assert_eq!(
        chosen(&[&root_private, &own], ROOT, &none),
        name("istio-system/root-private")
    );
    assert_eq!(chosen(&[&mesh_wide, &own], ROOT, &none), name("shop/own"));
    assert_eq!(
        chosen(&[&mesh_wide], ROOT, &none),
        name("istio-system/mesh-wide")
    );
}

#[test]
fn the_most_specific_host_wins_even_when_it_applies_to_nobody() {
    let none = BTreeMap::new();
    let app_a = labels(&[("app", "a")]);
    let rule = |name: &str, host: &str, rest: &str| {
        dr_at(
            "shop",
            name,
            None,
            &format!("{{host: \"{host}\", {POLICY}{rest}}}"),
        )
    };
    let wide = rule("wide", "*.svc.cluster.local", "");
    let narrow = rule("narrow", "*.shop.svc.cluster.local", "");
    let exact = rule("exact", REVIEWS, "");
    let name = |n: &str| (Some(n.to_owned()), Vec::new());
    assert_eq!(
        chosen(&[&wide, &narrow], "shop", &none),
        name("shop/narrow")
    );
    assert_eq!(
        chosen(&[&wide, &narrow, &exact], "shop", &none),
        name("shop/exact")
    );
    // Only a selected rule for the host: a client it does not select gets no rule at all,
    // not the wildcard one.
    let selected = rule(
        "selected",
        REVIEWS,
        ", workloadSelector: {matchLabels: {app: a}}",
    );
    assert_eq!(
        chosen(&[&wide, &selected], "shop", &app_a),
        name("shop/selected")
    );
    assert_eq!(
        chosen(&[&wide, &selected], "shop", &none),
        (None, Vec::new())
    );
}

#[test]
fn workload_selectors_pick_among_a_namespace_rules() {
    let none = BTreeMap::new();
    let app_a = labels(&[("app", "a"), ("tier", "web")]);
    let old = Some("2024-01-01T00:00:00Z");
    let catch_all = dr_at(
        "shop",
        "catch-all",
        old,
        &format!("{{host: reviews, {POLICY}}}"),
    );
    let for_a = dr_at(
        "shop",
        "for-a",
        None,
        &format!("{{host: reviews, workloadSelector: {{matchLabels: {{app: a}}}}, {POLICY}}}"),
    );
    let name = |n: &str| (Some(n.to_owned()), Vec::new());
    assert_eq!(
        chosen(&[&catch_all, &for_a], "shop", &app_a),
        name("shop/for-a")
    );
    assert_eq!(
        chosen(&[&catch_all, &for_a], "shop", &none),
        name("shop/catch-all")
    );
    // Never exported: a client elsewhere gets the rule without a selector.
    assert_eq!(
        chosen(&[&catch_all, &for_a], "other", &app_a),
        name("shop/catch-all")
    );
}

#[test]
fn rules_of_a_namespace_for_one_host_are_merged() {
    let none = BTreeMap::new();
    let older = dr_at(
        "shop",
        "older",
        Some("2024-01-01T00:00:00Z"),
        "{host: reviews, subsets: [{name: v1, labels: {v: \"1\"}}, {name: v2, labels: {v: \"2\"}}]}",
    );
    let newer = dr_at(
        "shop",
        "newer",
        Some("2024-06-01T00:00:00Z"),
        &format!("{{host: reviews, {POLICY}, subsets: [{{name: v2, labels: {{v: new}}}}, {{name: v3, labels: {{v: \"3\"}}}}]}}"),
    );
    let newest = dr_at(
        "shop",
        "newest",
        Some("2024-09-01T00:00:00Z"),
        "{host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}",
    );
    // The older rule's subsets first; the first policy found (the newer's, as the older has
    // none); a duplicate subset keeps the older definition.
    let (policy, subsets) = destination_policy(
        &[&newest, &newer, &older],
        REVIEWS,
        80,
        &client("other", &none),
    );
    let policy = policy.expect("a policy");
    assert_eq!(policy.load_balancer, "RANDOM");
    assert_eq!(policy.policy, "shop/newer");
    let got: Vec<_> = subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels.get("v").map(String::as_str)))
        .collect();
    assert_eq!(
        got,
        [("v1", Some("1")), ("v2", Some("2")), ("v3", Some("3"))]
    );

    // Different exportTo: kept apart, and the last one without a selector stands.
    let private = dr_at(
        "shop",
        "private",
        Some("2024-01-01T00:00:00Z"),
        &format!("{{host: reviews, {POLICY}, exportTo: [\".\"]}}"),
    );
    let public = dr_at(
        "shop",
        "public",
        Some("2024-06-01T00:00:00Z"),
        "{host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}, exportTo: [\"*\"]}",
    );
    assert_eq!(
        chosen(&[&private, &public], "shop", &none),
        (Some("shop/public".to_owned()), Vec::new())
    );
    assert_eq!(
        chosen(&[&private, &public], "other", &none),
        (Some("shop/public".to_owned()), Vec::new())
    );
}

#[test]
fn service_namespaces_come_from_hostnames() {
    assert_eq!(service_namespace(REVIEWS), Some("shop"));
    assert_eq!(service_namespace("a.b.c.svc.cluster.local"), Some("c"));
    assert_eq!(service_namespace("reviews.svc.cluster.local"), None);
    assert_eq!(service_namespace("example.com"), None);
}

#[test]
fn host_names_are_checked_as_istio_checks_them() {
    let cases = [
        ("reviews", true),
        ("reviews.shop.svc.cluster.local", true),
        ("reviews.shop.", true),
        ("*.shop.svc.cluster.local", true),
        ("*-suffix.example.com", true),
        ("*", true),
        ("", false),
        ("a.*.com", false),
        ("foo.123", false),
        ("under_score.com", false),
        ("-lead.com", false),
    ];
    for (host, valid) in cases {
        assert_eq!(check_wildcard_domain(host).is_ok(), valid, "{host:?}");
    }
    assert!(hosts_overlap("*.com", "a.b.com"));
    assert!(hosts_overlap("*.b.com", "*.com"));
    assert!(!hosts_overlap("*.foo.com", "foo.com"));
    assert!(more_specific(
        "*.shop.svc.cluster.local",
        "*.svc.cluster.local"
    ));
    assert!(more_specific("*.a.com", "*.b.com"));
}

#[test]
fn policies_the_sidecar_cannot_apply_yet_are_refused_by_name() {
    let cases = [
        (
            "loadBalancer: {simple: PASSTHROUGH}, tls: {mode: SIMPLE}",
            "PASSTHROUGH with tls SIMPLE or MUTUAL is not supported yet",
        ),
        (
            "connectionPool: {tcp: {connectTimeout: 1s}}",
            "connectionPool.tcp.connectTimeout: not supported yet",
        ),
    ];
    for (policy, expected) in cases {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: reviews, namespace: shop}}\n\
             spec:\n  host: reviews\n  trafficPolicy: {{{policy}}}\n"
        );
        let err = read_doc(&text).expect_err("refused");
        assert!(err.contains(expected), "{expected:?} missing from {err}");
    }
}

#[test]
fn cors_policies_translate_to_the_routes_cors() {
    let route = only_route(
        "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {allowOrigin: [https://old.example], allowOrigins: [{prefix: https://shop}, {regex: 'https://.*[.]test'}], allowMethods: [GET, POST], allowHeaders: [x-token], exposeHeaders: [x-trace], maxAge: 24h, allowCredentials: true, unmatchedPreflights: IGNORE}}]}",
    );
    let exact = |s: &str| proto::StringMatch {
        kind: Some(Kind::Exact(s.into())),
        ignore_case: false,
    };
    assert_eq!(
        route.cors,
        Some(proto::Cors {
            allow_origins: vec![
                exact("https://old.example"),
                proto::StringMatch {
                    kind: Some(Kind::Prefix("https://shop".into())),
                    ignore_case: false
                },
                proto::StringMatch {
                    kind: Some(Kind::Regex("https://.*[.]test".into())),
                    ignore_case: false
                },
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-trace".into()],
            max_age_seconds: 86_400,
            allow_credentials: true,
            ignore_unmatched_preflights: true,
        })
    );
}

#[test]
fn tcp_and_tls_rules_become_the_ports_tcp_routes() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tls:
    - match: [{port: 9000, sniHosts: ["*.v2.example"]}, {port: 9443, sniHosts: [other.example]}]
      route: [{destination: {host: db, subset: v2}}]
  tcp:
    - match: [{port: 9000, sourceLabels: {app: sleep}}]
      route:
        - {destination: {host: db, subset: v1}, weight: 70}
        - {destination: {host: db, subset: v2, port: {number: 9001}}, weight: 30}
"#;
    let Ok(IstioObject::VirtualService(vs)) = read_doc(text) else {
        panic!("a VirtualService");
    };
    let host = "db.shop.svc.cluster.local";
    let sleep: BTreeMap<String, String> = [("app".to_owned(), "sleep".to_owned())].into();
    let routes = tcp_table(&[&vs], host, 9000, &client("shop", &sleep)).expect("routes");
    type Summary = (Vec<String>, Vec<(String, u32, u32)>);
    let summary: Vec<Summary> = routes
        .iter()
        .map(|r| {
            (
                r.sni_hosts.clone(),
                r.backends
                    .iter()
                    .map(|b| (b.subset.clone(), b.port, b.weight))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                vec!["*.v2.example".to_owned()],
                vec![("v2".to_owned(), 9000, 100)]
            ),
            (
                vec![],
                vec![("v1".to_owned(), 9000, 70), ("v2".to_owned(), 9001, 30)]
            ),
        ]
    );
    assert_eq!(routes[1].rule, 0, "the tcp rule's own index");
    // Another client: only the `tls` rule is for it; another port: none.
    let none = BTreeMap::new();
    assert_eq!(
        tcp_table(&[&vs], host, 9000, &client("shop", &none))
            .expect("routes")
            .len(),
        1
    );
    let other = tcp_table(&[&vs], host, 9443, &client("shop", &none)).expect("routes");
    assert_eq!(other[0].sni_hosts, ["other.example"]);
    assert!(tcp_table(&[&vs], host, 8080, &client("shop", &none)).is_none());
}
