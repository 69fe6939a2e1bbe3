use std::collections::BTreeSet;

use prost::Message;
use remora_api::{
    proto::config::{
        self as proto, resource::Body, Endpoint, MeshSettings, PortEndpoints, Push, Service,
        ServiceEndpoints, ServicePort,
    },
    resources::{self, version_text},
};

use super::*;

const A: &str = "a.demo.svc.cluster.local";
const B: &str = "b.demo.svc.cluster.local";

fn entry(name: &str, body: Body) -> (Arc<str>, Encoded) {
    (
        Arc::from(name),
        Encoded::of(&proto::Resource {
            name: name.to_owned(),
            body: Some(body),
        }),
    )
}

fn service(host: &str, timeout_ms: u64) -> (Arc<str>, Encoded) {
    entry(
        &format!("service/{host}"),
        Body::Service(Service {
            hostname: host.to_owned(),
            ports: vec![ServicePort {
                port: 80,
                http_routes: (timeout_ms > 0)
                    .then(|| proto::HttpRoute {
                        timeout_ms,
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

fn endpoints(host: &str, addresses: &[&str]) -> (Arc<str>, Encoded) {
    entry(
        &format!("endpoints/{host}"),
        Body::Endpoints(ServiceEndpoints {
            ports: vec![PortEndpoints {
                port: 80,
                endpoints: addresses
                    .iter()
                    .map(|a| Endpoint {
                        address: (*a).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
            }],
        }),
    )
}

fn shared(generation: u64, entries: Vec<(Arc<str>, Encoded)>, changed: &[&str]) -> Arc<Shared> {
    Arc::new(Shared {
        generation,
        entries: entries.into_iter().collect(),
        changed: changed.iter().map(|c| Arc::from(*c)).collect(),
    })
}

fn view(services: Vec<(Arc<str>, Encoded)>, endpoints: &[&str]) -> Arc<View> {
    Arc::new(View {
        services: services.into_iter().collect(),
        endpoints: endpoints
            .iter()
            .map(|h| Arc::from(format!("endpoints/{h}").as_str()))
            .collect(),
    })
}

fn own(domain: &str) -> Entries {
    [entry(
        "mesh",
        Body::Mesh(MeshSettings {
            trust_domain: domain.to_owned(),
            ..Default::default()
        }),
    )]
    .into_iter()
    .collect()
}

fn push(change: Change, full: bool) -> Push {
    Push {
        version: version_text(change.sum),
        full,
        resources: change.resources,
        removed: change.removed,
        more: false,
    }
}

fn names(change: &Change) -> BTreeSet<String> {
    change
        .resources
        .iter()
        .map(|b| proto::Resource::decode(b.clone()).expect("resource").name)
        .chain(change.removed.iter().map(|r| format!("-{r}")))
        .collect()
}

/// What the delta from `before` to `after` sends (`-name` for a removal), once checked that the
/// snapshot a sidecar makes of `before` in full then that delta is the snapshot it makes of
/// `after` in full, version included.
fn converges(before: &Contents, after: &Contents) -> Vec<String> {
    let mut sidecar = resources::Held::default();
    let first = full(before);
    let sum = first.sum;
    let staged = sidecar.stage(push(first, true)).expect("full before");
    sidecar.commit(staged);
    let held = Held {
        contents: before.clone(),
        sum,
    };
    let change = delta(&held, after);
    let reported = names(&change);
    let by_delta = sidecar
        .stage(push(change, false))
        .expect("the delta applies");
    let by_full = resources::Held::default()
        .stage(push(full(after), true))
        .expect("full after");
    assert_eq!(by_delta.snapshot, by_full.snapshot);
    reported.into_iter().collect()
}

#[test]
fn pushes_carry_what_changed_and_converge() {
    let s1 = shared(
        1,
        vec![
            endpoints(A, &["198.18.0.3:80"]),
            endpoints(B, &["198.18.0.4:80"]),
        ],
        &[],
    );
    let v1 = view(vec![service(A, 0), service(B, 0)], &[A, B]);
    let base = Contents {
        shared: s1.clone(),
        view: v1.clone(),
        own: own("cluster.local"),
    };

    // Nothing changed: nothing travels.
    assert!((converges(&base, &base.clone())).is_empty());

    // One endpoint more for A, the next generation: only A's endpoints.
    let s2 = shared(
        2,
        vec![
            endpoints(A, &["198.18.0.3:80", "198.18.0.5:80"]),
            endpoints(B, &["198.18.0.4:80"]),
        ],
        &["endpoints/a.demo.svc.cluster.local"],
    );
    let next = Contents {
        shared: s2.clone(),
        ..base.clone()
    };
    assert_eq!(
        converges(&base, &next),
        ["endpoints/a.demo.svc.cluster.local"]
    );

    // Two generations on (the sidecar missed one): found by comparing, same result.
    let s3 = shared(
        3,
        vec![
            endpoints(A, &["198.18.0.3:80", "198.18.0.5:80"]),
            endpoints(B, &["198.18.0.6:80"]),
        ],
        &["endpoints/b.demo.svc.cluster.local"],
    );
    let later = Contents {
        shared: s3,
        ..base.clone()
    };
    assert_eq!(
        converges(&base, &later),
        [
            "endpoints/a.demo.svc.cluster.local",
            "endpoints/b.demo.svc.cluster.local"
        ]
    );

    // A route on B: only B's Service.
    let routed = Contents {
        view: view(vec![service(A, 0), service(B, 5000)], &[A, B]),
        ..base.clone()
    };
    assert_eq!(
        converges(&base, &routed),
        ["service/b.demo.svc.cluster.local"]
    );

    // B out of view: its Service and its endpoints go.
    let scoped = Contents {
        view: view(vec![service(A, 0)], &[A]),
        ..base.clone()
    };
    assert_eq!(
        converges(&base, &scoped),
        [
            "-endpoints/b.demo.svc.cluster.local",
            "-service/b.demo.svc.cluster.local"
        ]
    );
    // And back, with endpoints that changed meanwhile.
    let back = Contents {
        shared: s2,
        view: v1,
        ..base.clone()
    };
    let scoped_held = Contents {
        shared: s1,
        ..scoped
    };
    assert_eq!(
        converges(&scoped_held, &back),
        [
            "endpoints/a.demo.svc.cluster.local",
            "endpoints/b.demo.svc.cluster.local",
            "service/b.demo.svc.cluster.local"
        ]
    );

    // The sidecar's own settings.
    let own_changed = Contents {
        own: own("example.org"),
        ..base.clone()
    };
    assert_eq!(converges(&base, &own_changed), ["mesh"]);
}
