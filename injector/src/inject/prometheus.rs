//! Metrics merging, as Istio does it: a Prometheus that scrapes pods by their `prometheus.io/*`
//! annotations is pointed at the sidecar's status port (`15020 /stats/prometheus`), which
//! serves the sidecar's metrics and the app's together; the app's own scrape settings go to the
//! sidecar in `ISTIO_PROMETHEUS_ANNOTATIONS`. Annotation names are compared the way Prometheus
//! turns them into labels (`prometheus.io/scrape`, `prometheus.io.scrape` and
//! `prometheus-io/scrape` are the same), and ports the mesh reserves are refused.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{probes::parse_bool, InjectError};

/// The pod's switch; without it, the mesh's `enablePrometheusMerge`.
const MERGE_ANNOTATION: &str = "prometheus.istio.io/merge-metrics";
const SCRAPE: &str = "prometheus_io_scrape";
const PATH: &str = "prometheus_io_path";
const PORT: &str = "prometheus_io_port";
const TARGETS: &str = "prometheus_istio_io_scrape_targets";
/// The sidecar's variable holding the app's scrape settings.
pub const ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// Ports an app cannot be scraped on: the sidecar's own.
const RESERVED: [u16; 9] = [
    15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090,
];

/// The app's scrape settings, in Istio's JSON layout.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Scrape {
    scrape: String,
    path: String,
    port: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    targets: Vec<Target>,
}

#[derive(Debug, PartialEq, Serialize)]
struct Target {
    port: String,
    path: String,
}

/// Prometheus' label name for an annotation key: anything outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitized(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn lookup<'a>(annotations: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    annotations
        .iter()
        .find(|(key, _)| sanitized(key) == name)
        .map(|(_, value)| value.as_str())
}

/// Points the pod's scrape annotations at the status port when metrics are merged, returning
/// the app's settings for the sidecar (`None` when there are none, or nothing changes).
pub fn merge(
    annotations: &mut BTreeMap<String, String>,
    mesh_merges: bool,
    status_port: u16,
) -> Result<Option<Scrape>, InjectError> {
    let scrape = lookup(annotations, SCRAPE)
        .and_then(parse_bool)
        .unwrap_or(true);
    let merges = annotations
        .get(MERGE_ANNOTATION)
        .and_then(|v| parse_bool(v))
        .unwrap_or(mesh_merges);
    if !scrape || !merges || status_port == 0 {
        return Ok(None);
    }
    let status = status_port.to_string();
    if lookup(annotations, PORT) == Some(status.as_str()) {
        return Ok(None);
    }
    let text = |name| lookup(annotations, name).unwrap_or_default().to_owned();
    let mut settings = Scrape {
        scrape: text(SCRAPE),
        path: text(PATH),
        port: text(PORT),
        targets: Vec::new(),
    };
    if let Some(targets) = lookup(annotations, TARGETS) {
        for target in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (port, path) = target.split_once(':').unwrap_or((target, ""));
            let path = if path.is_empty() { "/metrics" } else { path };
            settings.targets.push(Target {
                port: port.to_owned(),
                path: path.to_owned(),
            });
        }
        if let Some(first) = settings.targets.first() {
            settings.port = first.port.clone();
            settings.path = first.path.clone();
        }
    }
    let ports = std::iter::once(&settings.port)
        .chain(settings.targets.iter().map(|t| &t.port))
        .filter(|p| !p.is_empty());
    for port in ports {
        match port.parse::<u16>() {
            Ok(n) if n > 0 && !RESERVED.contains(&n) => {}
            Ok(n) if n > 0 => {
                return Err(InjectError::Annotation {
                    annotation: "prometheus.io/port".to_owned(),
                    value: port.clone(),
                    reason: format!("{n} is a port the sidecar uses"),
                })
            }
            _ => {
                return Err(InjectError::Annotation {
                    annotation: "prometheus.io/port".to_owned(),
                    value: port.clone(),
                    reason: "not a port number".to_owned(),
                })
            }
        }
    }
    forget(annotations);
    annotations.insert("prometheus.io/port".to_owned(), status);
    annotations.insert(
        "prometheus.io/path".to_owned(),
        "/stats/prometheus".to_owned(),
    );
    annotations.insert("prometheus.io/scrape".to_owned(), "true".to_owned());
    let empty = settings == Scrape::default();
    Ok((!empty).then_some(settings))
}

/// Whether `annotations` already point Prometheus at the status port (a pod injected before).
pub fn points_at(annotations: &BTreeMap<String, String>, status_port: u16) -> bool {
    lookup(annotations, PORT) == Some(status_port.to_string().as_str())
}

/// Removes every scrape annotation (re-injection, once they point at the status port).
pub fn forget(annotations: &mut BTreeMap<String, String>) {
    annotations.retain(|key, _| !matches!(sanitized(key).as_str(), SCRAPE | PATH | PORT | TARGETS));
}

impl Scrape {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
