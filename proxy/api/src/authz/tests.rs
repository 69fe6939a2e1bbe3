//! The decision, table by table: each field and its `not` form, the string patterns, the order
//! of actions, AUDIT and dry-run, TCP's asymmetry, and the policies Istio refuses.

use std::net::SocketAddr;

use http::HeaderMap;
use serde_json::json;

use super::*;
use crate::{proto::config as proto, SpiffeId};

/// A policy from its YAML-like JSON (`{"action": "DENY", "rules": [...]}` in the proto's
/// camelCase), in namespace `team-a`.
fn policy(name: &str, spec: serde_json::Value) -> proto::AuthorizationPolicy {
    let mut value = spec;
    value["namespace"] = json!("team-a");
    value["name"] = json!(name);
    serde_json::from_value(value).expect("policy JSON")
}

fn authorization(policies: &[proto::AuthorizationPolicy]) -> Authorization {
    Authorization::new(
        policies
            .iter()
            .map(|p| Policy::compile(p).expect("valid policy")),
    )
}

const CURL_A: &str = "spiffe://cluster.local/ns/team-a/sa/curl";
const CURL_B: &str = "spiffe://cluster.local/ns/team-b/sa/curl";

struct Call {
    peer: Option<SpiffeId>,
    source: SocketAddr,
    port: u16,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: HeaderMap,
    remote: Option<&'static str>,
}

fn call(peer: Option<&str>) -> Call {
    Call {
        peer: peer.map(|p| p.parse().expect("spiffe id")),
        source: "198.18.0.5:40000".parse().expect("addr"),
        port: 8080,
        method: "GET",
        path: "/get",
        host: "httpbin.team-a:8000",
        headers: HeaderMap::new(),
        remote: None,
    }
}

impl Call {
    fn conn(&self) -> ConnectionFacts<'_> {
        ConnectionFacts {
            peer: self.peer.as_ref(),
            source: self.source,
            destination: SocketAddr::from(([198, 18, 0, 3], self.port)),
            sni: None,
        }
    }

    fn decide(&self, authz: &Authorization) -> Verdict {
        self.decision(authz).verdict
    }

    fn decision<'p>(&self, authz: &'p Authorization) -> Decision<'p> {
        let request = RequestFacts {
            method: self.method,
            path: self.path,
            host: self.host,
            headers: &self.headers,
            remote_ip: self
                .remote
                .map_or(self.source.ip(), |r| r.parse().expect("ip")),
            jwt: None,
        };
        authz.decide(&self.conn(), Some(&request))
    }

    fn decide_tcp(&self, authz: &Authorization) -> Verdict {
        authz.decide(&self.conn(), None).verdict
    }
}

use Verdict::{Allow, Deny};

#[test]
fn no_policy_allows_and_allow_nothing_denies() {
    assert_eq!(call(None).decide(&authorization(&[])), Allow);
    let nothing = authorization(&[policy("nothing", json!({}))]);
    assert_eq!(call(Some(CURL_A)).decide(&nothing), Deny);
    assert_eq!(call(Some(CURL_A)).decide_tcp(&nothing), Deny);
    let everything = authorization(&[policy("all", json!({"rules": [{}]}))]);
    assert_eq!(call(None).decide(&everything), Allow);
}

#[test]
fn each_source_field_and_its_not_form() {
    let mut xff = call(Some(CURL_A));
    xff.remote = Some("203.0.113.7");
    let cases: Vec<(serde_json::Value, Call, Verdict)> = vec![
        (
            json!({"principals": ["cluster.local/ns/team-a/sa/curl"]}),
            call(Some(CURL_A)),
            Allow,
        ),
        (
            json!({"principals": ["cluster.local/ns/team-a/sa/curl"]}),
            call(Some(CURL_B)),
            Deny,
        ),
        (json!({"principals": ["*"]}), call(None), Deny),
        (json!({"principals": ["*"]}), call(Some(CURL_B)), Allow),
        (json!({"notPrincipals": ["*"]}), call(None), Allow),
        (json!({"notPrincipals": ["*"]}), call(Some(CURL_A)), Deny),
        (
            json!({"principals": ["cluster.local/ns/team-a/*"]}),
            call(Some(CURL_A)),
            Allow,
        ),
        (
            json!({"principals": ["*/sa/curl"]}),
            call(Some(CURL_B)),
            Allow,
        ),
        (json!({"namespaces": ["team-a"]}), call(Some(CURL_A)), Allow),
        (json!({"namespaces": ["team-a"]}), call(Some(CURL_B)), Deny),
        (json!({"namespaces": ["team-a"]}), call(None), Deny),
        (
            json!({"notNamespaces": ["team-b"]}),
            call(Some(CURL_A)),
            Allow,
        ),
        (
            json!({"notNamespaces": ["team-b"]}),
            call(Some(CURL_B)),
            Deny,
        ),
        (
            json!({"serviceAccounts": ["team-a/curl"]}),
            call(Some(CURL_A)),
            Allow,
        ),
        (
            json!({"serviceAccounts": ["curl"]}),
            call(Some(CURL_A)),
            Allow,
        ),
        (
            json!({"serviceAccounts": ["curl"]}),
            call(Some(CURL_B)),
            Deny,
        ),
        (
            json!({"notServiceAccounts": ["team-b/curl"]}),
            call(Some(CURL_B)),
            Deny,
        ),
        (json!({"ipBlocks": ["198.18.0.0/24"]}), call(None), Allow),
        (json!({"ipBlocks": ["10.0.0.0/8"]}), call(None), Deny),
        (json!({"notIpBlocks": ["198.18.0.5"]}), call(None), Deny),
        (json!({"remoteIpBlocks": ["203.0.113.0/24"]}), xff, Allow),
        (
            json!({"remoteIpBlocks": ["203.0.113.0/24"]}),
            call(None),
            Deny,
        ),
        (
            json!({"requestPrincipals": ["*"]}),
            call(Some(CURL_A)),
            Deny,
        ),
        (
            json!({"notRequestPrincipals": ["*"]}),
            call(Some(CURL_A)),
            Allow,
        ),
    ];
    for (source, call, expected) in cases {
        let authz = authorization(&[policy("p", json!({"rules": [{"from": [source.clone()]}]}))]);
        assert_eq!(
            call.decide(&authz),
            expected,
            "{source} for {:?}",
            call.peer
        );
    }
}

#[test]
fn each_operation_field_and_its_not_form() {
    let with = |method: &'static str, path: &'static str, host: &'static str, port: u16| Call {
        method,
        path,
        host,
        port,
        ..call(None)
    };
    let cases = [
        (
            json!({"methods": ["GET"]}),
            with("GET", "/", "h", 8080),
            Allow,
        ),
        (
            json!({"methods": ["GET"]}),
            with("POST", "/", "h", 8080),
            Deny,
        ),
        (
            json!({"notMethods": ["POST"]}),
            with("POST", "/", "h", 8080),
            Deny,
        ),
        (
            json!({"paths": ["/orders"]}),
            with("GET", "/orders", "h", 8080),
            Allow,
        ),
        (
            json!({"paths": ["/orders"]}),
            with("GET", "/orders/1", "h", 8080),
            Deny,
        ),
        (
            json!({"paths": ["/orders*"]}),
            with("GET", "/orders/1", "h", 8080),
            Allow,
        ),
        (
            json!({"paths": ["*.png"]}),
            with("GET", "/a/b.png", "h", 8080),
            Allow,
        ),
        (
            json!({"paths": ["/orders/{*}"]}),
            with("GET", "/orders/1", "h", 8080),
            Allow,
        ),
        (
            json!({"paths": ["/orders/{**}"]}),
            with("GET", "/orders/1/x", "h", 8080),
            Allow,
        ),
        (
            json!({"notPaths": ["/admin*"]}),
            with("GET", "/admin/x", "h", 8080),
            Deny,
        ),
        (
            json!({"ports": ["8080"]}),
            with("GET", "/", "h", 8080),
            Allow,
        ),
        (
            json!({"ports": ["9090"]}),
            with("GET", "/", "h", 8080),
            Deny,
        ),
        (
            json!({"notPorts": ["8080"]}),
            with("GET", "/", "h", 8080),
            Deny,
        ),
        (
            json!({"hosts": ["example.com"]}),
            with("GET", "/", "EXAMPLE.com", 8080),
            Allow,
        ),
        (
            json!({"hosts": ["example.com"]}),
            with("GET", "/", "example.com:8000", 8080),
            Deny,
        ),
        (
            json!({"hosts": ["example.com:*"]}),
            with("GET", "/", "example.com:8000", 8080),
            Allow,
        ),
        (
            json!({"notHosts": ["*.internal"]}),
            with("GET", "/", "db.internal", 8080),
            Deny,
        ),
    ];
    for (operation, call, expected) in cases {
        let authz = authorization(&[policy("p", json!({"rules": [{"to": [operation.clone()]}]}))]);
        assert_eq!(
            call.decide(&authz),
            expected,
            "{operation} for {} {} {}:{}",
            call.method,
            call.path,
            call.host,
            call.port
        );
    }
}

#[test]
fn rules_or_and_fields_and() {
    let authz = authorization(&[policy(
        "p",
        json!({"rules": [
            {"from": [{"principals": ["cluster.local/ns/team-a/sa/curl"]}],
             "to": [{"methods": ["GET"], "paths": ["/orders"]}]},
            {"from": [{"namespaces": ["team-b"]}], "to": [{"methods": ["POST"]}]}
        ]}),
    )]);
    let get = |peer, method, path| Call {
        method,
        path,
        ..call(Some(peer))
    };
    assert_eq!(get(CURL_A, "GET", "/orders").decide(&authz), Allow);
    assert_eq!(get(CURL_A, "POST", "/orders").decide(&authz), Deny);
    assert_eq!(get(CURL_A, "GET", "/other").decide(&authz), Deny);
    assert_eq!(get(CURL_B, "POST", "/anything").decide(&authz), Allow);
    assert_eq!(get(CURL_B, "GET", "/orders").decide(&authz), Deny);
}

#[test]
fn when_conditions() {
    let mut tagged = call(Some(CURL_A));
    tagged
        .headers
        .insert("x-team", "blue".parse().expect("header"));
    let cases = [
        (
            json!({"key": "request.headers[x-team]", "values": ["blue"]}),
            Allow,
        ),
        (
            json!({"key": "request.headers[x-team]", "values": ["red"]}),
            Deny,
        ),
        (
            json!({"key": "request.headers[x-team]", "notValues": ["blue"]}),
            Deny,
        ),
        (
            json!({"key": "request.headers[x-other]", "values": ["*"]}),
            Deny,
        ),
        (
            json!({"key": "source.ip", "values": ["198.18.0.0/16"]}),
            Allow,
        ),
        (json!({"key": "remote.ip", "values": ["198.18.0.5"]}), Allow),
        (
            json!({"key": "destination.ip", "values": ["198.18.0.3"]}),
            Allow,
        ),
        (
            json!({"key": "destination.port", "values": ["8080"]}),
            Allow,
        ),
        (
            json!({"key": "destination.port", "notValues": ["8080"]}),
            Deny,
        ),
        (
            json!({"key": "source.namespace", "values": ["team-a"]}),
            Allow,
        ),
        (
            json!({"key": "source.principal", "values": ["cluster.local/ns/team-a/sa/curl"]}),
            Allow,
        ),
        (
            json!({"key": "source.serviceAccount", "values": ["team-a/curl"]}),
            Allow,
        ),
        (
            json!({"key": "source.trustDomain", "values": ["cluster.local"]}),
            Allow,
        ),
        (json!({"key": "connection.sni", "values": ["*"]}), Deny),
        (
            json!({"key": "request.auth.principal", "values": ["*"]}),
            Deny,
        ),
        (
            json!({"key": "request.auth.claims[groups]", "notValues": ["admin"]}),
            Allow,
        ),
    ];
    for (condition, expected) in cases {
        let authz = authorization(&[policy(
            "p",
            json!({"rules": [{"when": [condition.clone()]}]}),
        )]);
        assert_eq!(tagged.decide(&authz), expected, "{condition}");
    }
}

#[test]
fn deny_wins_then_allow_then_default() {
    let policies = [
        policy(
            "allow-curl",
            json!({"rules": [{"from": [{"principals": ["cluster.local/ns/team-a/sa/curl"]}]}]}),
        ),
        policy(
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]}),
        ),
    ];
    let authz = authorization(&policies);
    let admin = Call {
        path: "/admin/users",
        ..call(Some(CURL_A))
    };
    let decision = authz.decide(
        &admin.conn(),
        Some(&RequestFacts {
            method: "GET",
            path: admin.path,
            host: "h",
            headers: &admin.headers,
            remote_ip: admin.source.ip(),
            jwt: None,
        }),
    );
    assert_eq!(decision.verdict, Deny);
    assert_eq!(decision.policy(), "team-a/deny-admin");
    assert_eq!(
        decision.by.to_string(),
        "DENY policy team-a/deny-admin, rule 0"
    );
    assert_eq!(call(Some(CURL_A)).decide(&authz), Allow);
    assert_eq!(call(Some(CURL_B)).decide(&authz), Deny);
    assert_eq!(
        call(Some(CURL_B)).decision(&authz).by.to_string(),
        "no ALLOW policy matched (denied by default)"
    );
    // For TCP the DENY rule loses its path, and so denies every connection.
    assert_eq!(
        authz
            .decide(&call(Some(CURL_A)).conn(), None)
            .by
            .to_string(),
        "DENY policy team-a/deny-admin, rule 0"
    );
}

#[test]
fn audit_and_dry_run_never_decide() {
    let mut dry = policy(
        "dry-deny",
        json!({"action": "DENY", "rules": [{"to": [{"methods": ["GET"]}]}]}),
    );
    dry.dry_run = true;
    let mut dry_allow = policy("dry-allow", json!({}));
    dry_allow.dry_run = true;
    let authz = authorization(&[
        dry,
        dry_allow,
        policy(
            "audit-get",
            json!({"action": "AUDIT", "rules": [{"to": [{"methods": ["GET"]}]}]}),
        ),
    ]);
    let c = call(None);
    let decision = authz.decide(
        &c.conn(),
        Some(&RequestFacts {
            method: "GET",
            path: "/",
            host: "h",
            headers: &c.headers,
            remote_ip: c.source.ip(),
            jwt: None,
        }),
    );
    // The dry-run ALLOW matching nothing does not make an ALLOW policy exist either.
    assert_eq!(decision.verdict, Allow);
    assert!(matches!(decision.by, DecidedBy::NoAllowPolicy));
    let names = |m: &[Matched]| {
        m.iter()
            .map(|m| m.policy.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&decision.dry_run), ["team-a/dry-deny"]);
    assert_eq!(names(&decision.audit), ["team-a/audit-get"]);
}

#[test]
fn custom_fails_closed_on_what_it_matches() {
    let authz = authorization(&[policy(
        "ext",
        json!({"action": "CUSTOM", "provider": "opa", "rules": [{"to": [{"paths": ["/secure*"]}]}]}),
    )]);
    let secure = Call {
        path: "/secure/x",
        ..call(Some(CURL_A))
    };
    assert_eq!(secure.decide(&authz), Deny);
    assert_eq!(call(Some(CURL_A)).decide(&authz), Allow);
}

#[test]
fn tcp_drops_allow_rules_with_http_fields_and_widens_deny_rules() {
    let allow = authorization(&[policy(
        "allow",
        json!({"rules": [
            {"from": [{"namespaces": ["team-a"]}], "to": [{"methods": ["GET"]}]},
            {"to": [{"ports": ["9000"]}]}
        ]}),
    )]);
    // The first rule names a method: dropped for TCP, so team-a is not allowed on 8080.
    assert_eq!(call(Some(CURL_A)).decide_tcp(&allow), Deny);
    let on_9000 = Call {
        port: 9000,
        ..call(Some(CURL_B))
    };
    assert_eq!(on_9000.decide_tcp(&allow), Allow);
    let deny = authorization(&[policy(
        "deny",
        json!({"action": "DENY", "rules": [{"from": [{"namespaces": ["team-b"]}], "to": [{"paths": ["/admin"]}]}]}),
    )]);
    // Without its path the DENY rule denies every TCP connection from team-b.
    assert_eq!(call(Some(CURL_B)).decide_tcp(&deny), Deny);
    assert_eq!(call(Some(CURL_A)).decide_tcp(&deny), Allow);
    assert_eq!(call(Some(CURL_B)).decide(&deny), Allow);
}

#[test]
fn invalid_policies_name_the_field() {
    let cases = [
        (
            json!({"action": "DENY"}),
            "rules: a DENY policy needs at least one rule",
        ),
        (
            json!({"rules": [{"from": [{}]}]}),
            "rules[0].from[0].source: must set at least one field",
        ),
        (
            json!({"rules": [{"to": [{}]}]}),
            "rules[0].to[0].operation: must set at least one field",
        ),
        (
            json!({"rules": [{"from": [{"principals": [""]}]}]}),
            "rules[0].from[0].source.principals[0]: must not be empty",
        ),
        (
            json!({"rules": [{"from": [{"ipBlocks": ["300.0.0.0/8"]}]}]}),
            "rules[0].from[0].source.ipBlocks[0]: \"300.0.0.0/8\" is not",
        ),
        (
            json!({"rules": [{"from": [{"notIpBlocks": ["x"]}]}]}),
            "rules[0].from[0].source.notIpBlocks[0]",
        ),
        (
            json!({"rules": [{"to": [{"ports": ["http"]}]}]}),
            "rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
        ),
        (
            json!({"rules": [{"to": [{"paths": ["/a/{**}/b"]}]}]}),
            "rules[0].to[0].operation.paths[0]",
        ),
        (
            json!({"rules": [{"when": [{"key": "request.time", "values": ["x"]}]}]}),
            "rules[0].when[0].key: \"request.time\" is not a supported key",
        ),
        (
            json!({"rules": [{"when": [{"key": "experimental.envoy.filters.network.mysql_proxy[db.table]", "values": ["x"]}]}]}),
            "experimental Envoy filter metadata is not supported",
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip"}]}]}),
            "rules[0].when[0]: needs values or notValues",
        ),
        (
            json!({"rules": [{"from": [{"serviceAccounts": ["a/b"], "principals": ["x"]}]}]}),
            "serviceAccounts: cannot be combined with principals or namespaces",
        ),
        (
            json!({"provider": "opa", "rules": [{}]}),
            "provider: only a CUSTOM policy names a provider",
        ),
        (
            json!({"action": "CUSTOM", "rules": [{}]}),
            "provider: required for a CUSTOM policy",
        ),
        (
            json!({"action": "REJECT", "rules": [{}]}),
            "action: \"REJECT\" is not one of",
        ),
    ];
    for (spec, expected) in cases {
        let problems = Policy::compile(&policy("bad", spec.clone())).expect_err("invalid");
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{spec}: {expected:?} not in {problems:?}"
        );
    }
}

#[test]
fn remote_ip_honours_trusted_hops() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        "203.0.113.7, 198.51.100.1".parse().expect("header"),
    );
    let peer = "198.18.0.5".parse().expect("ip");
    assert_eq!(remote_ip(&headers, 0, peer), peer);
    assert_eq!(
        remote_ip(&headers, 1, peer),
        "198.51.100.1".parse::<std::net::IpAddr>().expect("ip")
    );
    assert_eq!(
        remote_ip(&headers, 2, peer),
        "203.0.113.7".parse::<std::net::IpAddr>().expect("ip")
    );
    assert_eq!(remote_ip(&headers, 3, peer), peer);
    assert_eq!(remote_ip(&HeaderMap::new(), 1, peer), peer);
}

#[test]
fn request_principals_and_claims_from_a_verified_jwt() {
    let claims: crate::jwt::Claims = crate::jwt::tests_support::claims(
        "https://issuer.example/alice",
        json!({"groups": ["dev"], "aud": "orders", "azp": "web"}),
    );
    let cases = [
        (
            json!({"rules": [{"from": [{"requestPrincipals": ["*"]}]}]}),
            true,
            Allow,
        ),
        (
            json!({"rules": [{"from": [{"requestPrincipals": ["*"]}]}]}),
            false,
            Deny,
        ),
        (
            json!({"rules": [{"from": [{"requestPrincipals": ["https://issuer.example/*"]}]}]}),
            true,
            Allow,
        ),
        (
            json!({"rules": [{"from": [{"notRequestPrincipals": ["*"]}]}]}),
            true,
            Deny,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.claims[groups]", "values": ["dev"]}]}]}),
            true,
            Allow,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.claims[groups]", "values": ["ops"]}]}]}),
            true,
            Deny,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.audiences", "values": ["orders"]}]}]}),
            true,
            Allow,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.presenter", "values": ["web"]}]}]}),
            true,
            Allow,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.principal", "values": ["*/alice"]}]}]}),
            true,
            Allow,
        ),
    ];
    for (spec, with_jwt, expected) in cases {
        let authz = authorization(&[policy("jwt", spec.clone())]);
        let c = call(None);
        let request = RequestFacts {
            method: "GET",
            path: "/",
            host: "h",
            headers: &c.headers,
            remote_ip: c.source.ip(),
            jwt: with_jwt.then_some(&claims),
        };
        let verdict = authz.decide(&c.conn(), Some(&request)).verdict;
        assert_eq!(verdict, expected, "{spec} with a JWT: {with_jwt}");
    }
}
