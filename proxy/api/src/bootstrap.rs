//! The sidecar's bootstrap: everything it knows before it has talked to anyone.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    app_probe::{parse_metrics, parse_probers, AppMetrics, AppProbe, METRICS_ENV, PROBERS_ENV},
    load::{self, ConfigError},
    proto::config as proto,
    snapshot::Snapshot,
};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// What a sidecar knows at start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootstrap {
    /// The pod this sidecar runs in.
    pub metadata: ProxyMetadata,
    /// The trust domain of this mesh (the authority of every SPIFFE identity in it).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Where the workload certificate comes from.
    pub identity: IdentitySource,
    /// Control-plane address (`host:port`, TLS), when config is discovered rather than static.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<String>,
    /// Run-time config given inline (tests, local runs without a control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_snapshot: Option<proto::Snapshot>,
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
    /// The app's original health probes, which the status port performs
    /// (`ISTIO_KUBE_APP_PROBERS`), by their `/app-health/...` path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_probers: BTreeMap<String, AppProbe>,
    /// Where the app's own metrics are scraped, to merge with the sidecar's
    /// (`ISTIO_PROMETHEUS_ANNOTATIONS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_metrics: Option<AppMetrics>,
}

/// The merged ProxyConfig injection renders (JSON): what the sidecar needs before its first
/// snapshot.
const PROXY_CONFIG_ENV: &str = "PROXY_CONFIG";

/// The `PROXY_CONFIG` fields read at start (the rest reaches the sidecar in its snapshots).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InjectedProxyConfig {
    drain_duration: Option<String>,
    concurrency: Option<u32>,
}

/// A protobuf JSON duration (`5s`, `0.5s`).
fn proto_duration(text: &str) -> Result<Duration, String> {
    text.strip_suffix('s')
        .and_then(|n| n.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?} is not a duration such as \"5s\""))
}

/// Where an injected sidecar finds the control plane unless `CA_ADDR` says otherwise (Istio's).
pub const DEFAULT_CA_ADDR: &str = "istiod.istio-system.svc:15012";
/// The projected service-account token Kubernetes mounts for the sidecar (audience `istio-ca`).
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// The mesh root certificate, from the `istio-ca-root-cert` ConfigMap.
pub const ROOT_CERT_PATH: &str = "/var/run/secrets/istio/root-cert.pem";
/// Workload certificate lifetime unless `SECRET_TTL` says otherwise (Istio's).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

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
    /// The pod's IP (`INSTANCE_IP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where the sidecar's workload identity comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum IdentitySource {
    /// PEM files on disk, as `remoractl ca issue` writes them (and Istio's `/etc/certs` layout).
    Files(FileIdentity),
    /// Certificates from the mesh CA, requested with a service-account token and renewed at
    /// half their lifetime, as Istio's agent does.
    Ca(CaIdentity),
}

/// How to get certificates from the mesh CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaIdentity {
    /// `host:port` of the CA (Istio's `CA_ADDR`).
    pub address: String,
    /// The projected service-account token proving who this pod runs as.
    pub token: PathBuf,
    /// Mesh root certificates, which the CA's serving certificate must chain to.
    pub roots: PathBuf,
    /// Requested certificate lifetime (Istio's `SECRET_TTL`, e.g. `24h`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
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

    /// The bootstrap of an injected sidecar, from the environment a Kubernetes pod gives it
    /// (`POD_NAME`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `INSTANCE_IP`, `CA_ADDR`, `TRUST_DOMAIN`,
    /// `SECRET_TTL`) and the files mounted at Istio's paths. Every problem names its variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut required = |name: &str| {
            var(name).filter(|v| !v.is_empty()).unwrap_or_else(|| {
                problems.push(format!("{name}: must be set"));
                String::new()
            })
        };
        let metadata = ProxyMetadata {
            pod_name: required("POD_NAME"),
            namespace: required("POD_NAMESPACE"),
            service_account: required("SERVICE_ACCOUNT"),
            instance_ip: None,
            labels: BTreeMap::new(),
        };
        let instance_ip = var("INSTANCE_IP").and_then(|ip| {
            ip.parse()
                .map_err(|_| problems.push(format!("INSTANCE_IP: {ip:?} is not an IP address")))
                .ok()
        });
        let app_probers = var(PROBERS_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(
                || Ok(BTreeMap::new()),
                |text| parse_probers(&text).map_err(|e| format!("{PROBERS_ENV}: {e}")),
            )
            .unwrap_or_else(|e| {
                problems.push(e);
                BTreeMap::new()
            });
        let app_metrics = var(METRICS_ENV).filter(|v| !v.is_empty()).and_then(|text| {
            parse_metrics(&text)
                .map_err(|e| problems.push(format!("{METRICS_ENV}: {e}")))
                .ok()
        });
        let proxy_config = var(PROXY_CONFIG_ENV)
            .filter(|v| !v.trim().is_empty())
            .and_then(|text| {
                serde_json::from_str::<InjectedProxyConfig>(&text)
                    .map_err(|e| problems.push(format!("{PROXY_CONFIG_ENV}: {e}")))
                    .ok()
            })
            .unwrap_or_default();
        let drain_duration = proxy_config.drain_duration.as_deref().and_then(|text| {
            proto_duration(text)
                .map_err(|e| problems.push(format!("{PROXY_CONFIG_ENV}: drainDuration: {e}")))
                .ok()
        });
        let ttl = match var("SECRET_TTL") {
            None => DEFAULT_CERT_TTL,
            Some(text) => humantime::parse_duration(&text).unwrap_or_else(|e| {
                problems.push(format!("SECRET_TTL: {text:?}: {e}"));
                DEFAULT_CERT_TTL
            }),
        };
        ConfigError::from_problems(problems)?;
        let address = var("CA_ADDR")
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| DEFAULT_CA_ADDR.to_owned());
        let bootstrap = Self {
            metadata: ProxyMetadata {
                instance_ip,
                ..metadata
            },
            trust_domain: var("TRUST_DOMAIN").unwrap_or_else(default_trust_domain),
            identity: IdentitySource::Ca(CaIdentity {
                address: address.clone(),
                token: TOKEN_PATH.into(),
                roots: ROOT_CERT_PATH.into(),
                ttl,
            }),
            control_plane: Some(address),
            static_snapshot: None,
            drain_duration,
            concurrency: proxy_config.concurrency.map(|c| c as usize),
            app_probers,
            app_metrics,
        };
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
        if self.control_plane.is_some() == self.static_snapshot.is_some() {
            // Without either, every destination would pass through in plain text; with both,
            // it would be unclear which one wins.
            problems.push("controlPlane/staticSnapshot: give exactly one of them".to_owned());
        }
        if let Some(snapshot) = &self.static_snapshot {
            match Snapshot::try_from(snapshot.clone()) {
                Ok(_) => {}
                Err(ConfigError::Invalid(found)) => {
                    problems.extend(found.into_iter().map(|p| format!("staticSnapshot.{p}")));
                }
                Err(other) => problems.push(format!("staticSnapshot: {other}")),
            }
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
    use std::collections::HashMap;

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
        let snapshot = Snapshot::try_from(b.static_snapshot.expect("snapshot present"))
            .expect("valid snapshot");
        let addr = "198.18.0.3:8000".parse().expect("addr");
        let crate::Logical::Workload(endpoint) = snapshot.lookup(addr) else {
            panic!("{addr} not resolved");
        };
        assert_eq!(
            endpoint.identity.map(|id| id.to_string()).as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/httpbin")
        );
        let health = "198.18.0.3:15021".parse().expect("addr");
        assert_eq!(snapshot.lookup(health), crate::Logical::Passthrough(health));
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
    fn exactly_one_config_source() {
        let text = GOOD.replace(
            "identity:\n",
            "controlPlane: istiod.istio-system.svc:15012\nidentity:\n",
        );
        let err = Bootstrap::from_yaml(&text)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("controlPlane/staticSnapshot: give exactly one"),
            "{err}"
        );
        let without = &GOOD[..GOOD.find("staticSnapshot").expect("present")];
        assert!(Bootstrap::from_yaml(without).is_err());
    }

    #[test]
    fn the_injected_sidecar_bootstraps_from_its_environment() {
        let env: HashMap<&str, &str> = [
            ("POD_NAME", "sleep-7d9f-x2"),
            ("POD_NAMESPACE", "client"),
            ("SERVICE_ACCOUNT", "sleep"),
            ("INSTANCE_IP", "198.18.0.7"),
            ("SECRET_TTL", "20s"),
        ]
        .into();
        let b = Bootstrap::from_env(|k| env.get(k).map(|v| (*v).to_owned())).expect("valid");
        assert_eq!(b.control_plane.as_deref(), Some(DEFAULT_CA_ADDR));
        assert_eq!(
            b.metadata.instance_ip,
            Some("198.18.0.7".parse().expect("ip"))
        );
        let IdentitySource::Ca(ca) = &b.identity else {
            panic!("{:?}", b.identity)
        };
        assert_eq!(ca.ttl, Duration::from_secs(20));
        assert_eq!(ca.token, PathBuf::from(TOKEN_PATH));
        assert_eq!(
            b.spiffe_id().expect("id").to_string(),
            "spiffe://cluster.local/ns/client/sa/sleep"
        );

        let missing = Bootstrap::from_env(|k| {
            (k != "SERVICE_ACCOUNT")
                .then(|| env.get(k).map(|v| (*v).to_owned()))
                .flatten()
        })
        .expect_err("no service account")
        .to_string();
        assert!(
            missing.contains("SERVICE_ACCOUNT: must be set"),
            "{missing}"
        );
        let bad_ttl = Bootstrap::from_env(|k| {
            if k == "SECRET_TTL" {
                Some("a day".to_owned())
            } else {
                env.get(k).map(|v| (*v).to_owned())
            }
        })
        .expect_err("bad ttl")
        .to_string();
        assert!(bad_ttl.contains("SECRET_TTL"), "{bad_ttl}");
    }

    #[test]
    fn injected_variables_reach_the_bootstrap_and_bad_ones_are_named() {
        let base: HashMap<&str, &str> = [
            ("POD_NAME", "web-0"),
            ("POD_NAMESPACE", "shop"),
            ("SERVICE_ACCOUNT", "web"),
            (
                "PROXY_CONFIG",
                r#"{"drainDuration":"7.5s","concurrency":2,"proxyMetadata":{"A":"b"}}"#,
            ),
            (
                "ISTIO_KUBE_APP_PROBERS",
                r#"{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}"#,
            ),
            (
                "ISTIO_PROMETHEUS_ANNOTATIONS",
                r#"{"scrape":"true","path":"/metrics","port":"9100"}"#,
            ),
        ]
        .into();
        let with = |changes: &[(&'static str, &'static str)]| {
            let mut env = base.clone();
            env.extend(changes.iter().copied());
            Bootstrap::from_env(|k| env.get(k).map(|v| (*v).to_owned()))
        };
        let b = with(&[]).expect("valid");
        assert_eq!(b.drain_duration, Some(Duration::from_millis(7500)));
        assert_eq!(b.concurrency, Some(2));
        assert_eq!(b.app_probers.len(), 1);
        assert_eq!(
            b.app_metrics.as_ref().and_then(AppMetrics::target),
            Some((9100, "/metrics"))
        );
        for (name, value) in [
            ("ISTIO_KUBE_APP_PROBERS", "{not json"),
            ("ISTIO_PROMETHEUS_ANNOTATIONS", r#"{"port":"http"}"#),
            ("PROXY_CONFIG", r#"{"drainDuration":"soon"}"#),
        ] {
            let err = with(&[(name, value)]).expect_err("refused").to_string();
            assert!(err.contains(&format!("{name}: ")), "{name}: {err}");
        }
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
