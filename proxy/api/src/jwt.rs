//! RequestAuthentication: JWT validation as Istio defines it, compiled once per snapshot.
//!
//! A request without a token passes unauthenticated (requiring one is AuthorizationPolicy's
//! job, with `requestPrincipals: ["*"]`); a request with a token that does not verify against
//! the rule for its issuer is refused (401 `Jwt verification fails`). A valid token's claims are
//! what `requestPrincipals` and `request.auth.*` conditions match. The JWKS always arrives
//! inline: the control plane fetches `jwksUri`, so the sidecar never reaches out.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, Jwk, JwkSet},
    DecodingKey, Validation,
};
use serde_json::{Map, Value};

use crate::proto::config as proto;

/// Envoy's default allowance for clocks that disagree, in seconds.
const CLOCK_SKEW_SECONDS: u64 = 60;

/// The claims of a verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    /// `iss/sub`, what `requestPrincipals` match.
    pub principal: String,
    claims: Map<String, Value>,
}

/// Claims made without a token, for decision tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn claims(principal: &str, claims: serde_json::Value) -> super::Claims {
        super::Claims {
            principal: principal.to_owned(),
            claims: match claims {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        }
    }
}

impl Claims {
    /// The claim at `path` (`["groups"]`, or nested `["realm", "roles"]`).
    pub fn get<K: AsRef<str>>(&self, path: &[K]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut value = self.claims.get(first.as_ref())?;
        for key in rest {
            value = value.get(key.as_ref())?;
        }
        Some(value)
    }
}

/// The strings a claim value stands for: itself, the strings of a list, or `true`/`false`.
pub fn claim_strings(value: &Value) -> impl Iterator<Item = &str> {
    let (one, many): (Option<&str>, &[Value]) = match value {
        Value::String(text) => (Some(text), &[]),
        Value::Array(items) => (None, items),
        Value::Bool(true) => (Some("true"), &[]),
        Value::Bool(false) => (Some("false"), &[]),
        _ => (None, &[]),
    };
    one.into_iter().chain(many.iter().filter_map(Value::as_str))
}

/// Where a token is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header(HeaderName, String),
    Param(String),
}

/// One `jwtRules` entry.
pub struct JwtRule {
    /// The RequestAuthentication it came from, `namespace/name`.
    pub policy: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<Key>,
    locations: Vec<Location>,
    forward_original_token: bool,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
}

impl std::fmt::Debug for JwtRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRule")
            .field("policy", &self.policy)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("keys", &self.keys.len())
            .field("locations", &self.locations)
            .finish_non_exhaustive()
    }
}

/// One key of a rule's JWKS, with the checks a token verified by it must pass, made once per
/// push rather than per request.
struct Key {
    id: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The checks for tokens verified by `jwk`: the rule's issuer and audiences, Envoy's clock skew,
/// and only the algorithms of the key's family.
fn validation(jwk: &Jwk, issuer: &str, audiences: &[String]) -> Validation {
    use jsonwebtoken::Algorithm::*;
    let algorithms = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(_) => vec![ES256, ES384],
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
    };
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.set_issuer(&[issuer]);
    if audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(audiences);
    }
    validation.required_spec_claims.clear();
    validation.leeway = CLOCK_SKEW_SECONDS;
    validation.validate_nbf = true;
    validation
}

/// What the request's token (if any) says.
#[derive(Debug)]
pub enum JwtOutcome<'r> {
    /// No token where any rule looks.
    Missing,
    Valid {
        claims: Claims,
        rule: &'r JwtRule,
    },
    /// A token was presented and does not verify.
    Invalid(String),
}

/// The RequestAuthentications that apply to one workload.
#[derive(Debug, Default)]
pub struct Authentication {
    rules: Vec<JwtRule>,
    /// Policies the control plane could not use: every token fails while one applies.
    failing: Vec<(Arc<str>, String)>,
    /// Where tokens are looked for beyond the rules' locations: Istio's defaults, while a
    /// policy that could not be used applies (so its tokens are found, and refused).
    fallback: Vec<Location>,
}

impl Authentication {
    /// Checks and compiles the RequestAuthentications that apply; problems name their field.
    pub fn compile(policies: &[proto::RequestAuthentication]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut this = Self::default();
        for (p, policy) in policies.iter().enumerate() {
            let name: Arc<str> = format!("{}/{}", policy.namespace, policy.name).into();
            if !policy.rejected.is_empty() {
                this.failing.push((name.clone(), policy.rejected.clone()));
            }
            for (r, rule) in policy.jwt_rules.iter().enumerate() {
                let path = format!("requestAuthentications[{p}].jwtRules[{r}]");
                match JwtRule::compile(rule, name.clone()) {
                    Ok(rule) => this.rules.push(rule),
                    Err(e) => problems.extend(e.into_iter().map(|e| format!("{path}.{e}"))),
                }
            }
        }
        if !this.failing.is_empty() {
            this.fallback = default_locations();
        }
        if problems.is_empty() {
            Ok(this)
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.failing.is_empty()
    }

    /// Finds and verifies the request's token.
    pub fn verify(&self, headers: &HeaderMap, query: Option<&str>) -> JwtOutcome<'_> {
        if self.is_empty() {
            return JwtOutcome::Missing;
        }
        let found = self
            .rules
            .iter()
            .flat_map(|rule| rule.locations.iter())
            .chain(&self.fallback)
            .find_map(|location| find_token(location, headers, query).map(|t| (location, t)));
        let Some((location, token)) = found else {
            return JwtOutcome::Missing;
        };
        if let Some((policy, reason)) = self.failing.first() {
            return JwtOutcome::Invalid(format!(
                "RequestAuthentication {policy} cannot be applied ({reason})"
            ));
        }
        let Some(issuer) = unverified_issuer(token) else {
            return JwtOutcome::Invalid("the token is not a JWT with an issuer".to_owned());
        };
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.issuer == issuer && r.locations.contains(location))
        else {
            return JwtOutcome::Invalid(format!("no jwtRules entry for issuer {issuer:?}"));
        };
        match rule.verify(token) {
            Ok(claims) => JwtOutcome::Valid { claims, rule },
            Err(reason) => JwtOutcome::Invalid(reason),
        }
    }
}

impl JwtRule {
    fn compile(rule: &proto::JwtRule, policy: Arc<str>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if rule.issuer.is_empty() {
            problems.push("issuer: required".to_owned());
        }
        let keys = match serde_json::from_str::<JwkSet>(&rule.jwks) {
            Ok(set) => set
                .keys
                .iter()
                .enumerate()
                .filter_map(|(i, jwk)| match DecodingKey::from_jwk(jwk) {
                    Ok(key) => Some(Key {
                        id: jwk.common.key_id.clone(),
                        validation: validation(jwk, &rule.issuer, &rule.audiences),
                        key,
                    }),
                    Err(e) => {
                        problems.push(format!("jwks: keys[{i}]: {e}"));
                        None
                    }
                })
                .collect(),
            Err(_) if rule.jwks.is_empty() && !rule.jwks_uri.is_empty() => {
                // Not fetched yet: no key, so every token of this issuer fails, as in Envoy.
                Vec::new()
            }
            Err(e) => {
                problems.push(format!("jwks: not a JSON Web Key Set: {e}"));
                Vec::new()
            }
        };
        let mut locations = Vec::new();
        for (i, header) in rule.from_headers.iter().enumerate() {
            match HeaderName::from_bytes(header.name.as_bytes()) {
                Ok(name) => locations.push(Location::Header(name, header.prefix.clone())),
                Err(_) => problems.push(format!(
                    "fromHeaders[{i}].name: {:?} is not a header name",
                    header.name
                )),
            }
        }
        for (i, param) in rule.from_params.iter().enumerate() {
            if param.is_empty() {
                problems.push(format!("fromParams[{i}]: must not be empty"));
            }
            locations.push(Location::Param(param.clone()));
        }
        if locations.is_empty() {
            locations = default_locations();
        }
        let mut claim_headers = Vec::new();
        for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
            match HeaderName::from_bytes(output.header.as_bytes()) {
                Ok(name) if !output.claim.is_empty() => {
                    claim_headers.push((name, output.claim.split('.').map(str::to_owned).collect()))
                }
                Ok(_) => problems.push(format!("outputClaimToHeaders[{i}].claim: required")),
                Err(_) => problems.push(format!(
                    "outputClaimToHeaders[{i}].header: {:?} is not a header name",
                    output.header
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            policy,
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            keys,
            locations,
            forward_original_token: rule.forward_original_token,
            claim_headers,
        })
    }

    fn verify(&self, token: &str) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("bad header: {e}"))?;
        let candidates = self
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.id.is_none() || k.id == header.kid);
        let mut last = "no key of the issuer's JWKS matches the token".to_owned();
        // Each key's validation names only its family's algorithms: a token signed otherwise is
        // refused (no HS256 token checked against an RSA key's bytes).
        for Key {
            key, validation, ..
        } in candidates
        {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => {
                    let sub = data.claims.get("sub").and_then(Value::as_str).unwrap_or("");
                    return Ok(Claims {
                        principal: format!("{}/{sub}", self.issuer),
                        claims: data.claims,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Removes the token (unless `forwardOriginalToken`) and adds `outputClaimToHeaders`.
    pub fn rewrite(&self, claims: &Claims, headers: &mut HeaderMap) {
        if !self.forward_original_token {
            for location in &self.locations {
                if let Location::Header(name, _) = location {
                    headers.remove(name);
                }
            }
        }
        for (header, path) in &self.claim_headers {
            let Some(value) = claims.get(path) else {
                continue;
            };
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(header.clone(), value);
            }
        }
    }
}

/// Where Istio looks when a rule names no location: `Authorization: Bearer <token>`, then the
/// `access_token` query parameter.
fn default_locations() -> Vec<Location> {
    vec![
        Location::Header(http::header::AUTHORIZATION, "Bearer ".to_owned()),
        Location::Param("access_token".to_owned()),
    ]
}

fn find_token<'r>(
    location: &Location,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
) -> Option<&'r str> {
    match location {
        Location::Header(name, prefix) => {
            let value = headers.get(name)?.to_str().ok()?;
            let token = if prefix.is_empty() {
                value
            } else if value.len() >= prefix.len()
                && value[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                &value[prefix.len()..]
            } else {
                return None;
            };
            Some(token.trim()).filter(|t| !t.is_empty())
        }
        Location::Param(param) => query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == param && !value.is_empty()).then_some(value)
        }),
    }
}

/// The `iss` claim, read before verification to pick the rule that verifies it.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests;
