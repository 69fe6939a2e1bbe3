//! SPIFFE identities of Kubernetes workloads, `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`,
//! the form Istio puts in the URI SAN of every workload certificate.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A workload identity as Istio spells it. Kept as its validated URI text, shared, so cloning
/// one per connection is cheap, with where its parts are, so reading one (authorization does,
/// per rule) costs no parsing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte ranges of the trust domain, namespace and service account in `uri`.
    parts: [(u16, u16); 3],
}

/// Why a string is not a Kubernetes workload SPIFFE identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("{0:?} does not start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Shape(String),
    #[error("{value:?} has an invalid {part}: {reason}")]
    Part {
        value: String,
        part: &'static str,
        reason: &'static str,
    },
}

impl SpiffeId {
    /// Builds an identity from its parts, checking each as [`FromStr`] would.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The identity as AuthorizationPolicy `principals` name it: without `spiffe://`.
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    pub fn trust_domain(&self) -> &str {
        self.part(0)
    }

    pub fn namespace(&self) -> &str {
        self.part(1)
    }

    pub fn service_account(&self) -> &str {
        self.part(2)
    }

    fn part(&self, index: usize) -> &str {
        let (start, end) = self.parts[index];
        self.uri
            .get(usize::from(start)..usize::from(end))
            .unwrap_or_default()
    }
}

const SCHEME: &str = "spiffe://";

/// Trust domains are DNS-like names; namespaces and service accounts are Kubernetes names
/// (RFC 1123 subdomains). Both use the same conservative character set here.
fn check_part(value: &str, part: &'static str, text: &str) -> Result<(), SpiffeIdError> {
    let reason = if text.is_empty() {
        Some("empty")
    } else if text.len() > 253 {
        Some("longer than 253 characters")
    } else if !text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        Some("only lowercase letters, digits, '-' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpiffeIdError::Part {
            value: value.to_owned(),
            part,
            reason,
        }),
        None => Ok(()),
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "ns", namespace, "sa", service_account] = parts.as_slice() else {
            return Err(SpiffeIdError::Shape(s.to_owned()));
        };
        check_part(s, "trust domain", trust_domain)?;
        check_part(s, "namespace", namespace)?;
        check_part(s, "service account", service_account)?;
        // Each part is at most 253 bytes (checked above), so every offset fits a u16.
        let offset = |part: &str| {
            let start = part.as_ptr() as usize - s.as_ptr() as usize;
            let to_u16 = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
            (to_u16(start), to_u16(start + part.len()))
        };
        Ok(Self {
            parts: [
                offset(trust_domain),
                offset(namespace),
                offset(service_account),
            ],
            uri: s.into(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/httpbin"
            .parse()
            .expect("valid id");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "httpbin");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/httpbin"
        );
        assert_eq!(SpiffeId::new("cluster.local", "default", "httpbin"), Ok(id));
    }

    #[test]
    fn rejects_malformed_ids() {
        let cases = [
            (
                "http://cluster.local/ns/a/sa/b",
                "does not start with spiffe://",
            ),
            ("spiffe://cluster.local/ns/a", "is not of the form"),
            (
                "spiffe://cluster.local/ns/a/sa/b/extra",
                "is not of the form",
            ),
            (
                "spiffe://cluster.local/namespace/a/sa/b",
                "is not of the form",
            ),
            ("spiffe:///ns/a/sa/b", "invalid trust domain: empty"),
            ("spiffe://cluster.local/ns/A/sa/b", "invalid namespace"),
            (
                "spiffe://cluster.local/ns/a/sa/b c",
                "invalid service account",
            ),
        ];
        for (input, expected) in cases {
            let err = input.parse::<SpiffeId>().expect_err(input).to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
