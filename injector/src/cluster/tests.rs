use std::collections::BTreeMap;

use http::{Method, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

use super::*;
use crate::api_mock::{api, body_of, failure, reply};

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
const WEBHOOK: &str = "istio-sidecar-injector";
const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
           "items": items})
}

fn root_map(namespace: &str, root: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": root_cert::CONFIG_MAP, "namespace": namespace,
                        "resourceVersion": "1"},
           "data": {root_cert::KEY: root}})
}

fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "resourceVersion": "1"}})
}

fn webhook_configuration(bundle: &str) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1",
           "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": WEBHOOK, "resourceVersion": "4"},
           "webhooks": [{"name": "sidecar-injector.istio.io", "sideEffects": "None",
                         "admissionReviewVersions": ["v1"],
                         "clientConfig": {"caBundle": bundle}}]})
}

fn watching(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| q.contains("watch=true"))
}

#[tokio::test(start_paused = true)]
async fn publishes_the_root_everywhere_repairs_a_deleted_one_and_trusts_it_in_the_webhook() {
    let (client, mut handle) = api("istio-system");
    let keeper = tokio::spawn(keep_roots(client, WEBHOOK.to_owned(), ROOT.to_owned()));
    // Namespace `a` has its root, `b` none; the webhook trusts something else; then a's root
    // is deleted.
    let mut maps: BTreeMap<String, Value> = BTreeMap::from([("a".into(), root_map("a", ROOT))]);
    let mut map_watches = 0;
    let mut writes = Vec::new();
    let mut held = Vec::new();
    while writes.len() < 3 {
        let (request, respond) = handle.next_request().await.expect("a request");
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let sent = body_of(request).await;
        let path = uri.path();
        let answer = match (&method, path) {
            (&Method::GET, "/api/v1/namespaces") if watching(&uri) => None,
            (&Method::GET, "/api/v1/namespaces") => {
                Some((StatusCode::OK, list(vec![namespace("a"), namespace("b")])))
            }
            (&Method::GET, "/api/v1/configmaps") => {
                let query = uri.query().unwrap_or_default();
                assert!(
                    query.contains("fieldSelector=metadata.name%3Distio-ca-root-cert"),
                    "{uri}"
                );
                if !watching(&uri) {
                    Some((StatusCode::OK, list(vec![root_map("a", ROOT)])))
                } else if std::mem::replace(&mut map_watches, 1) == 0 {
                    // a's root deleted: the watch says so, then ends.
                    maps.remove("a");
                    let event = json!({"type": "DELETED", "object": root_map("a", ROOT)});
                    respond.send_response(Response::new(Body::from(
                        format!("{event}\n").into_bytes(),
                    )));
                    continue;
                } else {
                    None
                }
            }
            (&Method::GET, WEBHOOKS) if watching(&uri) => None,
            (&Method::GET, WEBHOOKS) => {
                assert!(uri.query().unwrap_or_default().contains(WEBHOOK), "{uri}");
                Some((
                    StatusCode::OK,
                    list(vec![webhook_configuration("c3RhbGU=")]),
                ))
            }
            (&Method::GET, p) if p == format!("{WEBHOOKS}/{WEBHOOK}") => {
                Some((StatusCode::OK, webhook_configuration("c3RhbGU=")))
            }
            (&Method::PUT, p) if p == format!("{WEBHOOKS}/{WEBHOOK}") => {
                writes.push(format!(
                    "PUT webhook caBundle={}",
                    sent["webhooks"][0]["clientConfig"]["caBundle"]
                ));
                Some((StatusCode::OK, sent.clone()))
            }
            (&Method::GET, p) if p.ends_with(root_cert::CONFIG_MAP) => {
                let namespace = p.split('/').nth(4).expect("namespace").to_owned();
                Some(match maps.get(&namespace) {
                    Some(map) => (StatusCode::OK, map.clone()),
                    None => (StatusCode::NOT_FOUND, failure(404, "NotFound")),
                })
            }
            (&Method::POST, p) if p.ends_with("/configmaps") => {
                let namespace = p.split('/').nth(4).expect("namespace").to_owned();
                assert_eq!(sent["data"][root_cert::KEY], ROOT);
                writes.push(format!("POST root in {namespace}"));
                maps.insert(namespace, sent.clone());
                Some((StatusCode::CREATED, sent.clone()))
            }
            _ => panic!("unexpected {method} {uri}"),
        };
        match answer {
            Some((status, body)) => respond.send_response(reply(status, &body)),
            None => held.push(respond),
        }
    }
    writes.sort();
    let bundle = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ROOT);
    assert_eq!(
        writes,
        [
            "POST root in a".to_owned(),
            "POST root in b".to_owned(),
            format!("PUT webhook caBundle=\"{bundle}\""),
        ]
    );
    keeper.abort();
}

#[test]
fn what_needs_repair() {
    let map = |namespace: &str, root: &str| -> ConfigMap {
        serde_json::from_value(root_map(namespace, root)).expect("map")
    };
    let ns = |name: &str, terminating: bool| -> Namespace {
        let mut value = namespace(name);
        if terminating {
            value["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(value).expect("namespace")
    };
    let name = |due: Due| match due {
        Due::Listing => "listing".to_owned(),
        Due::Listed => "listed".to_owned(),
        Due::Namespace(n) => format!("namespace {n}"),
        Due::Root(n) => format!("root {n}"),
        Due::Gone(n) => format!("gone {n}"),
        Due::Bundle => "bundle".to_owned(),
        Due::Nothing => "nothing".to_owned(),
    };
    let cases = [
        (
            namespace_due(watcher::Event::InitApply(ns("a", false))),
            "namespace a",
        ),
        (
            namespace_due(watcher::Event::Apply(ns("a", true))),
            "gone a",
        ),
        (
            namespace_due(watcher::Event::Delete(ns("a", false))),
            "gone a",
        ),
        (namespace_due(watcher::Event::Init), "listing"),
        (namespace_due(watcher::Event::InitDone), "listed"),
        (
            namespace_due(watcher::Event::InitApply(ns("kube-system", false))),
            "gone kube-system",
        ),
        (
            root_due(watcher::Event::Apply(map("a", ROOT)), ROOT),
            "nothing",
        ),
        (
            root_due(watcher::Event::Apply(map("a", "edited")), ROOT),
            "root a",
        ),
        (
            root_due(watcher::Event::Delete(map("a", ROOT)), ROOT),
            "root a",
        ),
    ];
    for (due, expected) in cases {
        assert_eq!(name(due), expected);
    }
    let config = |bundle: &str| -> MutatingWebhookConfiguration {
        serde_json::from_value(webhook_configuration(bundle)).expect("config")
    };
    let current = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ROOT);
    assert_eq!(name(bundle_due(&config(&current), ROOT)), "nothing");
    assert_eq!(name(bundle_due(&config("c3RhbGU="), ROOT)), "bundle");
}
