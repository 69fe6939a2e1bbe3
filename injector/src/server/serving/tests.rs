use std::{sync::Arc, time::Duration};

use remora_api::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const TTL: Duration = Duration::from_secs(3600);

fn names_of(key: &CertifiedKey) -> (Vec<String>, i64) {
    let (_, cert) = X509Certificate::from_der(&key.cert[0]).expect("certificate");
    let names = cert
        .subject_alternative_name()
        .expect("extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    (
        names,
        validity.not_after.timestamp() - validity.not_before.timestamp(),
    )
}

#[tokio::test(start_paused = true)]
async fn is_renewed_at_half_its_lifetime() {
    let ca = Arc::new(Authority::generate("cluster.local").expect("CA"));
    let id = SpiffeId::new("cluster.local", "istio-system", "istiod").expect("id");
    let serving = ServingCert::issue(&ca, id, &["istiod.istio-system.svc"], TTL).expect("issued");
    let first = serving.current();
    tokio::spawn(serving.clone().renew(ca.clone()));

    tokio::time::sleep(TTL / 2 - Duration::from_secs(1)).await;
    assert!(Arc::ptr_eq(&first, &serving.current()), "renewed too early");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = serving.current();
    assert_ne!(first.cert, second.cert, "not renewed at half its lifetime");

    // The same names and lifetime, from the same CA.
    let (names, lifetime) = names_of(&second);
    assert_eq!(
        names,
        [
            "URI(spiffe://cluster.local/ns/istio-system/sa/istiod)",
            "DNSName(istiod.istio-system.svc)"
        ]
    );
    assert!((lifetime - 3600).abs() <= 120, "lifetime {lifetime}");
    assert_eq!(names_of(&first).0, names);
}

#[test]
fn grpc_speaks_http2_and_the_webhook_http1() {
    let ca = Authority::generate("cluster.local").expect("CA");
    let id = SpiffeId::new("cluster.local", "istio-system", "istiod").expect("id");
    let serving = ServingCert::issue(&ca, id, &["istiod"], TTL).expect("issued");
    let grpc = serving.grpc_config(ca.roots_pem()).expect("gRPC TLS");
    assert_eq!(grpc.alpn_protocols, [b"h2".to_vec()]);
    let webhook = serving.webhook_config().expect("webhook TLS");
    assert_eq!(webhook.alpn_protocols, [b"http/1.1".to_vec()]);
}
