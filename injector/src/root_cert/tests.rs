use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;
use crate::api_mock::{api, failure, next, reply};

const MAPS: &str = "/api/v1/namespaces/demo/configmaps";
const ROOT: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";

fn map(root: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": CONFIG_MAP, "namespace": "demo", "resourceVersion": "3"},
           "data": {KEY: root, "other": "kept"}})
}

#[tokio::test]
async fn a_missing_root_is_published_an_edited_one_repaired_a_current_one_left() {
    // Deleted (or never made): created.
    let (client, mut handle) = api("demo");
    let (change, ()) = tokio::join!(ensure(client, "demo", ROOT), async {
        let path = format!("{MAPS}/{CONFIG_MAP}");
        let (_, respond) = next(&mut handle, Method::GET, &path).await;
        respond.send_response(reply(StatusCode::NOT_FOUND, &failure(404, "NotFound")));
        let (sent, respond) = next(&mut handle, Method::POST, MAPS).await;
        assert_eq!(sent["metadata"]["name"], CONFIG_MAP);
        assert_eq!(sent["data"][KEY], ROOT);
        respond.send_response(reply(StatusCode::CREATED, &sent));
    });
    assert_eq!(change.expect("published"), Change::Created);

    // Edited: written back, other keys kept.
    let (client, mut handle) = api("demo");
    let (change, ()) = tokio::join!(ensure(client, "demo", ROOT), async {
        let path = format!("{MAPS}/{CONFIG_MAP}");
        let (_, respond) = next(&mut handle, Method::GET, &path).await;
        respond.send_response(reply(StatusCode::OK, &map("tampered")));
        let (sent, respond) = next(&mut handle, Method::PUT, &path).await;
        assert_eq!(
            (&sent["data"][KEY], &sent["data"]["other"]),
            (&json!(ROOT), &json!("kept"))
        );
        assert_eq!(sent["metadata"]["resourceVersion"], "3");
        respond.send_response(reply(StatusCode::OK, &sent));
    });
    assert_eq!(change.expect("repaired"), Change::Updated);

    // Current: nothing written.
    let (client, mut handle) = api("demo");
    let (change, ()) = tokio::join!(ensure(client, "demo", ROOT), async {
        let (_, respond) = next(&mut handle, Method::GET, &format!("{MAPS}/{CONFIG_MAP}")).await;
        respond.send_response(reply(StatusCode::OK, &map(ROOT)));
    });
    assert_eq!(change.expect("read"), Change::Unchanged);
    assert!(handle.next_request().await.is_none());
}
