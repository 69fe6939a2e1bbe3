use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &[u8] = b"a shared secret for the tests only";
const ISSUER: &str = "https://issuer.example";

fn jwks() -> String {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    json!({"keys": [{"kty": "oct", "kid": "one", "alg": "HS256", "k": k}]}).to_string()
}

fn token(claims: serde_json::Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("one".into());
    encode(&header, &claims, &EncodingKey::from_secret(SECRET)).expect("signed")
}

fn authn(rule: proto::JwtRule) -> Authentication {
    Authentication::compile(&[proto::RequestAuthentication {
        namespace: "team-a".into(),
        name: "jwt".into(),
        jwt_rules: vec![rule],
        rejected: String::new(),
    }])
    .expect("valid")
}

fn rule() -> proto::JwtRule {
    proto::JwtRule {
        issuer: ISSUER.into(),
        jwks: jwks(),
        ..Default::default()
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    headers
}

#[test]
fn a_valid_token_gives_claims_and_principal() {
    let authn = authn(rule());
    let headers = bearer(&token(
        json!({"iss": ISSUER, "sub": "alice", "groups": ["dev", "ops"], "realm": {"role": "admin"}}),
    ));
    let JwtOutcome::Valid { claims, rule } = authn.verify(&headers, None) else {
        panic!("valid token");
    };
    assert_eq!(claims.principal, "https://issuer.example/alice");
    assert_eq!(&*rule.policy, "team-a/jwt");
    let groups: Vec<&str> = claim_strings(claims.get(&["groups"]).expect("claim")).collect();
    assert_eq!(groups, ["dev", "ops"]);
    let role = claims.get(&["realm", "role"]).expect("nested claim");
    assert_eq!(claim_strings(role).collect::<Vec<_>>(), ["admin"]);
}

#[test]
fn missing_and_invalid_tokens() {
    let authn = authn(proto::JwtRule {
        audiences: vec!["orders".into()],
        ..rule()
    });
    assert!(matches!(
        authn.verify(&HeaderMap::new(), None),
        JwtOutcome::Missing
    ));
    let cases = [
        ("garbage", bearer("not.a.jwt")),
        (
            "other issuer",
            bearer(&token(
                json!({"iss": "https://other", "sub": "a", "aud": "orders"}),
            )),
        ),
        (
            "wrong audience",
            bearer(&token(json!({"iss": ISSUER, "sub": "a", "aud": "billing"}))),
        ),
        (
            "expired",
            bearer(&token(
                json!({"iss": ISSUER, "sub": "a", "aud": "orders", "exp": 1000}),
            )),
        ),
        ("bad signature", {
            let good = token(json!({"iss": ISSUER, "sub": "a", "aud": "orders"}));
            bearer(&format!("{}x", &good[..good.len() - 1]))
        }),
    ];
    for (what, headers) in cases {
        assert!(
            matches!(authn.verify(&headers, None), JwtOutcome::Invalid(_)),
            "{what}"
        );
    }
    let good = bearer(&token(
        json!({"iss": ISSUER, "sub": "a", "aud": ["x", "orders"]}),
    ));
    assert!(matches!(
        authn.verify(&good, None),
        JwtOutcome::Valid { .. }
    ));
}

#[test]
fn locations_and_rewrites() {
    let authn = authn(proto::JwtRule {
        from_headers: vec![proto::JwtHeader {
            name: "x-jwt".into(),
            prefix: String::new(),
        }],
        from_params: vec!["token".into()],
        output_claim_to_headers: vec![proto::ClaimToHeader {
            header: "x-user".into(),
            claim: "sub".into(),
        }],
        ..rule()
    });
    let jwt = token(json!({"iss": ISSUER, "sub": "bob"}));
    // The default location is not looked at once a rule names its own.
    assert!(matches!(
        authn.verify(&bearer(&jwt), None),
        JwtOutcome::Missing
    ));
    let query = format!("a=1&token={jwt}");
    assert!(matches!(
        authn.verify(&HeaderMap::new(), Some(&query)),
        JwtOutcome::Valid { .. }
    ));
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt", jwt.parse().expect("header"));
    let JwtOutcome::Valid { claims, rule } = authn.verify(&headers, None) else {
        panic!("valid token in x-jwt");
    };
    rule.rewrite(&claims, &mut headers);
    assert!(headers.get("x-jwt").is_none(), "the token is not forwarded");
    assert_eq!(
        headers.get("x-user").map(|v| v.as_bytes()),
        Some(&b"bob"[..])
    );
}

#[test]
fn a_policy_that_could_not_be_used_fails_every_token() {
    let authn = Authentication::compile(&[proto::RequestAuthentication {
        namespace: "team-a".into(),
        name: "broken".into(),
        jwt_rules: Vec::new(),
        rejected: "spec.jwtRules[0].issuer: required".into(),
    }])
    .expect("compiles");
    assert!(matches!(
        authn.verify(&HeaderMap::new(), None),
        JwtOutcome::Missing
    ));
    let headers = bearer(&token(json!({"iss": ISSUER, "sub": "a"})));
    let JwtOutcome::Invalid(reason) = authn.verify(&headers, None) else {
        panic!("fails closed");
    };
    assert!(reason.contains("team-a/broken"), "{reason}");
}

#[test]
fn bad_rules_name_the_field() {
    let problems = Authentication::compile(&[proto::RequestAuthentication {
        namespace: "ns".into(),
        name: "n".into(),
        jwt_rules: vec![proto::JwtRule {
            jwks: "{".into(),
            ..Default::default()
        }],
        rejected: String::new(),
    }])
    .expect_err("invalid");
    let text = problems.join("; ");
    assert!(
        text.contains("requestAuthentications[0].jwtRules[0].issuer: required"),
        "{text}"
    );
    assert!(
        text.contains("requestAuthentications[0].jwtRules[0].jwks: not a JSON Web Key Set"),
        "{text}"
    );
}
