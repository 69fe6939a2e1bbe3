use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;
use crate::api_mock::{api, failure, next, reply, ApiHandle};

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

fn reviews() -> (TokenReviews, ApiHandle) {
    let (client, handle) = api("default");
    (TokenReviews::new(client), handle)
}

/// A JWT-shaped token (only its payload matters here) expiring at `exp`.
fn token(exp: u64) -> String {
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"exp": exp, "sub": "whatever the caller wrote"}).to_string());
    format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl")
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600
}

/// Answers the next request, which must be the TokenReview of `token`, with `status`.
async fn answer(handle: &mut ApiHandle, token: &str, status: Value) {
    let (sent, respond) = next(handle, Method::POST, REVIEWS).await;
    assert_eq!(sent["spec"]["token"], token);
    assert_eq!(sent["spec"]["audiences"], json!(["istio-ca"]));
    let reviewed = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": sent["spec"],
        "status": status,
    });
    respond.send_response(reply(StatusCode::CREATED, &reviewed));
}

fn authenticated(username: &str, pod: Option<&str>) -> Value {
    let mut extra = BTreeMap::new();
    if let Some(pod) = pod {
        extra.insert(POD_NAME, vec![pod]);
    }
    json!({
        "authenticated": true,
        "audiences": ["istio-ca"],
        "user": {"username": username, "extra": extra},
    })
}

#[tokio::test]
async fn the_api_servers_answer_names_the_account_and_pod() {
    let (reviews, mut handle) = reviews();
    let token = token(in_an_hour());
    let (account, ()) = tokio::join!(
        reviews.authenticate(&token),
        answer(
            &mut handle,
            &token,
            authenticated("system:serviceaccount:demo:httpbin", Some("httpbin-7f9-x2")),
        )
    );
    assert_eq!(
        account.expect("accepted"),
        ServiceAccount {
            namespace: "demo".into(),
            name: "httpbin".into(),
            pod: Some("httpbin-7f9-x2".into()),
        }
    );
    // Cached until it expires: no second review (the mock would wait for an answer).
    let again = reviews.authenticate(&token).await.expect("cached");
    assert_eq!(again.name, "httpbin");
}

#[tokio::test]
async fn what_the_api_server_does_not_vouch_for_is_refused() {
    let cases = [
        (
            json!({"authenticated": false, "error": "token has expired"}),
            "token has expired",
        ),
        (
            json!({"authenticated": true, "audiences": ["api"], "user": {"username": "system:serviceaccount:demo:httpbin"}}),
            "not for audience",
        ),
        (
            authenticated("alice@example.com", None),
            "is not a service account",
        ),
        (json!({}), "not authenticated"),
    ];
    for (status, expected) in cases {
        let (reviews, mut handle) = reviews();
        let token = token(in_an_hour());
        let (result, ()) = tokio::join!(
            reviews.authenticate(&token),
            answer(&mut handle, &token, status.clone())
        );
        let error = result.expect_err("refused").to_string();
        assert!(error.contains(expected), "{status}: {error}");
        // Nothing refused is remembered.
        assert!(reviews.cache.lock().is_empty());
    }
}

#[tokio::test]
async fn without_the_api_server_every_token_is_refused() {
    let (reviews, mut handle) = reviews();
    let token = token(in_an_hour());
    let (result, ()) = tokio::join!(reviews.authenticate(&token), async {
        let (_, respond) = next(&mut handle, Method::POST, REVIEWS).await;
        respond.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    });
    assert!(
        matches!(result, Err(TokenError::Unavailable(_))),
        "{result:?}"
    );
    // An API error (here: the control plane may not create reviews) refuses too.
    let (result, ()) = tokio::join!(reviews.authenticate(&token), async {
        let (_, respond) = next(&mut handle, Method::POST, REVIEWS).await;
        respond.send_response(reply(StatusCode::FORBIDDEN, &failure(403, "Forbidden")));
    });
    assert!(
        matches!(result, Err(TokenError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_expired_answer_is_not_kept_and_the_cache_is_bounded() {
    let (reviews, mut handle) = reviews();
    // Expired by the time it is cached (the API server's clock said otherwise): reviewed
    // again next time.
    let stale = token(1);
    for _ in 0..2 {
        let (account, ()) = tokio::join!(
            reviews.authenticate(&stale),
            answer(
                &mut handle,
                &stale,
                authenticated("system:serviceaccount:demo:httpbin", None)
            )
        );
        assert!(account.is_ok());
    }
    assert!(reviews.cache.lock().is_empty());
    // Full of live entries: a new one is not added; expired ones make room.
    let now = SystemTime::now();
    let account = ServiceAccount {
        namespace: "demo".into(),
        name: "httpbin".into(),
        pod: None,
    };
    let later = now + Duration::from_secs(60);
    for n in 0..CACHE_ENTRIES {
        reviews.remember(digest(&n.to_string()), &account, later, now);
    }
    reviews.remember(digest("one more"), &account, later, now);
    assert_eq!(reviews.cache.lock().len(), CACHE_ENTRIES);
    assert!(reviews.cached(&digest("one more"), now).is_none());
    let after = later + Duration::from_secs(1);
    reviews.remember(
        digest("one more"),
        &account,
        after + Duration::from_secs(60),
        after,
    );
    assert_eq!(reviews.cache.lock().len(), 1);
    assert!(reviews.cached(&digest("one more"), after).is_some());
    assert!(reviews.cached(&digest("0"), after).is_none());
}
