//! Which requests a route takes: path, headers, query parameters, method and authority, each
//! compiled once per snapshot (regexes included) so matching a request allocates nothing.

use http::{HeaderMap, Method, Uri};
use regex::Regex;

use crate::proto::config::{self as proto, string_match::Kind};

/// A compiled string condition.
#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    /// Characters (Istio's `prefix`).
    Prefix(String),
    /// Whole path segments (Gateway API's `PathPrefix`), kept without its trailing `/`; empty
    /// matches every path.
    PathPrefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

/// A string condition and whether case is ignored (exact and prefix only).
#[derive(Debug, Clone)]
pub struct StringCondition {
    pub kind: StrMatch,
    pub ignore_case: bool,
}

impl StringCondition {
    pub(crate) fn compile(source: &proto::StringMatch) -> Result<Self, String> {
        let kind = match &source.kind {
            None => return Err("one of exact, prefix, pathPrefix or regex is required".into()),
            Some(Kind::Exact(value)) => StrMatch::Exact(value.clone()),
            Some(Kind::Prefix(value)) => StrMatch::Prefix(value.clone()),
            Some(Kind::PathPrefix(value)) => {
                if !value.starts_with('/') {
                    return Err(format!("pathPrefix: {value:?} does not start with /"));
                }
                StrMatch::PathPrefix(value.trim_end_matches('/').to_owned())
            }
            Some(Kind::Regex(pattern)) => StrMatch::Regex(anchored(pattern)?),
        };
        Ok(Self {
            kind,
            ignore_case: source.ignore_case,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match &self.kind {
            StrMatch::Exact(exact) if self.ignore_case => value.eq_ignore_ascii_case(exact),
            StrMatch::Exact(exact) => value == exact,
            StrMatch::Prefix(prefix) => starts_with(value, prefix, self.ignore_case),
            StrMatch::PathPrefix(prefix) => {
                starts_with(value, prefix, self.ignore_case)
                    && matches!(value.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
            StrMatch::Regex(regex) => regex.is_match(value),
        }
    }

    /// The prefix a prefix condition matched, for prefix rewrites and redirects.
    pub fn prefix(&self) -> Option<(&str, bool)> {
        match &self.kind {
            StrMatch::Prefix(prefix) => Some((prefix, false)),
            StrMatch::PathPrefix(prefix) => Some((prefix, true)),
            _ => None,
        }
    }
}

/// Compiles `pattern` so that it must match a whole value, as Envoy's `safe_regex` does.
pub(crate) fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex {pattern:?}: {e}"))
}

fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    if ignore_case {
        value
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    } else {
        value.starts_with(prefix)
    }
}

/// A header or query parameter condition.
#[derive(Debug, Clone)]
pub struct NamedCondition {
    pub name: String,
    /// `None`: present, whatever the value.
    pub value: Option<StringCondition>,
    pub invert: bool,
}

impl NamedCondition {
    fn compile(source: &proto::HeaderMatch, header: bool) -> Result<Self, String> {
        if source.name.is_empty() {
            return Err("name: required".into());
        }
        if header && http::HeaderName::from_bytes(source.name.as_bytes()).is_err() {
            return Err(format!("name: {:?} is not a header name", source.name));
        }
        let value = source
            .value
            .as_ref()
            .map(StringCondition::compile)
            .transpose()
            .map_err(|e| format!("value.{e}"))?;
        Ok(Self {
            name: if header {
                source.name.to_ascii_lowercase()
            } else {
                source.name.clone()
            },
            value,
            invert: source.invert,
        })
    }

    fn holds(&self, value: Option<&str>) -> bool {
        let found = match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(value), Some(condition)) => condition.matches(value),
        };
        found != self.invert
    }
}

/// One match: every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    pub path: Option<StringCondition>,
    pub headers: Vec<NamedCondition>,
    pub query_params: Vec<NamedCondition>,
    pub method: Option<Method>,
    pub authority: Option<StringCondition>,
}

impl RequestMatch {
    pub(crate) fn compile(source: &proto::HttpMatch) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut condition = |field: &str, value: Option<&proto::StringMatch>| {
            value.and_then(|v| {
                StringCondition::compile(v)
                    .map_err(|e| problems.push(format!("{field}: {e}")))
                    .ok()
            })
        };
        let path = condition("path", source.path.as_ref());
        let authority = condition("authority", source.authority.as_ref());
        let mut named = |field: &str, list: &[proto::HeaderMatch], header: bool| {
            list.iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    NamedCondition::compile(m, header)
                        .map_err(|e| problems.push(format!("{field}[{i}].{e}")))
                        .ok()
                })
                .collect()
        };
        let headers = named("headers", &source.headers, true);
        let query_params = named("queryParams", &source.query_params, false);
        let method = (!source.method.is_empty())
            .then(|| {
                Method::from_bytes(source.method.as_bytes())
                    .map_err(|_| {
                        problems.push(format!("method: {:?} is not a method", source.method))
                    })
                    .ok()
            })
            .flatten();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            path,
            headers,
            query_params,
            method,
            authority,
        })
    }

    /// Whether the request (`method`, `uri`, `headers`) satisfies every condition.
    pub fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        if self.path.as_ref().is_some_and(|p| !p.matches(uri.path())) {
            return false;
        }
        if let Some(authority) = &self.authority {
            let value = uri.authority().map(|a| a.as_str()).or_else(|| {
                headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            if !value.is_some_and(|v| authority.matches(v)) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|condition| header_holds(condition, headers))
            && self.query_params.iter().all(|condition| {
                condition.holds(query_param(uri.query().unwrap_or(""), &condition.name))
            })
    }
}

/// A header condition over every value of the header: Envoy compares them joined by `,`.
fn header_holds(condition: &NamedCondition, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(condition.name.as_str()).iter();
    let Some(first) = values.next() else {
        return condition.holds(None);
    };
    let rest: Vec<&[u8]> = values.map(|v| v.as_bytes()).collect();
    if rest.is_empty() {
        return condition.holds(Some(std::str::from_utf8(first.as_bytes()).unwrap_or("")));
    }
    let mut joined = first.as_bytes().to_vec();
    for value in rest {
        joined.push(b',');
        joined.extend_from_slice(value);
    }
    condition.holds(Some(std::str::from_utf8(&joined).unwrap_or("")))
}

/// The first value of parameter `name` in `query` (`a=1&b=2`), as written; a parameter
/// without `=` has the empty value.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}
