//! Request path normalization, Istio's `pathNormalization`: done once per request before
//! authorization matches the path and before the request is forwarded, so a policy on
//! `/private` cannot be sidestepped with `/public/%2E%2E/private` and the app sees the path the
//! policy saw.

use std::borrow::Cow;

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathNormalization {
    /// Forwarded as received.
    None,
    /// RFC 3986: percent-encoded unreserved characters decoded, `.` and `..` resolved, `\` read
    /// as `/`. `%2F` stays encoded.
    #[default]
    Base,
    /// `Base`, and runs of `/` merged.
    MergeSlashes,
    /// `MergeSlashes`, after decoding `%2F` and `%5C` too.
    DecodeAndMergeSlashes,
}

/// Why a path is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
}

impl PathNormalization {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "NONE" => Self::None,
            "" | "DEFAULT" | "BASE" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            _ => return None,
        })
    }

    /// The normalized form of `path` (the path only, no query); borrowed when unchanged, which
    /// is the usual case.
    pub fn normalize<'p>(self, path: &'p str) -> Result<Cow<'p, str>, PathError> {
        if self == Self::None || !path.starts_with('/') {
            return Ok(Cow::Borrowed(path));
        }
        let merges = self != Self::Base;
        let clean =
            !(path.contains(['%', '\\']) || path.contains("/.") || merges && path.contains("//"));
        if clean {
            return Ok(Cow::Borrowed(path));
        }
        let decoded = self.decode(path)?;
        let slashed = decoded.replace('\\', "/");
        let resolved = remove_dot_segments(&slashed);
        let merged = if merges {
            merge_slashes(&resolved)
        } else {
            resolved
        };
        Ok(if merged == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(merged)
        })
    }

    /// Decodes percent-encoded unreserved characters (and, for `DecodeAndMergeSlashes`, `/`
    /// and `\`); other escapes are kept, their hex digits uppercased.
    fn decode(self, path: &str) -> Result<String, PathError> {
        let bytes = path.as_bytes();
        let mut out = Vec::with_capacity(path.len());
        let mut i = 0;
        while i < bytes.len() {
            let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
                .then(|| hex(bytes[i + 1]).zip(hex(bytes[i + 2])))
                .flatten();
            let Some((high, low)) = escaped else {
                out.push(bytes[i]);
                i += 1;
                continue;
            };
            let byte = high << 4 | low;
            let unreserved =
                byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
            let slash = matches!(byte, b'/' | b'\\') && self == Self::DecodeAndMergeSlashes;
            if byte == 0 {
                return Err(PathError::EncodedNul);
            } else if unreserved || slash {
                out.push(byte);
            } else {
                out.extend([b'%', bytes[i + 1], bytes[i + 2]].map(|b| b.to_ascii_uppercase()));
            }
            i += 3;
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 section 5.2.4, for a path starting with `/`.
fn remove_dot_segments(path: &str) -> String {
    let parts: Vec<&str> = path[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
        if last && matches!(*part, "." | "..") {
            kept.push("");
        }
    }
    format!("/{}", kept.join("/"))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_as_istio_configures_envoy() {
        use PathNormalization::*;
        let cases = [
            (Base, "/get", "/get"),
            (Base, "/public/%2E%2E/private", "/private"),
            (Base, "/public/../private", "/private"),
            (Base, "/a/./b/", "/a/b/"),
            (Base, "/a/b/..", "/a/"),
            (Base, "/../../x", "/x"),
            (Base, "/%7Euser/%41", "/~user/A"),
            (Base, "/a%2Fb", "/a%2Fb"),
            (Base, "/a%2fb", "/a%2Fb"),
            (Base, "/a\\b", "/a/b"),
            (Base, "/a//b", "/a//b"),
            (Base, "/.well-known/x", "/.well-known/x"),
            (MergeSlashes, "/a//b///c", "/a/b/c"),
            (MergeSlashes, "/a%2F%2Fb", "/a%2F%2Fb"),
            (DecodeAndMergeSlashes, "/a%2F%2Fb", "/a/b"),
            (DecodeAndMergeSlashes, "/a%5Cb", "/a/b"),
            (DecodeAndMergeSlashes, "/x/%2E%2E%2Fadmin", "/admin"),
            (None, "/public/../private", "/public/../private"),
            (Base, "*", "*"),
        ];
        for (mode, path, expected) in cases {
            assert_eq!(
                mode.normalize(path).expect(path),
                expected,
                "{mode:?} {path}"
            );
        }
    }

    #[test]
    fn an_encoded_nul_is_refused() {
        assert_eq!(
            PathNormalization::Base.normalize("/a%00b"),
            Err(PathError::EncodedNul)
        );
        assert!(PathNormalization::None.normalize("/a%00b").is_ok());
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        let normalized = PathNormalization::MergeSlashes
            .normalize("/status/200")
            .expect("valid");
        assert!(matches!(normalized, Cow::Borrowed(_)));
    }
}
