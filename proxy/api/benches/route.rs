//! What choosing a route costs a client sidecar per request.
//!
//! The setting the traffic issue names: a Service port with 50 routes (a VirtualService's
//! `http` list, each matching a path prefix, a header and a method), measured for a request
//! only the last route takes (every route before it is tried), one no route takes (404), and
//! the weighted split that follows a match. `compile` is what a config push costs for such a
//! table.

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use remora_api::{
    proto::config::{self as proto, HeaderMatch, HttpMatch, StringMatch},
    Logical, Snapshot,
};

const HOST: &str = "reviews.shop.svc.cluster.local";

fn string(kind: proto::string_match::Kind) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(kind),
        ignore_case: false,
    })
}

/// A snapshot whose `reviews:9080` has `routes` routes over subsets v1 and v2.
fn snapshot(routes: usize) -> proto::Snapshot {
    use proto::string_match::Kind;
    let http_routes = (0..routes)
        .map(|r| proto::HttpRoute {
            kind: "VirtualService".into(),
            namespace: "shop".into(),
            name: "reviews".into(),
            rule: r as u32,
            matches: vec![HttpMatch {
                path: string(Kind::Prefix(format!("/api/v1/{r}/"))),
                headers: vec![HeaderMatch {
                    name: "x-tenant".into(),
                    value: string(Kind::Exact(format!("tenant-{r}"))),
                    invert: false,
                }],
                method: "GET".into(),
                ..Default::default()
            }],
            backends: ["v1", "v2"]
                .into_iter()
                .zip([90, 10])
                .map(|(subset, weight)| proto::RouteBackend {
                    host: HOST.into(),
                    port: 9080,
                    subset: subset.into(),
                    weight,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    proto::Snapshot {
        services: vec![proto::Service {
            hostname: HOST.into(),
            addresses: vec!["198.19.0.9".into()],
            ports: vec![proto::ServicePort {
                port: 9080,
                name: "http".into(),
                http_routes,
                subsets: ["v1", "v2"]
                    .into_iter()
                    .map(|v| proto::Subset {
                        name: v.into(),
                        labels: [("version".to_owned(), v.to_owned())].into(),
                        traffic_policy: None,
                    })
                    .collect(),
                ..Default::default()
            }],
            passthrough: false,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn request(path: &str, tenant: &str) -> (Method, Uri, HeaderMap) {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_str(tenant).expect("value"));
    headers.insert("host", HeaderValue::from_static("reviews:9080"));
    (Method::GET, path.parse().expect("uri"), headers)
}

fn routes(c: &mut Criterion) {
    let compiled = Snapshot::try_from(snapshot(50)).expect("valid");
    let address: SocketAddr = "198.19.0.9:9080".parse().expect("addr");
    let Logical::Service(port) = compiled.lookup(address) else {
        panic!("a Service");
    };
    let table = &port.routes;
    let mut group = c.benchmark_group("route");
    let (method, uri, headers) = request("/api/v1/49/items?page=2", "tenant-49");
    group.bench_function("select/last of 50", |b| {
        b.iter(|| table.select(&method, &uri, &headers).is_some())
    });
    let (method, uri, headers) = request("/api/v2/items", "tenant-1");
    group.bench_function("select/none of 50 (404)", |b| {
        b.iter(|| table.select(&method, &uri, &headers).is_none())
    });
    let route = &table.routes()[49];
    let mut draw = 0u32;
    group.bench_function("split 90/10", |b| {
        b.iter(|| {
            draw = draw.wrapping_add(7919);
            route.split(draw).is_ok()
        })
    });
    let source = snapshot(50);
    group.bench_function("compile 50 routes", |b| {
        b.iter(|| Snapshot::try_from(source.clone()).is_ok())
    });
    group.finish();
}

criterion_group!(benches, routes);
criterion_main!(benches);
