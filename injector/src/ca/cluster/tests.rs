use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::*;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";

fn api() -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "istio-system"), handle)
}

fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(body.to_string().into_bytes()))
        .expect("response")
}

fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

/// Answers the next request, which must be `method` on `path`, with `status` and `body`;
/// returns what was sent.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
    status: StatusCode,
    body: Value,
) -> Value {
    let (request, respond) = handle.next_request().await.expect("a request");
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    let sent = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    respond.send_response(reply(status, &body));
    serde_json::from_slice(&sent).unwrap_or(Value::Null)
}

fn as_json(secret: &Secret) -> Value {
    serde_json::to_value(secret).expect("json")
}

/// A Secret holding CA material, as Istio's plug-in layout or istiod write it.
fn secret_holding(name: &str, ca: &Authority) -> Value {
    let mut secret = secret_of(ca);
    secret.metadata.name = Some(name.to_owned());
    as_json(&secret)
}

#[tokio::test]
async fn a_plugged_in_ca_wins() {
    let (client, mut handle) = api();
    let plugged = Authority::generate("cluster.local").expect("ca");
    let roots = plugged.roots_pem().to_owned();
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            let path = format!("{SECRETS}/{PLUGGED_IN}");
            expect(
                &mut handle,
                Method::GET,
                &path,
                StatusCode::OK,
                secret_holding(PLUGGED_IN, &plugged),
            )
            .await;
        }
    );
    assert_eq!(loaded.expect("loaded").roots_pem(), roots);
    assert!(
        handle.next_request().await.is_none(),
        "nothing else was asked"
    );
}

#[tokio::test]
async fn the_shared_root_is_loaded_or_made_once() {
    // It exists: loaded.
    let (client, mut handle) = api();
    let shared = Authority::generate("cluster.local").expect("ca");
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            let missing = failure(404, "NotFound");
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{PLUGGED_IN}"),
                StatusCode::NOT_FOUND,
                missing,
            )
            .await;
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{SELF_SIGNED}"),
                StatusCode::OK,
                secret_holding(SELF_SIGNED, &shared),
            )
            .await;
        }
    );
    assert_eq!(loaded.expect("loaded").roots_pem(), shared.roots_pem());

    // Neither exists: a new root, written where the other replicas will find it.
    let (client, mut handle) = api();
    let (made, created) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            let missing = failure(404, "NotFound");
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{PLUGGED_IN}"),
                StatusCode::NOT_FOUND,
                missing.clone(),
            )
            .await;
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{SELF_SIGNED}"),
                StatusCode::NOT_FOUND,
                missing,
            )
            .await;
            let (request, respond) = handle.next_request().await.expect("a create");
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::POST, SECRETS)
            );
            let sent: Value = serde_json::from_slice(
                &request
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes(),
            )
            .expect("json");
            respond.send_response(reply(StatusCode::CREATED, &sent));
            sent
        }
    );
    let made = made.expect("made");
    assert_eq!(created["metadata"]["name"], SELF_SIGNED);
    assert_eq!(created["type"], "istio.io/ca-root");
    let written: Secret = serde_json::from_value(created).expect("a Secret");
    let reread = authority(&written, SELF_SIGNED).expect("what was written loads");
    assert_eq!(reread.roots_pem(), made.roots_pem());
}

#[tokio::test]
async fn two_replicas_racing_end_with_one_root() {
    let (client, mut handle) = api();
    let winner = Authority::generate("cluster.local").expect("the other replica's root");
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            let missing = failure(404, "NotFound");
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{PLUGGED_IN}"),
                StatusCode::NOT_FOUND,
                missing.clone(),
            )
            .await;
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{SELF_SIGNED}"),
                StatusCode::NOT_FOUND,
                missing,
            )
            .await;
            // The other replica created it between our read and our create.
            expect(
                &mut handle,
                Method::POST,
                SECRETS,
                StatusCode::CONFLICT,
                failure(409, "AlreadyExists"),
            )
            .await;
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{SELF_SIGNED}"),
                StatusCode::OK,
                secret_holding(SELF_SIGNED, &winner),
            )
            .await;
        }
    );
    assert_eq!(
        loaded.expect("the winner's").roots_pem(),
        winner.roots_pem(),
        "the loser signs with the winner's root"
    );
}

#[tokio::test]
async fn no_api_server_no_ca() {
    let (client, mut handle) = api();
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            expect(
                &mut handle,
                Method::GET,
                &format!("{SECRETS}/{PLUGGED_IN}"),
                StatusCode::FORBIDDEN,
                failure(403, "Forbidden"),
            )
            .await;
        }
    );
    let error = loaded.err().expect("refused").to_string();
    assert!(error.contains("Secret cacerts"), "{error}");
    // A Secret without the key is an error naming it.
    let mut broken = secret_of(&Authority::generate("cluster.local").expect("ca"));
    if let Some(data) = broken.data.as_mut() {
        data.remove(CA_KEY);
    }
    let error = authority(&broken, PLUGGED_IN)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("has no ca-key.pem"), "{error}");
}
