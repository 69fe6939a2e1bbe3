use std::sync::Arc;

use http::{Method, Response, StatusCode, Uri};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower_test::mock::SendResponse;

use super::*;
use crate::api_mock::{api, body_of, failure, reply, ApiHandle};

const SERVICES: &str = "/api/v1/services";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const POLICIES_V1BETA1: &str = "/apis/security.istio.io/v1beta1/authorizationpolicies";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

type Respond = SendResponse<Response<Body>>;

/// The API server of a cluster: requests to the `tested` paths are answered by the test, in
/// the order they came; every other kind is listed empty and its watch held open, and `absent`
/// paths are not served (a CRD not installed).
struct Cluster {
    handle: ApiHandle,
    held: Vec<Respond>,
    absent: Vec<&'static str>,
    tested: Vec<&'static str>,
    /// Requests to tested paths that came while the test waited for another.
    waiting: Vec<(Method, Uri, Value, Respond)>,
}

impl Cluster {
    fn new(handle: ApiHandle, absent: Vec<&'static str>, tested: Vec<&'static str>) -> Self {
        Self {
            handle,
            held: Vec::new(),
            absent,
            tested,
            waiting: Vec::new(),
        }
    }

    /// The next request `method` to `path` (with its query and body), answering others meanwhile.
    async fn next(&mut self, method: Method, path: &str) -> (Uri, Value, Respond) {
        if let Some(at) = self
            .waiting
            .iter()
            .position(|(m, uri, ..)| (m, uri.path()) == (&method, path))
        {
            let (_, uri, body, respond) = self.waiting.remove(at);
            return (uri, body, respond);
        }
        loop {
            let (request, respond) = self.handle.next_request().await.expect("a request");
            let (method_seen, uri) = (request.method().clone(), request.uri().clone());
            if self.tested.contains(&uri.path()) && !self.absent.contains(&uri.path()) {
                let body = body_of(request).await;
                if (&method_seen, uri.path()) == (&method, path) {
                    return (uri, body, respond);
                }
                self.waiting.push((method_seen, uri, body, respond));
                continue;
            }
            assert_eq!(method_seen, Method::GET, "unexpected {method_seen} {uri}");
            if self.absent.contains(&uri.path()) {
                respond.send_response(reply(StatusCode::NOT_FOUND, &failure(404, "NotFound")));
            } else if is_watch(&uri) {
                self.held.push(respond);
            } else {
                respond.send_response(reply(StatusCode::OK, &list(&[], "1")));
            }
        }
    }
}

fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true"))
}

fn query_has(uri: &Uri, pair: &str) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|p| p == pair))
}

fn list(items: &[Value], version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version},
           "items": items})
}

/// Service `name` as a list item (without `apiVersion` and `kind`, as the API lists it).
fn service(name: &str, port: Value, version: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                        "resourceVersion": version,
                        "managedFields": [{"manager": "kubectl"}],
                        "annotations": {LAST_APPLIED: "{\"big\": true}"}},
           "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": port}]}})
}

/// AuthorizationPolicy `default/bad` at resourceVersion 7, whose action does not exist.
fn bad_policy() -> Value {
    json!({"metadata": {"name": "bad", "namespace": "default", "uid": "uid-bad",
                        "resourceVersion": "7"},
           "spec": {"action": "MAYBE"}})
}

fn watch_body(events: &[(&str, Value)]) -> Response<Body> {
    let mut text = String::new();
    for (kind, object) in events {
        let mut object = object.clone();
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("Service");
        text.push_str(&json!({"type": kind, "object": object}).to_string());
        text.push('\n');
    }
    Response::new(Body::from(text.into_bytes()))
}

fn ports(catalog: &Catalog) -> Vec<(String, u32)> {
    catalog
        .snapshot_for(&Default::default())
        .services
        .into_iter()
        .flat_map(|s| {
            let host = s.hostname.clone();
            s.ports.into_iter().map(move |p| (host.clone(), p.port))
        })
        .collect()
}

async fn changed(catalogs: &mut watch::Receiver<Arc<Catalog>>) -> Arc<Catalog> {
    catalogs
        .changed()
        .await
        .expect("the source keeps publishing");
    catalogs.borrow_and_update().clone()
}

#[tokio::test(start_paused = true)]
async fn lists_every_kind_then_follows_edits_restarts_and_a_gone_relist() {
    let (client, handle) = api("default");
    let mut cluster = Cluster::new(handle, Vec::new(), vec![SERVICES, EVENTS]);
    let source = Box::new(KubernetesSource::new(client, "istio-system", None));
    let (catalogs, mut catalogs_seen) = tokio::join!(source.watch(), async {
        // Nothing is published before every kind is listed: the Services' list is answered
        // last, after every other kind's.
        let (uri, _, respond) = cluster.next(Method::GET, SERVICES).await;
        assert!(!is_watch(&uri), "{uri}");
        while cluster.held.len() < KINDS.len() - 1 {
            let (request, respond) = cluster.handle.next_request().await.expect("a request");
            let uri = request.uri().clone();
            if is_watch(&uri) {
                cluster.held.push(respond);
            } else {
                respond.send_response(reply(StatusCode::OK, &list(&[], "1")));
            }
        }
        respond.send_response(reply(
            StatusCode::OK,
            &list(&[service("a", json!(80), "5")], "10"),
        ));
        cluster
    });
    let mut catalogs = catalogs.expect("first catalog");
    let first = catalogs.borrow_and_update().clone();
    assert_eq!(
        ports(&first),
        [("a.default.svc.cluster.local".to_owned(), 80)]
    );
    assert!(first.rejected.is_empty(), "{:?}", first.rejected);

    // The watch starts where the list ended; its stream ends after an edit and a bad object.
    let (uri, _, respond) = catalogs_seen.next(Method::GET, SERVICES).await;
    assert!(
        is_watch(&uri) && query_has(&uri, "resourceVersion=10"),
        "{uri}"
    );
    respond.send_response(watch_body(&[
        ("MODIFIED", service("a", json!(81), "11")),
        ("ADDED", service("b", json!("eighty"), "12")),
    ]));
    let edited = changed(&mut catalogs).await;
    assert_eq!(
        ports(&edited),
        [("a.default.svc.cluster.local".to_owned(), 81)]
    );
    let [rejection] = edited.rejected.as_slice() else {
        panic!("{:?}", edited.rejected)
    };
    assert_eq!(
        rejection.object,
        "Service default/b in the Kubernetes API (resourceVersion 12)"
    );
    assert!(
        rejection.reason.contains("spec.ports"),
        "{}",
        rejection.reason
    );

    // The rejection is written on the object, once.
    let (_, event, respond) = catalogs_seen.next(Method::POST, EVENTS).await;
    assert_eq!(
        (
            &event["regarding"]["kind"],
            &event["regarding"]["name"],
            &event["regarding"]["uid"],
            &event["type"],
            &event["reason"],
        ),
        (
            &json!("Service"),
            &json!("b"),
            &json!("uid-b"),
            &json!("Warning"),
            &json!("Rejected")
        )
    );
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|n| n.contains("spec.ports")),
        "{event}"
    );
    respond.send_response(reply(StatusCode::CREATED, &event));

    // The watch is restarted from the last version seen; the API server has compacted it
    // away (410 Gone), so the kind is listed again: b was deleted meanwhile.
    let (uri, _, respond) = catalogs_seen.next(Method::GET, SERVICES).await;
    assert!(
        is_watch(&uri) && query_has(&uri, "resourceVersion=12"),
        "{uri}"
    );
    let gone = json!({"type": "ERROR", "object": failure(410, "Expired")});
    respond.send_response(Response::new(Body::from(format!("{gone}\n").into_bytes())));
    let (uri, _, respond) = catalogs_seen.next(Method::GET, SERVICES).await;
    assert!(!is_watch(&uri), "a relist: {uri}");
    respond.send_response(reply(
        StatusCode::OK,
        &list(&[service("a", json!(81), "11")], "20"),
    ));
    let relisted = changed(&mut catalogs).await;
    assert_eq!(
        ports(&relisted),
        [("a.default.svc.cluster.local".to_owned(), 81)]
    );
    assert!(relisted.rejected.is_empty(), "{:?}", relisted.rejected);

    // Deleted: gone from the catalog.
    let (uri, _, respond) = catalogs_seen.next(Method::GET, SERVICES).await;
    assert!(
        is_watch(&uri) && query_has(&uri, "resourceVersion=20"),
        "{uri}"
    );
    respond.send_response(watch_body(&[("DELETED", service("a", json!(81), "21"))]));
    let deleted = changed(&mut catalogs).await;
    assert!(ports(&deleted).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_kind_not_installed_is_skipped_then_read_when_it_appears() {
    let (client, handle) = api("default");
    let mut cluster = Cluster::new(
        handle,
        vec![POLICIES, POLICIES_V1BETA1],
        vec![POLICIES, EVENTS],
    );
    let source = Box::new(KubernetesSource::new(client, "istio-system", None));
    // Published without it.
    let mut watching = tokio::spawn(source.watch());
    let mut catalogs = tokio::select! {
        done = &mut watching => done.expect("source task").expect("first catalog"),
        _ = cluster.next(Method::GET, "/never") => unreachable!("nothing is sent there"),
    };
    assert!(catalogs.borrow_and_update().rejected.is_empty());

    // Installed later: looked for again, listed, its objects read.
    cluster.absent.clear();
    let (uri, _, respond) = cluster.next(Method::GET, POLICIES).await;
    assert!(!is_watch(&uri), "{uri}");
    respond.send_response(reply(StatusCode::OK, &list(&[bad_policy()], "7")));
    let read = changed(&mut catalogs).await;
    let [rejection] = read.rejected.as_slice() else {
        panic!("{:?}", read.rejected)
    };
    assert_eq!(
        rejection.object,
        "AuthorizationPolicy default/bad in the Kubernetes API (resourceVersion 7)"
    );
    let (_, event, _) = cluster.next(Method::POST, EVENTS).await;
    assert_eq!(
        (
            &event["regarding"]["kind"],
            &event["regarding"]["apiVersion"]
        ),
        (
            &json!("AuthorizationPolicy"),
            &json!("security.istio.io/v1")
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_kind_served_only_in_an_older_version_is_read_there() {
    // Istio before 1.22 serves its kinds as v1beta1 only: its policies must still be read.
    let (client, handle) = api("default");
    let mut cluster = Cluster::new(handle, vec![POLICIES], vec![POLICIES_V1BETA1, EVENTS]);
    let source = Box::new(KubernetesSource::new(client, "istio-system", None));
    let mut watching = tokio::spawn(source.watch());
    let (uri, _, respond) = cluster.next(Method::GET, POLICIES_V1BETA1).await;
    assert!(!is_watch(&uri), "{uri}");
    respond.send_response(reply(StatusCode::OK, &list(&[bad_policy()], "7")));
    let catalogs = tokio::select! {
        done = &mut watching => done.expect("source task").expect("first catalog"),
        _ = cluster.next(Method::GET, "/never") => unreachable!("nothing is sent there"),
    };
    let first = catalogs.borrow().clone();
    let [rejection] = first.rejected.as_slice() else {
        panic!("{:?}", first.rejected)
    };
    assert_eq!(
        rejection.object,
        "AuthorizationPolicy default/bad in the Kubernetes API (resourceVersion 7)"
    );
}

#[tokio::test(start_paused = true)]
async fn with_status_on_an_objects_verdict_is_written_in_its_status_in_the_version_read() {
    const STATUS: &str =
        "/apis/security.istio.io/v1beta1/namespaces/default/authorizationpolicies/bad/status";
    let (client, handle) = api("default");
    let mut cluster = Cluster::new(
        handle,
        vec![POLICIES],
        vec![POLICIES_V1BETA1, EVENTS, STATUS],
    );
    let source = KubernetesSource::new(client, "istio-system", None).writing_status();
    let _watching = tokio::spawn(Box::new(source).watch());
    let (_, _, respond) = cluster.next(Method::GET, POLICIES_V1BETA1).await;
    respond.send_response(reply(StatusCode::OK, &list(&[bad_policy()], "7")));
    // An update of the status subresource, at the version read (a write that raced another
    // fails), the status alone (the API server keeps the rest as stored).
    let (_, written, respond) = cluster.next(Method::PUT, STATUS).await;
    assert_eq!(
        (
            &written["apiVersion"],
            &written["kind"],
            &written["metadata"]["name"],
            &written["metadata"]["resourceVersion"],
        ),
        (
            &json!("security.istio.io/v1beta1"),
            &json!("AuthorizationPolicy"),
            &json!("bad"),
            &json!("7"),
        )
    );
    let condition = &written["status"]["conditions"][0];
    assert_eq!(
        (
            &condition["type"],
            &condition["status"],
            &condition["reason"]
        ),
        (&json!("Accepted"), &json!("False"), &json!("Invalid"))
    );
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.action")),
        "{condition}"
    );
    respond.send_response(reply(StatusCode::OK, &written));
}

#[test]
fn the_versions_watched_are_the_versions_read() {
    let versions = |api_versions: &[&str]| -> Vec<String> {
        api_versions
            .iter()
            .map(|v| v.rsplit('/').next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        versions(&crate::config::security::API_VERSIONS),
        kinds::SECURITY
    );
    assert_eq!(
        versions(&crate::config::routing::istio::API_VERSIONS),
        kinds::NETWORKING
    );
}

#[test]
fn watched_kinds_are_served_under_these_plurals() {
    let plurals: Vec<String> = KINDS.iter().map(|k| k.resource().plural).collect();
    assert_eq!(
        plurals,
        [
            "configmaps",
            "namespaces",
            "services",
            "pods",
            "endpointslices",
            "peerauthentications",
            "authorizationpolicies",
            "requestauthentications",
            "serviceentries",
            "virtualservices",
            "destinationrules",
            "sidecars",
            "httproutes",
            "grpcroutes",
            "telemetries",
        ]
    );
}

#[test]
fn a_pod_is_pruned_to_what_the_catalog_reads() {
    let mut pod: DynamicObject = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"},
                     "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"serviceAccountName": "web", "hostNetwork": false,
                 "volumes": [{"name": "token"}],
                 "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A"}],
                                 "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                   "containerStatuses": [{"name": "app"}]},
    }))
    .expect("a pod");
    prune(&mut pod, true);
    assert_eq!(
        pod.data,
        json!({
            "spec": {"serviceAccountName": "web", "hostNetwork": false,
                     "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]},
        })
    );
    assert_eq!(pod.labels().get("app").map(String::as_str), Some("web"));
    assert!(pod.annotations().contains_key("sidecar.istio.io/status"));
}

#[test]
fn pruning_drops_what_is_never_read() {
    let mut object: DynamicObject =
        serde_json::from_value(service("a", json!(80), "1")).expect("object");
    prune(&mut object, false);
    assert_eq!(object.metadata.managed_fields, None);
    assert!(object.annotations().is_empty());
    assert_eq!(object.data["spec"]["ports"][0]["port"], 80);
}
