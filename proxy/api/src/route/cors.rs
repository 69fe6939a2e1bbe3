//! Istio's `corsPolicy`, as Envoy's CORS filter applies it on the client sidecar: a preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed origin is
//! answered in place, without reaching the backend; any other request from an allowed origin
//! gets the `Access-Control-Allow-*` headers added to its answer. A request without `Origin`,
//! or from an origin not allowed, passes untouched (a preflight from such an origin is
//! forwarded, or with `unmatchedPreflights: IGNORE` answered without CORS headers).

use http::{header, HeaderMap, HeaderValue, Method};

use super::matching::StringCondition;
use crate::proto::config as proto;

/// A compiled `corsPolicy`: the header values every answer shares are built once.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<StringCondition>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    ignore_unmatched_preflights: bool,
}

/// What CORS makes of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum CorsAction {
    /// Not a CORS request for this policy: forward it untouched.
    None,
    /// Answer 200 with these headers, without forwarding.
    Preflight(HeaderMap),
    /// Forward it, then add these headers to the answer.
    Respond(HeaderMap),
}

impl Cors {
    pub(crate) fn compile(source: &proto::Cors) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let origins = source
            .allow_origins
            .iter()
            .enumerate()
            .filter_map(|(i, origin)| {
                StringCondition::compile(origin)
                    .map_err(|e| problems.push(format!("allowOrigins[{i}]: {e}")))
                    .ok()
            })
            .collect();
        let mut list = |field: &str, values: &[String]| {
            (!values.is_empty())
                .then(|| {
                    HeaderValue::try_from(values.join(","))
                        .map_err(|_| {
                            problems.push(format!("{field}: {values:?} is not a header value"))
                        })
                        .ok()
                })
                .flatten()
        };
        let methods = list("allowMethods", &source.allow_methods);
        let headers = list("allowHeaders", &source.allow_headers);
        let expose = list("exposeHeaders", &source.expose_headers);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            origins,
            methods,
            headers,
            expose,
            max_age: (source.max_age_seconds > 0)
                .then(|| HeaderValue::from(source.max_age_seconds)),
            credentials: source.allow_credentials,
            ignore_unmatched_preflights: source.ignore_unmatched_preflights,
        })
    }

    /// What to do with a request (`method`, `headers`).
    pub fn action(&self, method: &Method, headers: &HeaderMap) -> CorsAction {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return CorsAction::None;
        };
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| self.origins.iter().any(|c| c.matches(origin)));
        if !allowed {
            return if preflight && self.ignore_unmatched_preflights {
                CorsAction::Preflight(HeaderMap::new())
            } else {
                CorsAction::None
            };
        }
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !preflight {
            if let Some(expose) = &self.expose {
                out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
            return CorsAction::Respond(out);
        }
        for (name, value) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &self.methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.headers),
            (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(value) = value {
                out.insert(name, value.clone());
            }
        }
        CorsAction::Preflight(out)
    }
}
