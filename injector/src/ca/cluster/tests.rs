use http::{Method, StatusCode};
use serde_json::Value;

use super::*;
use crate::api_mock::{api, expect, failure, next, reply, ApiHandle};

const SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";

/// A Secret holding CA material, as Istio's plug-in layout or istiod write it.
fn secret_holding(name: &str, ca: &Authority) -> Value {
    let mut secret = secret_of(ca);
    secret.metadata.name = Some(name.to_owned());
    serde_json::to_value(&secret).expect("json")
}

/// Answers the GET of Secret `name` with `secret`, or 404.
async fn get(handle: &mut ApiHandle, name: &str, secret: Option<Value>) {
    let path = format!("{SECRETS}/{name}");
    match secret {
        Some(secret) => expect(handle, Method::GET, &path, StatusCode::OK, &secret).await,
        None => {
            let missing = failure(404, "NotFound");
            expect(handle, Method::GET, &path, StatusCode::NOT_FOUND, &missing).await
        }
    };
}

#[tokio::test]
async fn a_plugged_in_ca_wins() {
    let (client, mut handle) = api("istio-system");
    let plugged = Authority::generate("cluster.local").expect("ca");
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        get(
            &mut handle,
            PLUGGED_IN,
            Some(secret_holding(PLUGGED_IN, &plugged))
        )
    );
    assert_eq!(loaded.expect("loaded").roots_pem(), plugged.roots_pem());
    assert!(
        handle.next_request().await.is_none(),
        "nothing else was asked"
    );
}

#[tokio::test]
async fn the_shared_root_is_loaded_or_made_once() {
    // It exists: loaded.
    let (client, mut handle) = api("istio-system");
    let shared = Authority::generate("cluster.local").expect("ca");
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            get(&mut handle, PLUGGED_IN, None).await;
            get(
                &mut handle,
                SELF_SIGNED,
                Some(secret_holding(SELF_SIGNED, &shared)),
            )
            .await;
        }
    );
    assert_eq!(loaded.expect("loaded").roots_pem(), shared.roots_pem());

    // Neither exists: a new root, written where the other replicas will find it.
    let (client, mut handle) = api("istio-system");
    let (made, created) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            get(&mut handle, PLUGGED_IN, None).await;
            get(&mut handle, SELF_SIGNED, None).await;
            let (sent, respond) = next(&mut handle, Method::POST, SECRETS).await;
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
    let (client, mut handle) = api("istio-system");
    let winner = Authority::generate("cluster.local").expect("the other replica's root");
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        async {
            get(&mut handle, PLUGGED_IN, None).await;
            get(&mut handle, SELF_SIGNED, None).await;
            // The other replica created it between our read and our create.
            let conflict = failure(409, "AlreadyExists");
            expect(
                &mut handle,
                Method::POST,
                SECRETS,
                StatusCode::CONFLICT,
                &conflict,
            )
            .await;
            get(
                &mut handle,
                SELF_SIGNED,
                Some(secret_holding(SELF_SIGNED, &winner)),
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
    let (client, mut handle) = api("istio-system");
    let path = format!("{SECRETS}/{PLUGGED_IN}");
    let forbidden = failure(403, "Forbidden");
    let (loaded, _) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        expect(
            &mut handle,
            Method::GET,
            &path,
            StatusCode::FORBIDDEN,
            &forbidden
        )
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

#[tokio::test]
async fn a_plugged_in_ca_in_cert_managers_layout_is_read() {
    let (client, mut handle) = api("istio-system");
    let plugged = Authority::generate("cluster.local").expect("ca");
    let mut secret = secret_holding(PLUGGED_IN, &plugged);
    let data = secret["data"].take();
    secret["type"] = "kubernetes.io/tls".into();
    secret["data"] = serde_json::json!({
        "tls.crt": data["ca-cert.pem"],
        "tls.key": data["ca-key.pem"],
        "ca.crt": data["root-cert.pem"],
    });
    let (loaded, ()) = tokio::join!(
        load_or_create(client, "istio-system", "cluster.local"),
        get(&mut handle, PLUGGED_IN, Some(secret))
    );
    assert_eq!(loaded.expect("loaded").roots_pem(), plugged.roots_pem());
}
