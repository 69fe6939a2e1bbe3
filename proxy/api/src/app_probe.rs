//! What the sidecar's status port (15020) does for the app, as injection describes it in Istio's
//! variables: the app's original health probes (`ISTIO_KUBE_APP_PROBERS`, a map from
//! `/app-health/<container>/<livez|readyz|startupz>` to a Kubernetes-style httpGet, tcpSocket
//! or gRPC check) and where the app's own metrics are scraped
//! (`ISTIO_PROMETHEUS_ANNOTATIONS`). Read once at start; a variable that cannot be read stops
//! the sidecar naming it, rather than answering the kubelet wrongly.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// The variable holding the app's probes.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";
/// The variable holding the app's scrape settings.
pub const METRICS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// Kubernetes' default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// One original probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: u16,
    /// Sent as the `Host`, and dialled, instead of the pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` (default) or `HTTPS` (certificate not verified, as the kubelet does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<Header>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCheck {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpcCheck {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A probe's check, one of the three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check<'a> {
    Http(&'a HttpCheck),
    Tcp(&'a TcpCheck),
    Grpc(&'a GrpcCheck),
}

impl AppProbe {
    /// Its check (exactly one is set in a valid probe).
    pub fn check(&self) -> Option<Check<'_>> {
        match (&self.http_get, &self.tcp_socket, &self.grpc) {
            (Some(http), None, None) => Some(Check::Http(http)),
            (None, Some(tcp), None) => Some(Check::Tcp(tcp)),
            (None, None, Some(grpc)) => Some(Check::Grpc(grpc)),
            _ => None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout_seconds
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(u64::from(s)))
    }
}

/// The app's scrape settings (Istio's JSON: every field a string, empty when unset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppMetrics {
    pub scrape: String,
    pub path: String,
    pub port: String,
}

impl AppMetrics {
    /// Where to scrape the app: its port and path (`/metrics` by default); `None` when it asks
    /// not to be scraped or names no port.
    pub fn target(&self) -> Option<(u16, &str)> {
        if self.scrape == "false" {
            return None;
        }
        let port = self.port.parse().ok().filter(|p| *p > 0)?;
        let path = if self.path.is_empty() {
            "/metrics"
        } else {
            &self.path
        };
        Some((port, path))
    }
}

/// Parses `ISTIO_KUBE_APP_PROBERS`: every path must be `/app-health/...` and name exactly one
/// check. `Err` says what is wrong (the caller names the variable).
pub fn parse_probers(text: &str) -> Result<BTreeMap<String, AppProbe>, String> {
    let probers: BTreeMap<String, AppProbe> =
        serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (path, probe) in &probers {
        if !path.starts_with("/app-health/") {
            return Err(format!("{path:?} is not an /app-health/ path"));
        }
        if probe.check().is_none() {
            return Err(format!(
                "{path}: exactly one of httpGet, tcpSocket and grpc must be set"
            ));
        }
    }
    Ok(probers)
}

/// Parses `ISTIO_PROMETHEUS_ANNOTATIONS`.
pub fn parse_metrics(text: &str) -> Result<AppMetrics, String> {
    let metrics: AppMetrics = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !metrics.port.is_empty()
        && metrics
            .port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .is_none()
    {
        return Err(format!("port {:?} is not a port number", metrics.port));
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_probers_are_read() {
        let probers = parse_probers(
            r#"{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTPS",
                  "httpHeaders":[{"name":"x-probe","value":"1"}]},"timeoutSeconds":3},
                "/app-health/web/livez":{"tcpSocket":{"port":8080}},
                "/app-health/web/startupz":{"grpc":{"port":9090,"service":null}}}"#,
        )
        .expect("valid");
        let ready = &probers["/app-health/web/readyz"];
        let Some(Check::Http(http)) = ready.check() else {
            panic!("an HTTP check: {ready:?}");
        };
        assert_eq!(
            (http.port, http.path.as_deref(), http.scheme.as_deref()),
            (8080, Some("/ready"), Some("HTTPS"))
        );
        assert_eq!(http.http_headers[0].name, "x-probe");
        assert_eq!(ready.timeout(), Duration::from_secs(3));
        assert_eq!(
            probers["/app-health/web/livez"].check(),
            Some(Check::Tcp(&TcpCheck {
                port: 8080,
                host: None
            }))
        );
        assert_eq!(
            probers["/app-health/web/livez"].timeout(),
            Duration::from_secs(1)
        );
        assert!(matches!(
            probers["/app-health/web/startupz"].check(),
            Some(Check::Grpc(GrpcCheck {
                port: 9090,
                service: None
            }))
        ));
    }

    #[test]
    fn bad_probers_say_why() {
        let cases = [
            ("{not json", "key must be a string"),
            (
                r#"{"/healthz":{"tcpSocket":{"port":1}}}"#,
                "is not an /app-health/ path",
            ),
            (
                r#"{"/app-health/a/livez":{}}"#,
                "exactly one of httpGet, tcpSocket and grpc",
            ),
            (
                r#"{"/app-health/a/livez":{"httpGet":{"port":"http"}}}"#,
                "invalid type",
            ),
            (
                r#"{"/app-health/a/livez":{"exec":{"command":["true"]}}}"#,
                "unknown field `exec`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_probers(text).expect_err("refused");
            assert!(err.contains(expected), "{expected:?} missing from {err}");
        }
    }

    #[test]
    fn the_apps_scrape_target() {
        let cases = [
            (
                r#"{"scrape":"true","path":"/metrics","port":"9100"}"#,
                Some((9100, "/metrics")),
            ),
            (
                r#"{"scrape":"","path":"","port":"8080"}"#,
                Some((8080, "/metrics")),
            ),
            (r#"{"scrape":"false","path":"","port":"8080"}"#, None),
            (r#"{"scrape":"true","path":"/m","port":""}"#, None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_metrics(text).expect("valid").target(),
                expected,
                "{text}"
            );
        }
        assert!(parse_metrics(r#"{"port":"http"}"#).is_err());
    }
}
