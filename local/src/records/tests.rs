use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;

use super::*;
use crate::plan::PodPlan;

fn plan(name: &str, labels: &[(&str, &str)], sidecar: bool, container_ports: &str) -> PodPlan {
    let spec: PodSpec = serde_saphyr::from_str(&format!(
        "containers: [{{name: app, command: [app], ports: {container_ports}}}]"
    ))
    .expect("test PodSpec");
    PodPlan {
        namespace: "demo".to_owned(),
        name: name.to_owned(),
        deployment: "httpbin".to_owned(),
        template_hash: "b7f9c8d6b5".to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        annotations: BTreeMap::new(),
        spec,
        service_account: "httpbin".to_owned(),
        sidecar,
        sidecar_config: Default::default(),
        containers: Vec::new(),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn service(yaml: &str) -> Service {
    serde_saphyr::from_str(yaml).expect("test Service")
}

#[test]
fn pod_record_carries_address_and_injection_status() {
    let injected = pod(
        &plan("httpbin-0", &[("app", "httpbin")], true, "[]"),
        ip("198.18.0.10"),
        true,
    );
    let value = serde_json::to_value(&injected).expect("serializable");
    assert_eq!(value["kind"], "Pod");
    assert_eq!(value["status"]["podIP"], "198.18.0.10");
    assert_eq!(value["status"]["phase"], "Running");
    assert_eq!(
        value["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    let status = value["metadata"]["annotations"][SIDECAR_STATUS_ANNOTATION]
        .as_str()
        .expect("status annotation");
    let status: serde_json::Value = serde_json::from_str(status).expect("status is JSON");
    assert_eq!(status["containers"][0], "istio-proxy");

    // Owned by its Deployment's ReplicaSet, so the control plane finds the Deployment.
    assert_eq!(
        value["metadata"]["labels"]["pod-template-hash"],
        "b7f9c8d6b5"
    );
    assert_eq!(value["metadata"]["generateName"], "httpbin-b7f9c8d6b5-");
    let owner = &value["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["name"].as_str(),
            owner["controller"].as_bool()
        ),
        (Some("ReplicaSet"), Some("httpbin-b7f9c8d6b5"), Some(true))
    );
    let workload = remora_injector::inject::Workload::of_pod(&injected, "demo");
    assert_eq!(
        (workload.name.as_str(), workload.kind.as_str()),
        ("httpbin", "Deployment")
    );

    let plain = pod(&plan("web-0", &[], false, "[]"), ip("198.18.0.11"), true);
    let annotations = plain.metadata.annotations.expect("annotations");
    assert!(!annotations.contains_key(SIDECAR_STATUS_ANNOTATION));

    let starting = pod(&plan("web-1", &[], false, "[]"), ip("198.18.0.12"), false);
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
            &plan("httpbin-0", &labels, true, "[]"),
            ip("198.18.0.10"),
            true,
        ),
        pod(
            &plan("httpbin-1", &labels, true, "[]"),
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
            &plan(
                "httpbin-1",
                &[("app", "httpbin")],
                true,
                "[{containerPort: 9901, name: admin}]",
            ),
            ip("198.18.0.11"),
            true,
        ),
        pod(
            &plan(
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
            &plan("httpbin-2", &[("app", "httpbin")], true, "[]"),
            ip("198.18.0.12"),
            true,
        ),
        pod(
            &plan("other-0", &[("app", "other")], true, "[]"),
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
