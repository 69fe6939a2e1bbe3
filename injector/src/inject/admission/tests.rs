use base64::Engine as _;

use super::*;

/// A Pod CREATE review as the API server sends it: defaults filled in, managed fields, an
/// owner (the ReplicaSet of Deployment `reviews-v1`).
fn review_of(pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-7f9c8d6b5-",
            "namespace": "shop",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7f9c8d6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7f9c8d6b5",
                                 "uid": "u1", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1"}]
        },
        "spec": {
            "containers": [{
                "name": "reviews",
                "image": "reviews:1",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP"},
                                   "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "serviceAccountName": "bookinfo-reviews",
            "dnsPolicy": "ClusterFirst"
        }
    })
}

fn answer(review: &Value, path: &str) -> Result<Value, ReviewError> {
    let body = serde_json::to_vec(review).expect("json");
    super::review(&Injector::default(), &body, &PathParams::of(path))
}

#[test]
fn the_patch_applied_to_the_sent_pod_is_the_injected_pod() {
    let reply = answer(&review_of(pod()), "/inject").expect("answered");
    assert_eq!(reply["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(reply["kind"], "AdmissionReview");
    let response = &reply["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("base64"))
        .expect("decodes");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
    let mut patched = pod();
    json_patch::patch(&mut patched, &patch).expect("applies to the sent pod");

    // What kube-inject's engine makes of the same pod, for its workload.
    let sent: Pod = serde_json::from_value(pod()).expect("pod");
    let workload = Workload::of_pod(&sent, "shop");
    assert_eq!(
        (workload.name.as_str(), workload.kind.as_str()),
        ("reviews-v1", "Deployment")
    );
    let mut expected = serde_json::to_value(
        Injector::default()
            .inject(&sent, &workload)
            .expect("injects"),
    )
    .expect("json");
    // The patch never touches what the engine does not model: the managed fields stay.
    expected["metadata"]["managedFields"] = pod()["metadata"]["managedFields"].clone();
    assert_eq!(patched, expected);
    let names: Vec<&str> = patched["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["reviews", "istio-proxy"]);
}

#[test]
fn path_parameters_name_the_cluster_and_network() {
    assert_eq!(
        PathParams::of("/inject/cluster/east/net/network--slash--1"),
        PathParams {
            cluster: Some("east".to_owned()),
            network: Some("network/1".to_owned())
        }
    );
    assert_eq!(PathParams::of("/inject"), PathParams::default());
    assert_eq!(PathParams::of("/inject/"), PathParams::default());
    let reply = answer(&review_of(pod()), "/inject/cluster/east").expect("answered");
    let patch = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(reply["response"]["patch"].as_str().expect("patch"))
            .expect("base64"),
    )
    .expect("utf-8");
    assert!(
        patch.contains(r#""name":"ISTIO_META_CLUSTER_ID","value":"east""#),
        "{patch}"
    );
}

#[test]
fn pods_the_webhook_must_not_inject_are_allowed_as_they_are() {
    let mut opted_out = pod();
    opted_out["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    for pod in [opted_out, host] {
        let reply = answer(&review_of(pod), "/inject").expect("answered");
        assert_eq!(
            reply["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
    }
}

#[test]
fn a_pod_that_cannot_be_injected_is_refused_with_the_reason() {
    let mut bad = pod();
    bad["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "http"});
    let reply = answer(&review_of(bad), "/inject").expect("answered");
    let response = &reply["response"];
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains(
            "invalid value 'http' for annotation 'traffic.sidecar.istio.io/excludeOutboundPorts'"
        ),
        "{message}"
    );
    assert!(response.get("patch").is_none());
}

#[test]
fn what_is_not_a_pod_review_is_an_error() {
    let mut v1beta1 = review_of(pod());
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut service = review_of(pod());
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let mut deployment = review_of(pod());
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut no_request = review_of(pod());
    no_request["request"] = Value::Null;
    let mut not_a_pod = review_of(pod());
    not_a_pod["request"]["object"]["spec"]["containers"] = json!("none");
    let cases = [
        (
            v1beta1,
            "apiVersion \"admission.k8s.io/v1beta1\": only admission.k8s.io/v1",
        ),
        (service, "core/v1/Service: only Pods are injected"),
        (deployment, "apps/v1/Deployment: only Pods are injected"),
        (no_request, "not an AdmissionReview: no request"),
        (not_a_pod, "not an AdmissionReview: request.object:"),
        (
            json!({"apiVersion": "v1", "kind": "Pod"}),
            "not an AdmissionReview: kind \"Pod\"",
        ),
    ];
    for (review, expected) in cases {
        let err = answer(&review, "/inject").expect_err("refused").to_string();
        assert!(err.starts_with(expected), "{expected:?} vs {err}");
    }
    let err = super::review(&Injector::default(), b"{not json", &PathParams::default())
        .expect_err("refused");
    assert!(matches!(err, ReviewError::Malformed(_)), "{err}");
}
