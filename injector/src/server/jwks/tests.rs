use std::convert::Infallible;

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use remora_api::proto::config::{JwtRule, RequestAuthentication, Security};
use tokio::net::TcpListener;

use super::*;

const KEYS: &str = r#"{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}"#;

/// An identity provider on loopback answering every GET with `status` and `body`.
async fn provider(status: StatusCode, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service_fn(move |_req| async move {
                let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    format!("http://{address}/.well-known/jwks.json")
}

#[tokio::test]
async fn fetches_a_jwks_over_http() {
    let url = provider(StatusCode::OK, KEYS).await;
    let body = fetch(&url).await.expect("fetched");
    assert_eq!(checked(&url, body).expect("a JWKS"), KEYS);
}

#[tokio::test]
async fn failures_say_why() {
    let missing = provider(StatusCode::NOT_FOUND, "").await;
    assert!(matches!(
        fetch(&missing).await,
        Err(FetchError::Status(_, StatusCode::NOT_FOUND))
    ));
    let html = provider(StatusCode::OK, "<html>").await;
    let body = fetch(&html).await.expect("fetched");
    assert!(matches!(checked(&html, body), Err(FetchError::NotJwks(..))));
    assert!(matches!(
        fetch("ftp://x/keys").await,
        Err(FetchError::Url(_))
    ));
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    assert!(matches!(
        fetch(&format!("http://{closed}/keys")).await,
        Err(FetchError::Io(..))
    ));
}

#[test]
fn fetched_keys_fill_the_rules_that_name_their_uri() {
    let rule = |uri: &str| JwtRule {
        issuer: "i".into(),
        jwks_uri: uri.into(),
        ..Default::default()
    };
    let mut security = Security {
        request_authentications: vec![RequestAuthentication {
            jwt_rules: vec![rule("https://a/keys"), rule("https://b/keys")],
            ..Default::default()
        }],
        ..Default::default()
    };
    let jwks = Jwks(BTreeMap::from([(
        "https://a/keys".to_owned(),
        KEYS.to_owned(),
    )]));
    jwks.fill(&mut security);
    let rules = &security.request_authentications[0].jwt_rules;
    assert_eq!(rules[0].jwks, KEYS);
    assert_eq!(rules[1].jwks, "", "not fetched yet: no keys, tokens fail");
}

#[tokio::test]
async fn the_refresher_fetches_what_the_policies_name() {
    let url = provider(StatusCode::OK, KEYS).await;
    let manifests = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {{app: web}}
  annotations: {{sidecar.istio.io/status: "{{}}"}}
status: {{podIP: 198.18.0.40}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: https://issuer
    jwksUri: {url}
"#
    );
    let catalog = crate::config::Catalog::build(vec![("/m/app.yaml".into(), manifests)]);
    assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
    assert_eq!(
        catalog.jwks_uris(),
        std::collections::BTreeSet::from([url.clone()])
    );
    let (_source, catalogs) = watch::channel(Arc::new(catalog));
    let (keys, mut fetched) = watch::channel(Arc::new(Jwks::default()));
    tokio::spawn(refresh(catalogs, keys));
    fetched.changed().await.expect("keys published");
    assert_eq!(fetched.borrow().0.get(&url).map(String::as_str), Some(KEYS));
}
