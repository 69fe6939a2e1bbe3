//! App probe rewriting, as Istio does it: with mTLS in front of the app, the kubelet's own
//! probes could no longer reach it, so each httpGet, tcpSocket and gRPC liveness, readiness and
//! startup probe becomes an httpGet on the sidecar's status port
//! (`/app-health/<container>/<livez|readyz|startupz>`), and the originals go to the sidecar in
//! `ISTIO_KUBE_APP_PROBERS` (Istio's JSON) for it to perform against the app. Exec probes are
//! left alone; `sidecar.istio.io/rewriteAppHTTPProbers: "false"` turns the rewrite off.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::{json, Map, Value};

use super::{values::Values, PROXY_CONTAINER};

/// Turns the rewrite on or off for one pod.
const REWRITE_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// The sidecar's variable holding the original probes.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Whether a pod's probes are rewritten: its annotation when it is a boolean, else the values.
pub fn enabled(values: &Values, annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(REWRITE_ANNOTATION)
        .and_then(|v| parse_bool(v))
        .unwrap_or(values.sidecar_injector_webhook.rewrite_app_http_probe)
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Rewrites the probes of every app container in `containers` to the status port, returning
/// the originals by their new paths (named ports resolved; a probe whose port cannot be
/// resolved, or that already points at the status port, is not listed).
pub fn rewrite(containers: &mut [Container], status_port: u16) -> BTreeMap<String, Value> {
    let mut probers = BTreeMap::new();
    let port = i32::from(status_port);
    for container in containers.iter_mut().filter(|c| c.name != PROXY_CONTAINER) {
        let name = container.name.clone();
        let ports = container.ports.clone().unwrap_or_default();
        let resolve = |port: &IntOrString| -> Option<i32> {
            match port {
                IntOrString::Int(n) => Some(*n),
                IntOrString::String(named) => ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(named.as_str()))
                    .map(|p| p.container_port)
                    .or_else(|| named.parse().ok()),
            }
        };
        for (kind, probe) in [
            ("readyz", &mut container.readiness_probe),
            ("livez", &mut container.liveness_probe),
            ("startupz", &mut container.startup_probe),
        ] {
            let Some(probe) = probe.as_mut() else {
                continue;
            };
            let path = format!("/app-health/{name}/{kind}");
            if let Some(original) = prober(probe, &resolve, port) {
                probers.insert(path.clone(), original);
            }
            point_at_status_port(probe, path, port);
        }
    }
    probers
}

/// The JSON of `probe`'s check as the sidecar performs it, unless it is an exec probe, its
/// port is unknown, or it is already the status port.
fn prober(
    probe: &Probe,
    resolve: &dyn Fn(&IntOrString) -> Option<i32>,
    status: i32,
) -> Option<Value> {
    let mut check = Map::new();
    if let Some(http) = &probe.http_get {
        let port = resolve(&http.port).filter(|p| *p != status)?;
        let mut action = serde_json::to_value(http).ok()?;
        action["port"] = json!(port);
        check.insert("httpGet".to_owned(), action);
    } else if let Some(tcp) = &probe.tcp_socket {
        let port = resolve(&tcp.port).filter(|p| *p != status)?;
        let mut action = serde_json::to_value(tcp).ok()?;
        action["port"] = json!(port);
        check.insert("tcpSocket".to_owned(), action);
    } else if let Some(grpc) = &probe.grpc {
        check.insert(
            "grpc".to_owned(),
            json!({"port": grpc.port, "service": grpc.service}),
        );
    } else {
        return None;
    }
    if let Some(timeout) = probe.timeout_seconds.filter(|t| *t != 0) {
        check.insert("timeoutSeconds".to_owned(), json!(timeout));
    }
    Some(Value::Object(check))
}

/// The probe as the kubelet now runs it: an httpGet of `path` on the status port (an httpGet
/// keeps its host and headers, and is sent in the clear).
fn point_at_status_port(probe: &mut Probe, path: String, port: i32) {
    if probe.exec.is_some() {
        return;
    }
    let mut http = probe.http_get.take().unwrap_or_default();
    http.path = Some(path);
    http.port = IntOrString::Int(port);
    if http.scheme.as_deref() == Some("HTTPS") {
        http.scheme = Some("HTTP".to_owned());
    }
    probe.http_get = Some(http);
    probe.tcp_socket = None;
    probe.grpc = None;
}

/// The variable's value: `new` merged under `previous` (an earlier injection's, whose entries
/// win: the probes it lists were rewritten already, so only it still knows their originals).
pub fn env_value(previous: Option<&str>, new: BTreeMap<String, Value>) -> Option<String> {
    let mut all = new;
    if let Some(previous) =
        previous.and_then(|text| serde_json::from_str::<Map<String, Value>>(text).ok())
    {
        all.extend(previous);
    }
    (!all.is_empty()).then(|| serde_json::to_string(&all).unwrap_or_default())
}

#[cfg(test)]
mod tests;
