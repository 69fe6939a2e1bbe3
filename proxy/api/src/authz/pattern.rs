//! The value patterns of AuthorizationPolicy fields, parsed once per snapshot so a request only
//! compares: Istio's string match (exact, `prefix*`, `*suffix`, `*` for any non-empty value),
//! CIDR blocks, port numbers and path templates (`{*}` one segment, `{**}` the rest).

use std::net::IpAddr;

use ipnet::IpNet;

/// Istio's string match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// `*`: any value, as long as there is one.
    Present,
}

impl StrMatch {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(if text == "*" {
            Self::Present
        } else if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.into())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.into())
        } else {
            Self::Exact(text.into())
        })
    }

    /// A pattern matched without regard to ASCII case (hosts).
    pub(crate) fn parse_ignoring_case(text: &str) -> Result<Self, String> {
        Self::parse(&text.to_ascii_lowercase())
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == &**exact,
            Self::Prefix(prefix) => value.starts_with(&**prefix),
            Self::Suffix(suffix) => value.ends_with(&**suffix),
            Self::Present => !value.is_empty(),
        }
    }

    /// Like [`StrMatch::matches`] on `first/second`, without joining them.
    pub(crate) fn matches_joined(&self, first: &str, second: &str) -> bool {
        let joined = || first.bytes().chain([b'/']).chain(second.bytes());
        let len = first.len() + 1 + second.len();
        let starts = |p: &str| len >= p.len() && joined().zip(p.bytes()).all(|(a, b)| a == b);
        let ends =
            |p: &str| len >= p.len() && joined().rev().zip(p.bytes().rev()).all(|(a, b)| a == b);
        match self {
            Self::Exact(exact) => len == exact.len() && starts(exact),
            Self::Prefix(prefix) => starts(prefix),
            Self::Suffix(suffix) => ends(suffix),
            Self::Present => true,
        }
    }

    /// Like [`StrMatch::matches`], for a pattern made by [`StrMatch::parse_ignoring_case`].
    pub(crate) fn matches_ignoring_case(&self, value: &str) -> bool {
        let (value, len) = (value.as_bytes(), value.len());
        match self {
            Self::Exact(exact) => value.eq_ignore_ascii_case(exact.as_bytes()),
            Self::Prefix(prefix) => {
                len >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            Self::Suffix(suffix) => {
                len >= suffix.len()
                    && value[len - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
            Self::Present => len > 0,
        }
    }
}

/// A CIDR block; a bare address is a block of one.
pub(crate) fn parse_block(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))
}

pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{text:?} is not a port number"))
}

/// A `paths` value: a string match, or a template with `{*}` / `{**}` segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    Template(Vec<Segment>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: everything that is left, the last segment of a template.
    Rest,
}

impl PathMatch {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if !text.contains(['{', '}']) {
            return StrMatch::parse(text).map(Self::Str);
        }
        let bad = |why: &str| Err(format!("{text:?} is not a valid path template: {why}"));
        let Some(rest) = text.strip_prefix('/') else {
            return bad("it must start with '/'");
        };
        if text.contains('*') && text.replace("{*}", "").replace("{**}", "").contains('*') {
            return bad("'*' may only appear as {*} or {**}");
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Rest,
                "{**}" => return bad("{**} must be the last segment"),
                literal if literal.contains(['{', '}']) => {
                    return bad("an operator must be a whole segment, {*} or {**}")
                }
                literal => Segment::Literal(literal.into()),
            });
        }
        Ok(Self::Template(segments))
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Str(pattern) => pattern.matches(path),
            Self::Template(segments) => {
                let Some(mut rest) = path.strip_prefix('/') else {
                    return false;
                };
                for (i, segment) in segments.iter().enumerate() {
                    let last = i + 1 == segments.len();
                    if let Segment::Rest = segment {
                        return true;
                    }
                    let (part, tail) = match rest.split_once('/') {
                        Some((part, tail)) if !last => (part, tail),
                        Some(_) => return false,
                        None if last => (rest, ""),
                        None => return false,
                    };
                    let ok = match segment {
                        Segment::Literal(literal) => part == &**literal,
                        Segment::One => !part.is_empty(),
                        Segment::Rest => true,
                    };
                    if !ok {
                        return false;
                    }
                    rest = tail;
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns() {
        let cases = [
            ("/admin", "/admin", true),
            ("/admin", "/admin/", false),
            ("/admin*", "/admin/users", true),
            ("/admin*", "/admi", false),
            ("*.json", "/a/b.json", true),
            ("*.json", "/a/b.yaml", false),
            ("*", "anything", true),
            ("*", "", false),
        ];
        for (pattern, value, expected) in cases {
            let parsed = StrMatch::parse(pattern).expect(pattern);
            assert_eq!(parsed.matches(value), expected, "{pattern} ~ {value}");
        }
        assert!(StrMatch::parse("").is_err());
    }

    #[test]
    fn joined_values_match_as_if_joined() {
        for pattern in [
            "team-a/curl",
            "team-a/*",
            "*/curl",
            "*",
            "team-a/cur",
            "team-b/*",
        ] {
            let parsed = StrMatch::parse(pattern).expect(pattern);
            assert_eq!(
                parsed.matches_joined("team-a", "curl"),
                parsed.matches("team-a/curl"),
                "{pattern}"
            );
        }
    }

    #[test]
    fn host_patterns_ignore_case() {
        let cases = [
            ("example.com", "EXAMPLE.com", true),
            ("example.com", "example.com:8000", false),
            ("example.com:*", "Example.COM:8000", true),
            ("*.Example.com", "api.example.com", true),
            ("*.example.com", "example.com", false),
        ];
        for (pattern, value, expected) in cases {
            let parsed = StrMatch::parse_ignoring_case(pattern).expect(pattern);
            assert_eq!(
                parsed.matches_ignoring_case(value),
                expected,
                "{pattern} ~ {value}"
            );
        }
    }

    #[test]
    fn path_templates() {
        let cases = [
            ("/foo/{*}", "/foo/bar", true),
            ("/foo/{*}", "/foo/bar/baz", false),
            ("/foo/{*}", "/foo/", false),
            ("/foo/{*}/baz", "/foo/bar/baz", true),
            ("/foo/{*}/baz", "/foo/bar/qux", false),
            ("/foo/{**}", "/foo/bar/baz/qux", true),
            ("/foo/{**}", "/foo/bar", true),
            ("/foo/{**}", "/other/bar", false),
            ("/{*}/orders", "/v1/orders", true),
            ("/{*}/orders", "/orders", false),
        ];
        for (pattern, path, expected) in cases {
            let parsed = PathMatch::parse(pattern).expect(pattern);
            assert_eq!(parsed.matches(path), expected, "{pattern} ~ {path}");
        }
        for bad in [
            "foo/{*}",
            "/foo/{**}/bar",
            "/foo{*}",
            "/foo/{x}",
            "/foo/{*}*",
        ] {
            assert!(PathMatch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocks_and_ports() {
        assert_eq!(
            parse_block("10.0.0.1").expect("ip"),
            "10.0.0.1/32".parse::<IpNet>().expect("net")
        );
        assert!(parse_block("10.0.0.0/8").is_ok());
        assert!(parse_block("2001:db8::/32").is_ok());
        assert!(parse_block("10.0.0.0/33").is_err());
        assert_eq!(parse_port("8080"), Ok(8080));
        for bad in ["0", "65536", "http", ""] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
