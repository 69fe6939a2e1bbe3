use k8s_openapi::api::core::v1::PodSpec;

use remora_injector::config::well_known::SIDECAR_STATUS_ANNOTATION;

use super::*;

/// Pod `name` of Deployment `httpbin` in `demo`, as admission left it: injected (as far as
/// records care: the status annotation and tlsMode label) when `sidecar`.
fn admitted(name: &str, labels: &[(&str, &str)], sidecar: bool, container_ports: &str) -> Pod {
    let spec: PodSpec = serde_saphyr::from_str(&format!(
        "containers: [{{name: app, command: [app], ports: {container_ports}}}]"
    ))
    .expect("test PodSpec");
    let mut labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut annotations = BTreeMap::new();
    if sidecar {
        labels.insert("security.istio.io/tlsMode".to_owned(), "istio".to_owned());
        annotations.insert(
            SIDECAR_STATUS_ANNOTATION.to_owned(),
            r#"{"containers":["istio-proxy"]}"#.to_owned(),
        );
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("demo".to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn service(yaml: &str) -> Service {
    serde_saphyr::from_str(yaml).expect("test Service")
}

#[test]
fn pod_record_is_the_admitted_pod_with_its_address_and_readiness() {
    let injected = admitted("httpbin-0", &[("app", "httpbin")], true, "[]");
    let record = pod(&injected, ip("198.18.0.10"), true);
    assert_eq!(record.metadata, injected.metadata);
    assert_eq!(record.spec, injected.spec);
    let value = serde_json::to_value(&record).expect("serializable");
    assert_eq!(value["kind"], "Pod");
    assert_eq!(value["status"]["podIP"], "198.18.0.10");
    assert_eq!(value["status"]["phase"], "Running");

    let starting = pod(
        &admitted("web-1", &[], false, "[]"),
        ip("198.18.0.12"),
        false,
    );
    let value = serde_json::to_value(&starting).expect("serializable");
    assert_eq!(value["status"]["phase"], "Pending");
    assert_eq!(value["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(value["status"]["conditions"][0]["status"], "False");
}

#[test]
fn a_starting_pod_is_a_not_ready_endpoint() {
    let svc = service(
        "metadata: {name: httpbin, namespace: demo}\n\
         spec: {selector: {app: httpbin}, ports: [{port: 8000, targetPort: 8080}]}\n",
    );
    let labels = [("app", "httpbin")];
    let pods = [
        pod(
            &admitted("httpbin-0", &labels, true, "[]"),
            ip("198.18.0.10"),
            true,
        ),
        pod(
            &admitted("httpbin-1", &labels, true, "[]"),
            ip("198.18.0.11"),
            false,
        ),
    ];
    let slices = endpoint_slices(&svc, &pods);
    let readiness: Vec<(&str, Option<bool>, Option<bool>)> = slices[0]
        .endpoints
        .iter()
        .map(|e| {
            let conditions = e.conditions.as_ref().expect("conditions");
            (
                e.addresses[0].as_str(),
                conditions.ready,
                conditions.serving,
            )
        })
        .collect();
    assert_eq!(
        readiness,
        [
            ("198.18.0.10", Some(true), Some(true)),
            ("198.18.0.11", Some(false), Some(false)),
        ]
    );
}

#[test]
fn slices_select_pods_and_resolve_target_ports() {
    let svc = service(
        "metadata: {name: httpbin, namespace: demo}\n\
         spec:\n  selector: {app: httpbin}\n  ports:\n\
         \x20   - {name: http, port: 8000, targetPort: 8080}\n\
         \x20   - {name: admin, port: 9000, targetPort: admin}\n",
    );
    let pods = [
        pod(
            &admitted(
                "httpbin-1",
                &[("app", "httpbin")],
                true,
                "[{containerPort: 9901, name: admin}]",
            ),
            ip("198.18.0.11"),
            true,
        ),
        pod(
            &admitted(
                "httpbin-0",
                &[("app", "httpbin")],
                true,
                "[{containerPort: 9901, name: admin}]",
            ),
            ip("198.18.0.10"),
            true,
        ),
        // Named port missing: its slice lacks that port.
        pod(
            &admitted("httpbin-2", &[("app", "httpbin")], true, "[]"),
            ip("198.18.0.12"),
            true,
        ),
        pod(
            &admitted("other-0", &[("app", "other")], true, "[]"),
            ip("198.18.0.13"),
            true,
        ),
    ];
    let slices = endpoint_slices(&svc, &pods);
    // (slice name, endpoint addresses, (port name, port))
    type Summary = (String, Vec<String>, Vec<(String, i32)>);
    let summary: Vec<Summary> = slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                s.ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        (
                            p.name.clone().unwrap_or_default(),
                            p.port.unwrap_or_default(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let s = |v: &str| v.to_owned();
    assert_eq!(
        summary,
        [
            (
                s("httpbin-local"),
                vec![s("198.18.0.10"), s("198.18.0.11")],
                vec![(s("http"), 8080), (s("admin"), 9901)]
            ),
            (
                s("httpbin-local-1"),
                vec![s("198.18.0.12")],
                vec![(s("http"), 8080)]
            ),
        ]
    );
    let first = &slices[0];
    assert_eq!(
        first.metadata.labels.as_ref().expect("labels")[SERVICE_NAME_LABEL],
        "httpbin"
    );
    let target = first.endpoints[0].target_ref.as_ref().expect("targetRef");
    assert_eq!(target.name.as_deref(), Some("httpbin-0"));
    assert_eq!(first.address_type, "IPv4");
}

#[test]
fn selectorless_and_empty_services() {
    let manual = service("metadata: {name: ext, namespace: demo}\nspec: {ports: [{port: 80}]}\n");
    assert!(endpoint_slices(&manual, &[]).is_empty(), "user-managed");
    let empty = service(
        "metadata: {name: none, namespace: demo}\nspec: {selector: {app: none}, ports: [{port: 80}]}\n",
    );
    let slices = endpoint_slices(&empty, &[]);
    assert_eq!(slices.len(), 1);
    assert!(slices[0].endpoints.is_empty());
    assert_eq!(slices[0].metadata.name.as_deref(), Some("none-local"));
}
