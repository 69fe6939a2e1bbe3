use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;
use crate::api_mock::{api, failure, next, reply};

const PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector";
const ROOT: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";

/// The configuration at `version`, its webhooks trusting `bundles` (base64, as the API
/// writes it; none: unset).
fn config(version: &str, bundles: &[Option<&str>]) -> Value {
    let webhooks: Vec<Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            let mut client_config = json!({"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}});
            if let Some(bundle) = bundle {
                client_config["caBundle"] = json!(bundle);
            }
            json!({"name": format!("{i}.sidecar-injector.istio.io"), "clientConfig": client_config,
                   "sideEffects": "None", "admissionReviewVersions": ["v1"]})
        })
        .collect();
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "istio-sidecar-injector", "resourceVersion": version},
           "webhooks": webhooks})
}

fn root_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(ROOT)
}

#[tokio::test]
async fn every_webhook_gets_the_root_and_a_lost_race_is_retried() {
    let (client, mut handle) = api("istio-system");
    let (changed, ()) = tokio::join!(patch(client, "istio-sidecar-injector", ROOT), async {
        let (_, respond) = next(&mut handle, Method::GET, PATH).await;
        respond.send_response(reply(
            StatusCode::OK,
            &config("7", &[None, Some("c3RhbGU=")]),
        ));
        // Someone else wrote in between: the API server refuses ours.
        let (sent, respond) = next(&mut handle, Method::PUT, PATH).await;
        assert_eq!(sent["metadata"]["resourceVersion"], "7");
        respond.send_response(reply(StatusCode::CONFLICT, &failure(409, "Conflict")));
        let (_, respond) = next(&mut handle, Method::GET, PATH).await;
        respond.send_response(reply(StatusCode::OK, &config("8", &[None, None])));
        let (sent, respond) = next(&mut handle, Method::PUT, PATH).await;
        assert_eq!(sent["metadata"]["resourceVersion"], "8");
        for webhook in sent["webhooks"].as_array().expect("webhooks") {
            assert_eq!(webhook["clientConfig"]["caBundle"], root_b64());
        }
        respond.send_response(reply(StatusCode::OK, &sent));
    });
    assert!(changed.expect("patched"));
}

#[tokio::test]
async fn a_configuration_that_trusts_the_root_is_left_alone() {
    let (client, mut handle) = api("istio-system");
    let current = root_b64();
    let (changed, ()) = tokio::join!(patch(client, "istio-sidecar-injector", ROOT), async {
        let (_, respond) = next(&mut handle, Method::GET, PATH).await;
        respond.send_response(reply(StatusCode::OK, &config("9", &[Some(&current)])));
    });
    assert!(!changed.expect("read"));
    assert!(handle.next_request().await.is_none(), "nothing written");
}
