use prost::Message;

use super::*;
use crate::proto::config::{Endpoint, MeshSettings, PortEndpoints, Service, ServicePort, Workload};

fn encoded(name: &str, body: Body) -> Bytes {
    Bytes::from(
        Resource {
            name: name.to_owned(),
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

fn service(host: &str, port: u32) -> Bytes {
    encoded(
        &format!("service/{host}"),
        Body::Service(Service {
            hostname: host.to_owned(),
            addresses: vec!["198.19.0.10".to_owned()],
            ports: vec![ServicePort {
                port,
                name: "http".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

fn endpoints(host: &str, port: u32, addresses: &[&str]) -> Bytes {
    encoded(
        &endpoints_name(host),
        Body::Endpoints(ServiceEndpoints {
            ports: vec![PortEndpoints {
                port,
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

fn mesh(domain: &str) -> Bytes {
    encoded(
        "mesh",
        Body::Mesh(MeshSettings {
            trust_domain: domain.to_owned(),
            ..Default::default()
        }),
    )
}

fn version(held: &[&Bytes]) -> String {
    version_of(held.iter().map(|b| b.as_ref()))
}

fn push(full: bool, resources: Vec<Bytes>, removed: &[&str], version: String) -> Push {
    Push {
        version,
        full,
        resources,
        removed: removed.iter().map(|r| (*r).to_owned()).collect(),
        more: false,
    }
}

const HOST: &str = "httpbin.demo.svc.cluster.local";

#[test]
fn a_full_push_then_changes_make_the_snapshot_and_its_version() {
    let mut held = Held::default();
    let (svc, eps, m) = (
        service(HOST, 8000),
        endpoints(HOST, 8000, &["198.18.0.3:8080"]),
        mesh("cluster.local"),
    );
    let first = push(
        true,
        vec![svc.clone(), eps.clone(), m.clone()],
        &[],
        version(&[&svc, &eps, &m]),
    );
    let staged = held.stage(first).expect("whole");
    let port = &staged.snapshot.services[0].ports[0];
    assert_eq!(
        port.endpoints[0].address, "198.18.0.3:8080",
        "filled from endpoints/"
    );
    assert!(held.is_empty(), "staging changes nothing");
    held.commit(staged);
    assert_eq!(held.len(), 3);

    // One endpoint more: only the endpoints resource travels.
    let more = endpoints(HOST, 8000, &["198.18.0.3:8080", "198.18.0.4:8080"]);
    let second = push(false, vec![more.clone()], &[], version(&[&svc, &more, &m]));
    let staged = held.stage(second).expect("a change");
    assert_eq!(staged.snapshot.services[0].ports[0].endpoints.len(), 2);
    assert_eq!(staged.snapshot.version, version(&[&svc, &more, &m]));
    held.commit(staged);

    // The Service goes, with its endpoints.
    let third = push(
        false,
        vec![],
        &[
            "service/httpbin.demo.svc.cluster.local",
            "endpoints/httpbin.demo.svc.cluster.local",
        ],
        version(&[&m]),
    );
    let staged = held.stage(third).expect("a removal");
    assert!(staged.snapshot.services.is_empty());
    held.commit(staged);
    assert_eq!(held.len(), 1);

    // A new stream's full push replaces everything held.
    let w = encoded(
        "workload/demo/web",
        Body::Workload(Workload {
            namespace: "demo".into(),
            name: "web".into(),
            ..Default::default()
        }),
    );
    let staged = held
        .stage(push(true, vec![w.clone()], &[], version(&[&w])))
        .expect("whole");
    assert!(staged.snapshot.mesh.is_none(), "the mesh was not in it");
    held.commit(staged);
    assert_eq!(held.len(), 1);
}

#[test]
fn bad_pushes_are_refused_naming_what_is_wrong() {
    let mut held = Held::default();
    let (svc, m) = (service(HOST, 8000), mesh("cluster.local"));
    let staged = held
        .stage(push(
            true,
            vec![svc.clone(), m.clone()],
            &[],
            version(&[&svc, &m]),
        ))
        .expect("whole");
    held.commit(staged);
    let lost = endpoints("gone.demo.svc.cluster.local", 80, &[]);
    let misnamed = encoded("service/other", Body::Mesh(MeshSettings::default()));
    let cases: Vec<(Push, &str)> = vec![
        (
            push(false, vec![], &["workload/demo/none"], version(&[&svc, &m])),
            "workload/demo/none: removed, but not held",
        ),
        (
            push(false, vec![m.clone(), m.clone()], &[], version(&[&svc, &m])),
            "mesh: sent twice in one push",
        ),
        (
            push(false, vec![], &["mesh"], "0000000000000001".into()),
            "version: the resources held after this push make",
        ),
        (
            push(false, vec![Bytes::from_static(b"\xff")], &[], String::new()),
            "resources[0]: ",
        ),
        (
            push(false, vec![misnamed.clone()], &[], version(&[&svc, &m, &misnamed])),
            "service/other: its content is named \"mesh\"",
        ),
        (
            push(false, vec![lost.clone()], &[], version(&[&svc, &m, &lost])),
            "endpoints/gone.demo.svc.cluster.local: no service/gone.demo.svc.cluster.local holds them",
        ),
    ];
    for (bad, expected) in cases {
        let error = held.stage(bad).expect_err(expected).to_string();
        assert!(error.starts_with(expected), "{error}");
    }
    // Nothing refused changed what is held.
    let staged = held
        .stage(push(false, vec![], &[], version(&[&svc, &m])))
        .expect("still what it was");
    assert_eq!(staged.snapshot.services.len(), 1);
}

#[test]
fn versions_are_stable_sums() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    let (a, b) = (mesh("a"), mesh("b"));
    assert_eq!(
        version(&[&a, &b]),
        version(&[&b, &a]),
        "order does not count"
    );
    assert_ne!(version(&[&a]), version(&[&b]));
    assert_eq!(version(&[]), "0000000000000000");
}

#[test]
fn a_push_in_parts_is_the_push_whole() {
    let resources: Vec<Bytes> = (0..10).map(|i| mesh(&format!("domain-{i}"))).collect();
    let size = resources[0].len();
    let parts = split(resources.clone(), size * 3);
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
    assert_eq!(split(vec![], 100), [Vec::<Bytes>::new()]);
    assert_eq!(
        split(vec![resources[0].clone()], 1).len(),
        1,
        "never split a resource"
    );

    let mut joined = Parts::default();
    let count = parts.len();
    let mut whole = None;
    for (i, part) in parts.into_iter().enumerate() {
        let last = i + 1 == count;
        let got = joined.add(Push {
            version: "v".into(),
            full: true,
            resources: part,
            removed: if last { vec!["gone".into()] } else { vec![] },
            more: !last,
        });
        assert_eq!(got.is_some(), last);
        whole = got;
    }
    let whole = whole.expect("whole");
    assert_eq!(whole.resources, resources);
    assert_eq!(whole.removed, ["gone"]);
    assert!(whole.full && !whole.more);
}
