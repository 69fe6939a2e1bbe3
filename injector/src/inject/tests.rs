//! The engine on whole pods: where things go, what is recorded, and that injecting twice is
//! injecting once.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("test pod: {e}\n{yaml}"))
}

fn workload(name: &str) -> Workload {
    Workload {
        name: name.to_owned(),
        namespace: "shop".to_owned(),
        kind: "Deployment".to_owned(),
        api_version: "apps/v1".to_owned(),
    }
}

fn names(containers: Option<&Vec<Container>>) -> Vec<&str> {
    containers
        .into_iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

fn injector(native: bool) -> Injector {
    let mut values = Values::default();
    values.sidecar_injector_webhook.native_sidecars = native;
    Injector::new(values, None).expect("defaults")
}

const APP: &str = r#"
metadata:
  name: web-0
  labels: {app: web, version: v2}
  annotations: {prometheus.io/port: "9100", prometheus.io/path: /metrics}
spec:
  initContainers:
    - {name: migrate, image: migrate:1}
  containers:
    - name: web
      image: web:1
      ports: [{name: http, containerPort: 8080}]
      readinessProbe: {httpGet: {path: /ready, port: http}}
    - {name: cache, image: cache:1}
  volumes:
    - {name: data, emptyDir: {}}
    - {name: istio-data, emptyDir: {medium: Memory}}
"#;

#[test]
fn a_classic_sidecar_goes_after_the_apps_and_its_init_after_theirs() {
    let injected = injector(false)
        .inject(&pod(APP), &workload("web"))
        .expect("injected");
    let spec = injected.spec.as_ref().expect("spec");
    assert_eq!(
        names(Some(&spec.containers)),
        ["web", "cache", "istio-proxy"]
    );
    assert_eq!(
        names(spec.init_containers.as_ref()),
        ["migrate", "istio-init"]
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "istio-envoy",
            "istio-data",
            "istio-podinfo",
            "istio-token",
            "istiod-ca-cert",
            "data"
        ]
    );
    let annotations = injected.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(
        annotations[SIDECAR_STATUS_ANNOTATION],
        r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}"#
    );
    assert_eq!(annotations["istio.io/rev"], "default");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "web"
    );
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-logs-container"],
        "web"
    );
    assert_eq!(annotations["prometheus.io/port"], "15020");
    assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let labels = injected.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "web");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v2");

    let sidecar = &spec.containers[2];
    let env: BTreeMap<&str, Option<&str>> = sidecar
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(
        env["ISTIO_PROMETHEUS_ANNOTATIONS"],
        Some(r#"{"scrape":"","path":"/metrics","port":"9100"}"#)
    );
    assert_eq!(
        env["ISTIO_KUBE_APP_PROBERS"],
        Some(r#"{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}"#)
    );
    assert_eq!(env["ISTIO_META_APP_CONTAINERS"], Some("web,cache"));
    assert_eq!(
        env["ISTIO_META_OWNER"],
        Some("kubernetes://apis/apps/v1/namespaces/shop/deployments/web")
    );
    assert_eq!(env["CA_ADDR"], Some("istiod.istio-system.svc:15012"));
    assert_eq!(env["PROXY_CONFIG"], Some("{}"));
    let security = sidecar.security_context.as_ref().expect("set");
    assert_eq!(
        (
            security.run_as_user,
            security.run_as_group,
            security.run_as_non_root,
            security.read_only_root_filesystem
        ),
        (Some(1337), Some(1337), Some(true), Some(true))
    );
}

#[test]
fn a_native_sidecar_is_an_init_container_that_keeps_running_before_the_apps_inits() {
    let injected = injector(true)
        .inject(&pod(APP), &workload("web"))
        .expect("injected");
    let spec = injected.spec.as_ref().expect("spec");
    assert_eq!(names(Some(&spec.containers)), ["web", "cache"]);
    assert_eq!(
        names(spec.init_containers.as_ref()),
        ["istio-init", "istio-proxy", "migrate"]
    );
    let sidecar = &spec.init_containers.as_ref().expect("inits")[1];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let status = Status::of(injected.metadata.annotations.as_ref().expect("set")).expect("status");
    assert_eq!(
        (status.init_containers, status.containers),
        (
            Some(vec!["istio-init".to_owned(), "istio-proxy".to_owned()]),
            None
        )
    );
    // The annotation decides per pod.
    let mut classic = pod(APP);
    classic
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(NATIVE_SIDECAR_ANNOTATION.to_owned(), "false".to_owned());
    let injected = injector(true)
        .inject(&classic, &workload("web"))
        .expect("injected");
    assert_eq!(
        names(Some(&injected.spec.as_ref().expect("spec").containers)),
        ["web", "cache", "istio-proxy"]
    );
}

#[test]
fn an_app_that_waits_for_its_sidecar_gets_it_first() {
    let mut waiting = pod(APP);
    waiting
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            "proxy.istio.io/config".to_owned(),
            "holdApplicationUntilProxyStarts: true".to_owned(),
        );
    let injected = injector(false)
        .inject(&waiting, &workload("web"))
        .expect("injected");
    let spec = injected.spec.as_ref().expect("spec");
    assert_eq!(
        names(Some(&spec.containers)),
        ["istio-proxy", "web", "cache"]
    );
    let env = spec.containers[0].env.iter().flatten();
    let config = env
        .filter(|e| e.name == "PROXY_CONFIG")
        .find_map(|e| e.value.clone());
    assert_eq!(
        config.as_deref(),
        Some(r#"{"holdApplicationUntilProxyStarts":true}"#)
    );
}

#[test]
fn resources_and_image_follow_the_pods_annotations() {
    let annotated = pod(r#"
metadata:
  name: p
  annotations:
    sidecar.istio.io/proxyCPU: 50m
    sidecar.istio.io/proxyMemoryLimit: 1Gi
    sidecar.istio.io/proxyImage: registry.example/remora/proxy:dev
spec:
  containers: [{name: app, image: app:1}]
"#);
    let injected = injector(false)
        .inject(&annotated, &workload("p"))
        .expect("injected");
    let spec = injected.spec.as_ref().expect("spec");
    for container in [
        &spec.containers[1],
        &spec.init_containers.as_ref().expect("inits")[0],
    ] {
        let resources = container.resources.as_ref().expect("set");
        let get = |m: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >| {
            m.as_ref().map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.0))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            get(&resources.requests),
            Some(vec!["cpu=50m".to_owned()]),
            "{}",
            container.name
        );
        assert_eq!(get(&resources.limits), Some(vec!["memory=1Gi".to_owned()]));
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example/remora/proxy:dev")
        );
    }
    let bad = pod(r#"
metadata: {name: p, annotations: {sidecar.istio.io/proxyMemory: lots}}
spec: {containers: [{name: app}]}
"#);
    let err = injector(false)
        .inject(&bad, &workload("p"))
        .expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("invalid value 'lots' for annotation 'sidecar.istio.io/proxyMemory'"),
        "{err}"
    );
}

#[test]
fn prometheus_settings_move_unless_the_pod_opts_out_and_reserved_ports_are_refused() {
    let scraped = |annotations: &str| {
        let p = pod(&format!(
            "metadata: {{name: p, annotations: {annotations}}}\nspec: {{containers: [{{name: app}}]}}\n"
        ));
        injector(false).inject(&p, &workload("p"))
    };
    let opted_out = scraped(r#"{prometheus.io/scrape: "false", prometheus.io/port: "9100"}"#)
        .expect("injected");
    let annotations = opted_out.metadata.annotations.expect("set");
    assert_eq!(annotations["prometheus.io/port"], "9100");
    let not_merged =
        scraped(r#"{prometheus.istio.io/merge-metrics: "false", prometheus.io/port: "9100"}"#)
            .expect("injected");
    assert_eq!(
        not_merged.metadata.annotations.expect("set")["prometheus.io/port"],
        "9100"
    );
    // Any spelling Prometheus reads the same way.
    let variant = scraped(r#"{prometheus-io/port: "9100"}"#).expect("injected");
    let annotations = variant.metadata.annotations.expect("set");
    assert!(!annotations.contains_key("prometheus-io/port"));
    assert_eq!(annotations["prometheus.io/port"], "15020");
    let err = scraped(r#"{prometheus.io/port: "15090"}"#).expect_err("reserved");
    assert!(
        err.to_string().contains("15090 is a port the sidecar uses"),
        "{err}"
    );
}

#[test]
fn injecting_an_injected_pod_changes_nothing() {
    let catalogue = [
        APP.to_owned(),
        r#"
metadata:
  name: probes
  annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "9000", sidecar.istio.io/proxyCPU: 200m}
spec:
  containers:
    - name: app
      ports: [{name: grpc, containerPort: 9090}]
      livenessProbe: {grpc: {port: 9090}}
      startupProbe: {tcpSocket: {port: grpc}, timeoutSeconds: 5}
"#
        .to_owned(),
        r#"
metadata: {name: bare}
spec: {containers: [{name: app}]}
"#
        .to_owned(),
    ];
    for native in [false, true] {
        let injector = injector(native);
        for text in &catalogue {
            let once = injector.inject(&pod(text), &workload("w")).expect("once");
            let twice = injector.inject(&once, &workload("w")).expect("twice");
            assert_eq!(
                serde_json::to_value(&twice).expect("json"),
                serde_json::to_value(&once).expect("json"),
                "native: {native}\n{text}"
            );
        }
    }
}

#[test]
fn workloads_are_found_as_istiod_finds_them() {
    let generated = |owner_kind: &str, owner: &str, labels: &str| {
        pod(&format!(
            "metadata:\n  name: x-abcde\n  generateName: x-\n  labels: {labels}\n  ownerReferences: [{{apiVersion: apps/v1, kind: {owner_kind}, name: {owner}, uid: u, controller: true}}]\nspec: {{containers: []}}\n"
        ))
    };
    let cases = [
        (
            generated(
                "ReplicaSet",
                "reviews-v1-7f9c8d6b5",
                "{pod-template-hash: 7f9c8d6b5}",
            ),
            ("reviews-v1", "Deployment", "apps/v1"),
        ),
        (
            generated("StatefulSet", "db", "{}"),
            ("db", "StatefulSet", "apps/v1"),
        ),
        (
            generated("Job", "backup-28391040", "{}"),
            ("backup", "CronJob", "batch/v1"),
        ),
        (
            pod("metadata: {name: solo}\nspec: {containers: []}\n"),
            ("solo", "Pod", "v1"),
        ),
    ];
    for (pod, (name, kind, api_version)) in cases {
        let found = Workload::of_pod(&pod, "shop");
        assert_eq!(
            (
                found.name.as_str(),
                found.kind.as_str(),
                found.api_version.as_str()
            ),
            (name, kind, api_version)
        );
    }
    assert_eq!(
        workload("web").owner(),
        "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"
    );
}

#[test]
fn canonical_labels_come_from_the_first_label_set_else_the_workload() {
    let cases = [
        (json!({}), ("reviews", "latest")),
        (
            json!({"app": "ratings", "version": "v3"}),
            ("ratings", "v3"),
        ),
        (
            json!({"app": "ratings", "app.kubernetes.io/name": "stars", "app.kubernetes.io/version": "1.2"}),
            ("stars", "1.2"),
        ),
        (
            json!({"service.istio.io/canonical-name": "-mine-", "app": "ratings"}),
            ("mine", "latest"),
        ),
        (json!({"app": ""}), ("reviews", "latest")),
    ];
    for (labels, (name, revision)) in cases {
        let mut labels: BTreeMap<String, String> =
            serde_json::from_value(labels.clone()).expect("labels");
        metadata::add_labels(&mut labels, &workload("reviews"));
        assert_eq!(
            (
                labels["service.istio.io/canonical-name"].as_str(),
                labels["service.istio.io/canonical-revision"].as_str()
            ),
            (name, revision)
        );
    }
}
