//! What an AuthorizationPolicy decision costs a sidecar per request.
//!
//! The setting the zero-trust issue names: a namespace of 100 policies of which 10 select the
//! workload, with 10 rules each. The control plane selects the 10 per push, so the sidecar only
//! ever holds those; the decision is measured over them, for a request the last rule of the
//! last policy allows (every rule before it is tried) and one nothing allows (every rule is
//! tried, then the default denies). `rules/N` shows how the decision grows with rules per
//! policy, `compile` what a config push costs, and `check_request` the whole per-request check
//! with and without the policy set `remora-bench` compares.

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::HeaderMap;
use remora_api::{
    authz::{Authorization, ConnectionFacts, Policy, RequestFacts},
    proto::config::{self as proto, AuthorizationPolicy, Operation, Rule, Source},
    MeshSettings, Outcome, Security, SpiffeId,
};

/// Policy `p` of the workload: `rules` rules, each for one caller and one path prefix.
fn policy(p: usize, rules: usize) -> AuthorizationPolicy {
    AuthorizationPolicy {
        namespace: "shop".into(),
        name: format!("policy-{p}"),
        action: "ALLOW".into(),
        rules: (0..rules)
            .map(|r| Rule {
                from: vec![Source {
                    principals: vec![format!("cluster.local/ns/shop/sa/caller-{p}-{r}")],
                    ..Default::default()
                }],
                to: vec![Operation {
                    methods: vec!["GET".into(), "POST".into()],
                    paths: vec![format!("/api/v1/{p}/{r}/*")],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn authorization(policies: usize, rules: usize) -> Authorization {
    Authorization::new(
        (0..policies).map(|p| Policy::compile(&policy(p, rules)).expect("valid policy")),
    )
}

fn decide(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let source: SocketAddr = "198.18.0.5:40000".parse().expect("addr");
    let destination: SocketAddr = "198.18.0.3:8080".parse().expect("addr");
    let last: SpiffeId = "spiffe://cluster.local/ns/shop/sa/caller-9-9"
        .parse()
        .expect("id");
    let stranger: SpiffeId = "spiffe://cluster.local/ns/other/sa/curl"
        .parse()
        .expect("id");
    let conn = |peer| ConnectionFacts {
        peer: Some(peer),
        source,
        destination,
        sni: None,
    };
    let request = |path| RequestFacts {
        method: "GET",
        path,
        host: "web.shop:8080",
        headers: &headers,
        remote_ip: source.ip(),
        jwt: None,
    };
    let workload = authorization(10, 10);
    let mut group = c.benchmark_group("decide/10 policies x 10 rules");
    group.bench_function("allowed by the last rule", |b| {
        let (conn, req) = (conn(&last), request("/api/v1/9/9/orders"));
        b.iter(|| std::hint::black_box(workload.decide(&conn, Some(&req)).verdict));
    });
    group.bench_function("denied by default", |b| {
        let (conn, req) = (conn(&stranger), request("/api/v1/9/9/orders"));
        b.iter(|| std::hint::black_box(workload.decide(&conn, Some(&req)).verdict));
    });
    group.finish();

    let mut group = c.benchmark_group("decide/rules per policy (10 policies, denied)");
    for rules in [1, 10, 100] {
        let authz = authorization(10, rules);
        let (conn, req) = (conn(&stranger), request("/api/v1/9/9/orders"));
        group.bench_with_input(BenchmarkId::from_parameter(rules), &rules, |b, _| {
            b.iter(|| std::hint::black_box(authz.decide(&conn, Some(&req)).verdict));
        });
    }
    group.finish();

    c.bench_function("compile/10 policies x 10 rules (per push)", |b| {
        let policies: Vec<AuthorizationPolicy> = (0..10).map(|p| policy(p, 10)).collect();
        b.iter(|| {
            Authorization::new(
                policies
                    .iter()
                    .map(|p| Policy::compile(p).expect("valid policy")),
            )
        });
    });
}

/// The whole per-request check a sidecar runs (path normalization, JWT, decision) with the
/// policy set `remora-bench`'s `remora+policies` pair uses, on a real `http::Request`.
fn check_request(c: &mut Criterion) {
    let security = Security::compile(&proto::Security {
        authorization_policies: vec![
            AuthorizationPolicy {
                namespace: "bench".into(),
                name: "server-allow-client".into(),
                action: "ALLOW".into(),
                rules: vec![Rule {
                    from: vec![Source {
                        principals: vec!["cluster.local/ns/bench/sa/client".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
            AuthorizationPolicy {
                namespace: "bench".into(),
                name: "deny-admin".into(),
                action: "DENY".into(),
                rules: vec![Rule {
                    to: vec![Operation {
                        paths: vec!["/admin*".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        ..Default::default()
    })
    .expect("valid policies");
    let none = Security::default();
    let mesh = MeshSettings::default();
    let client: SpiffeId = "spiffe://cluster.local/ns/bench/sa/client"
        .parse()
        .expect("id");
    let conn = ConnectionFacts {
        peer: Some(&client),
        source: "198.18.0.13:40000".parse().expect("addr"),
        destination: "198.18.0.14:8080".parse().expect("addr"),
        sni: None,
    };
    let request = || {
        http::Request::get("/")
            .header("host", "198.18.0.14:8080")
            .header("user-agent", "oha/1.4")
            .header("accept", "*/*")
            .body(())
            .expect("request")
    };
    let mut group = c.benchmark_group("check_request");
    for (name, security) in [("no policies", &none), ("typical policies", &security)] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                request,
                |req| {
                    matches!(
                        security.check_request(&mesh, &conn, req),
                        Outcome::Allowed(_)
                    )
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, decide, check_request);
criterion_main!(benches);
