//! The sidecar's bootstrap: everything it knows before it has talked to anyone.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    load::{self, ConfigError},
    snapshot::Snapshot,
};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// What a sidecar knows at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootstrap {
    /// The pod this sidecar runs in.
    pub metadata: ProxyMetadata,
    /// The trust domain of this mesh (the authority of every SPIFFE identity in it).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Where the workload certificate comes from.
    pub identity: IdentitySource,
    /// Control-plane address (`host:port`), when config is discovered rather than static.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<String>,
    /// Run-time config given inline (tests, local runs without a control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_snapshot: Option<Snapshot>,
    /// How long a draining sidecar waits for open connections (Istio's `drainDuration`,
    /// e.g. `5s`); default [`DEFAULT_DRAIN_DURATION`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub drain_duration: Option<Duration>,
    /// Worker threads (Istio's `concurrency`; 0 means one per CPU). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// How long a draining sidecar waits when the bootstrap does not say.
pub const DEFAULT_DRAIN_DURATION: Duration = Duration::from_secs(5);

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_owned()
}

/// The pod a sidecar belongs to, as Kubernetes names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMetadata {
    pub pod_name: String,
    pub namespace: String,
    pub service_account: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where the sidecar's workload identity comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum IdentitySource {
    /// PEM files on disk, as `remoractl ca issue` writes them (and Istio's `/etc/certs` layout).
    Files(FileIdentity),
}

/// PEM files holding a workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileIdentity {
    /// Leaf certificate followed by any intermediates (`cert-chain.pem`).
    pub cert_chain: PathBuf,
    /// PKCS#8 private key of the leaf (`key.pem`).
    pub key: PathBuf,
    /// Mesh trust anchors (`root-cert.pem`).
    pub roots: PathBuf,
}

impl Bootstrap {
    /// Parses and validates a bootstrap document (YAML, or JSON which is YAML too).
    ///
    /// Every problem found is reported with the path of the field it concerns.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let bootstrap: Self = load::from_yaml(text)?;
        bootstrap.validate()?;
        Ok(bootstrap)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("metadata.podName", &self.metadata.pod_name),
            ("metadata.namespace", &self.metadata.namespace),
            ("metadata.serviceAccount", &self.metadata.service_account),
            ("trustDomain", &self.trust_domain),
        ] {
            if value.is_empty() {
                problems.push(format!("{field}: must not be empty"));
            }
        }
        // Empty parts are reported above; only check the identity they make when all are there.
        if problems.is_empty() {
            if let Err(err) = self.spiffe_id() {
                problems.push(format!(
                    "metadata.namespace/metadata.serviceAccount/trustDomain: {err}"
                ));
            }
        }
        if self.control_plane.is_some() {
            // Config discovery is not implemented yet: running without a snapshot would pass
            // every destination through in plain text, so refuse instead of starting.
            problems.push(
                "controlPlane: discovery from a control plane is not available yet; \
                 give a staticSnapshot instead"
                    .to_owned(),
            );
        }
        if let Some(snapshot) = &self.static_snapshot {
            problems.extend(
                snapshot
                    .problems()
                    .into_iter()
                    .map(|p| format!("staticSnapshot.{p}")),
            );
        }
        ConfigError::from_problems(problems)
    }

    pub fn drain_duration(&self) -> Duration {
        self.drain_duration.unwrap_or(DEFAULT_DRAIN_DURATION)
    }

    /// Worker threads to run, resolving 0 to the number of CPUs.
    pub fn concurrency(&self) -> usize {
        match self.concurrency {
            None => 1,
            Some(0) => std::thread::available_parallelism().map_or(1, usize::from),
            Some(n) => n,
        }
    }

    /// This sidecar's own SPIFFE identity.
    pub fn spiffe_id(&self) -> Result<crate::SpiffeId, crate::SpiffeIdError> {
        crate::SpiffeId::new(
            &self.trust_domain,
            &self.metadata.namespace,
            &self.metadata.service_account,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
metadata:
  podName: httpbin-0
  namespace: default
  serviceAccount: httpbin
  labels: {app: httpbin}
identity:
  files:
    certChain: /certs/cert-chain.pem
    key: /certs/key.pem
    roots: /certs/root-cert.pem
drainDuration: 2s
staticSnapshot:
  version: "1"
  endpoints:
    - address: 198.18.0.3:8000
      identity: spiffe://cluster.local/ns/default/sa/httpbin
"#;

    #[test]
    fn parses_a_full_bootstrap() {
        let b = Bootstrap::from_yaml(GOOD).expect("valid bootstrap");
        assert_eq!(b.trust_domain, "cluster.local");
        assert_eq!(b.drain_duration(), Duration::from_secs(2));
        assert_eq!(
            b.spiffe_id().expect("valid id").to_string(),
            "spiffe://cluster.local/ns/default/sa/httpbin"
        );
        let snapshot = b.static_snapshot.expect("snapshot present");
        let table = snapshot.table();
        let addr = "198.18.0.3:8000".parse().expect("addr");
        assert_eq!(
            table.identity(addr).map(ToString::to_string).as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/httpbin")
        );
        assert!(table
            .identity("198.18.0.3:15021".parse().expect("addr"))
            .is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("198.18.0.3:8000", "198.18.0.3:80000"),
                "staticSnapshot.endpoints[0].address",
            ),
            (
                GOOD.replace("spiffe://cluster.local/ns/default/sa/httpbin", "httpbin"),
                "staticSnapshot.endpoints[0].identity",
            ),
            (GOOD.replace("    key:", "    kee:"), "identity.files"),
            (
                GOOD.replace("podName: httpbin-0", "podName: ''"),
                "metadata.podName",
            ),
            (GOOD.replace("  podName: httpbin-0\n", ""), "metadata"),
            (GOOD.replace("  files:", "  vault:"), "identity"),
            ("metadata: [".to_owned(), "line"),
            (
                GOOD.replace("drainDuration: 2s", "drainDuration: soon"),
                "drainDuration",
            ),
        ];
        for (text, field) in cases {
            let err = Bootstrap::from_yaml(&text).expect_err(field).to_string();
            assert!(err.contains(field), "expected {field:?} in {err:?}");
        }
    }

    #[test]
    fn a_control_plane_address_is_refused_until_discovery_exists() {
        let text = GOOD.replace(
            "identity:\n",
            "controlPlane: istiod.istio-system.svc:15012\nidentity:\n",
        );
        let err = Bootstrap::from_yaml(&text)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("controlPlane: discovery"), "{err}");
    }

    #[test]
    fn duplicate_endpoints_are_rejected() {
        let text = GOOD.to_owned()
            + "    - address: 198.18.0.3:8000\n      identity: spiffe://cluster.local/ns/default/sa/other\n";
        let err = Bootstrap::from_yaml(&text)
            .expect_err("duplicate")
            .to_string();
        assert!(
            err.contains("staticSnapshot.endpoints[1].address: 198.18.0.3:8000 is listed twice"),
            "{err}"
        );
    }
}
