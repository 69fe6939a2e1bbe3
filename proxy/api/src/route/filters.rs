//! What a route changes: headers both ways, the path and authority sent on (`rewrite`,
//! `URLRewrite`), or a redirect answered in place of the request. Header names and values are
//! checked and built once per snapshot; a rewrite builds only the new path.

use http::{header::HeaderName, HeaderMap, HeaderValue, StatusCode};
use regex::Regex;

use crate::proto::config as proto;

/// Header changes, applied in Envoy's order: set, add, remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub(crate) fn compile(source: Option<&proto::HeaderOps>) -> Result<Self, Vec<String>> {
        let Some(source) = source else {
            return Ok(Self::default());
        };
        let mut problems = Vec::new();
        let mut pairs = |field: &str, list: &[proto::Header]| -> Vec<(HeaderName, HeaderValue)> {
            list.iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| {
                            problems.push(format!(
                                "{field}[{i}].name: {:?} is not a header name",
                                h.name
                            ))
                        })
                        .ok()?;
                    let value = HeaderValue::from_str(&h.value)
                        .map_err(|_| {
                            problems.push(format!(
                                "{field}[{i}].value: {:?} is not a header value",
                                h.value
                            ))
                        })
                        .ok()?;
                    Some((name, value))
                })
                .collect()
        };
        let set = pairs("set", &source.set);
        let add = pairs("add", &source.add);
        let remove = source
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| {
                        problems.push(format!("remove[{i}]: {name:?} is not a header name"))
                    })
                    .ok()
            })
            .collect();
        if problems.is_empty() {
            Ok(Self { set, add, remove })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// The prefix a request's path matched: `(prefix, whole segments)`.
pub type MatchedPrefix<'a> = Option<(&'a str, bool)>;

/// Replaces the matched prefix of `path` with `replacement`: characters for Istio's `prefix`,
/// whole segments for Gateway API's `ReplacePrefixMatch` (`/foo` → `/` turns `/foo/bar` into
/// `/bar` and `/foo` into `/`).
pub(crate) fn replace_prefix(
    path: &str,
    (prefix, segments): (&str, bool),
    replacement: &str,
) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    if !segments {
        return format!("{replacement}{rest}");
    }
    let replacement = replacement.trim_end_matches('/');
    match (replacement.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => rest.to_owned(),
        (false, _) => format!("{replacement}{rest}"),
    }
}

/// Istio's `rewrite` and Gateway API's `URLRewrite`.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub authority: Option<HeaderValue>,
    path: PathChange,
}

#[derive(Debug, Clone, Default)]
enum PathChange {
    #[default]
    None,
    Full(String),
    Prefix(String),
    Regex(Regex, String),
}

impl PathChange {
    fn compile(path: &str, prefix: &str, regex: &str, substitution: &str) -> Result<Self, String> {
        let set = [!path.is_empty(), !prefix.is_empty(), !regex.is_empty()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err("only one of path, prefix and regex may be set".into());
        }
        Ok(if !path.is_empty() {
            PathChange::Full(path.to_owned())
        } else if !prefix.is_empty() {
            PathChange::Prefix(prefix.to_owned())
        } else if !regex.is_empty() {
            let compiled = Regex::new(regex).map_err(|e| format!("regex {regex:?}: {e}"))?;
            // Envoy's substitution names groups `\1`; the regex crate's `${1}`.
            let mut translated = String::new();
            let mut chars = substitution.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, chars.peek()) {
                    ('\\', Some(d)) if d.is_ascii_digit() => {
                        translated.push_str(&format!("${{{d}}}"));
                        chars.next();
                    }
                    ('$', _) => translated.push_str("$$"),
                    _ => translated.push(c),
                }
            }
            PathChange::Regex(compiled, translated)
        } else {
            PathChange::None
        })
    }

    /// The new path, or `None` to keep it.
    fn apply(&self, path: &str, matched: MatchedPrefix<'_>) -> Option<String> {
        match self {
            PathChange::None => None,
            PathChange::Full(full) => Some(full.clone()),
            PathChange::Prefix(replacement) => match matched {
                Some(prefix) => Some(replace_prefix(path, prefix, replacement)),
                // Without a prefix match (an exact one), the whole path is what matched.
                None => Some(replacement.clone()),
            },
            PathChange::Regex(regex, substitution) => {
                Some(regex.replace_all(path, substitution.as_str()).into_owned())
            }
        }
    }
}

impl Rewrite {
    pub(crate) fn compile(source: &proto::Rewrite) -> Result<Self, String> {
        let authority = (!source.authority.is_empty())
            .then(|| {
                HeaderValue::from_str(&source.authority)
                    .map_err(|_| format!("authority: {:?} is not a host", source.authority))
            })
            .transpose()?;
        let path = PathChange::compile(
            &source.path,
            &source.prefix,
            &source.regex,
            &source.substitution,
        )?;
        Ok(Self { authority, path })
    }

    /// The path (and query) to send instead of `path_and_query`, or `None` to keep it.
    pub fn path(
        &self,
        path: &str,
        query: Option<&str>,
        matched: MatchedPrefix<'_>,
    ) -> Option<String> {
        let mut new = self.path.apply(path, matched)?;
        if let Some(query) = query {
            new.push('?');
            new.push_str(query);
        }
        Some(new)
    }
}

/// A redirect answered instead of forwarding.
#[derive(Debug, Clone)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: PathChange,
    pub status: StatusCode,
}

impl Redirect {
    pub(crate) fn compile(source: &proto::Redirect) -> Result<Self, String> {
        let status = match source.status {
            0 => StatusCode::MOVED_PERMANENTLY,
            code @ (301 | 302 | 303 | 307 | 308) => {
                StatusCode::from_u16(code as u16).map_err(|e| e.to_string())?
            }
            other => return Err(format!("status: {other} is not a redirect status")),
        };
        let port = match source.port {
            0 => None,
            port => Some(u16::try_from(port).map_err(|_| format!("port: {port} is not a port"))?),
        };
        if !matches!(source.scheme.as_str(), "" | "http" | "https") {
            return Err(format!(
                "scheme: {:?} is neither http nor https",
                source.scheme
            ));
        }
        Ok(Self {
            scheme: Some(source.scheme.clone()).filter(|s| !s.is_empty()),
            host: Some(source.host.clone()).filter(|s| !s.is_empty()),
            port,
            path: PathChange::compile(&source.path, &source.prefix, "", "")?,
            status,
        })
    }

    /// The `Location` for a request to `scheme://authority` + `path`?`query`. The port is
    /// dropped when it is the scheme's default, as Envoy writes it.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path: &str,
        query: Option<&str>,
        matched: MatchedPrefix<'_>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (request_host, request_port) = split_authority(authority);
        let host = self.host.as_deref().unwrap_or(request_host);
        let port = self.port.or(if self.scheme.is_some() {
            None
        } else {
            request_port
        });
        let default_port = if scheme == "https" { 443 } else { 80 };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|p| *p != default_port) {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(
            &self
                .path
                .apply(path, matched)
                .unwrap_or_else(|| path.to_owned()),
        );
        if let Some(query) = query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// `host[:port]`, IPv6 literals in brackets.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}
