use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::*;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector";
const ROOT: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";

fn api() -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "istio-system"), handle)
}

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

fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(body.to_string().into_bytes()))
        .expect("response")
}

async fn next(
    handle: &mut ApiHandle,
    method: Method,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, respond) = handle.next_request().await.expect("a request");
    assert_eq!((request.method(), request.uri().path()), (&method, PATH));
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        respond,
    )
}

fn root_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(ROOT)
}

#[tokio::test]
async fn every_webhook_gets_the_root_and_a_lost_race_is_retried() {
    let (client, mut handle) = api();
    let (changed, ()) = tokio::join!(patch(client, "istio-sidecar-injector", ROOT), async {
        let (_, respond) = next(&mut handle, Method::GET).await;
        respond.send_response(reply(
            StatusCode::OK,
            &config("7", &[None, Some("c3RhbGU=")]),
        ));
        // Someone else wrote in between: the API server refuses ours.
        let (sent, respond) = next(&mut handle, Method::PUT).await;
        assert_eq!(sent["metadata"]["resourceVersion"], "7");
        respond.send_response(reply(
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"}),
        ));
        let (_, respond) = next(&mut handle, Method::GET).await;
        respond.send_response(reply(StatusCode::OK, &config("8", &[None, None])));
        let (sent, respond) = next(&mut handle, Method::PUT).await;
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
    let (client, mut handle) = api();
    let current = root_b64();
    let (changed, ()) = tokio::join!(patch(client, "istio-sidecar-injector", ROOT), async {
        let (_, respond) = next(&mut handle, Method::GET).await;
        respond.send_response(reply(StatusCode::OK, &config("9", &[Some(&current)])));
    });
    assert!(!changed.expect("read"));
    assert!(handle.next_request().await.is_none(), "nothing written");
}
