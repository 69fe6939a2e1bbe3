//! Where a sidecar's spans go: the `opentelemetry` and `zipkin` entries of `extensionProviders`
//! and Istio's legacy `defaultConfig.tracing.zipkin.address`, read into the snapshot's
//! `TraceProvider`. Read when the mesh config is, so a provider the sidecar could not export to
//! rejects the mesh config naming its field, and never reaches a sidecar.

use std::time::Duration;

use remora_api::proto::config::{self as proto, trace_provider::Protocol};
use serde::Deserialize;

use crate::config::well_known::CLUSTER_DOMAIN;

/// Istio's default for `maxTagLength`.
const MAX_TAG_LENGTH: u32 = 256;
/// Istio's default export timeout for HTTP exporters.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Zipkin's span endpoint.
const ZIPKIN_PATH: &str = "/api/v2/spans";

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OpenTelemetry {
    max_tag_length: Option<u32>,
    http: Option<HttpService>,
    grpc: Option<GrpcService>,
    dynatrace_sampler: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpService {
    #[serde(default)]
    path: String,
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GrpcService {
    timeout: Option<String>,
    #[serde(default)]
    initial_metadata: Vec<Header>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    name: String,
    value: Option<String>,
    env_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Zipkin {
    max_tag_length: Option<u32>,
    path: Option<String>,
    trace_context_option: Option<String>,
    timeout: Option<String>,
    headers: Option<Vec<Header>>,
}

/// Reads provider `name` of `kind` (`opentelemetry` or `zipkin`) at `service:port` with its
/// other fields in `settings_json`; `Ok(None)` for kinds that do not trace. Errors name the
/// field under the kind.
pub(super) fn read(
    name: &str,
    kind: &str,
    service: &str,
    port: u32,
    settings_json: &str,
) -> Result<Option<proto::TraceProvider>, String> {
    let mut provider = proto::TraceProvider {
        name: name.to_owned(),
        service: qualified(service),
        port,
        timeout_ms: millis(EXPORT_TIMEOUT),
        ..proto::TraceProvider::default()
    };
    match kind {
        "opentelemetry" => {
            let settings: OpenTelemetry =
                serde_json::from_str(settings_json).map_err(|e| e.to_string())?;
            if settings.dynatrace_sampler.is_some() {
                return Err(
                    "dynatraceSampler: not supported; sampling comes from the Telemetry \
                            API or defaultConfig.tracing.sampling"
                        .to_owned(),
                );
            }
            provider.max_tag_length = settings.max_tag_length.unwrap_or(MAX_TAG_LENGTH);
            match (settings.http, settings.grpc) {
                (Some(_), Some(_)) => {
                    return Err("sets both http and grpc; an exporter speaks one".to_owned())
                }
                (Some(http), None) => {
                    if !http.path.starts_with('/') {
                        return Err(format!(
                            "http.path: {:?} is not a path such as /v1/traces",
                            http.path
                        ));
                    }
                    provider.protocol = Protocol::OtlpHttp.into();
                    provider.path = http.path;
                    provider.timeout_ms = timeout(http.timeout.as_deref(), "http.timeout")?;
                    provider.headers = headers(http.headers, "http.headers")?;
                }
                (None, grpc) => {
                    let grpc = grpc.unwrap_or_default();
                    provider.protocol = Protocol::OtlpGrpc.into();
                    provider.timeout_ms = timeout(grpc.timeout.as_deref(), "grpc.timeout")?;
                    provider.headers = headers(grpc.initial_metadata, "grpc.initialMetadata")?;
                }
            }
        }
        "zipkin" => {
            let settings: Zipkin =
                serde_json::from_str(settings_json).map_err(|e| e.to_string())?;
            provider.protocol = Protocol::Zipkin.into();
            provider.max_tag_length = settings.max_tag_length.unwrap_or(MAX_TAG_LENGTH);
            provider.path = settings.path.unwrap_or_else(|| ZIPKIN_PATH.to_owned());
            provider.w3c = match settings.trace_context_option.as_deref() {
                None | Some("USE_B3") => false,
                Some("USE_B3_WITH_W3C_PROPAGATION") => true,
                Some(other) => {
                    return Err(format!(
                        "traceContextOption: {other:?} is neither USE_B3 nor \
                         USE_B3_WITH_W3C_PROPAGATION"
                    ))
                }
            };
            provider.timeout_ms = timeout(settings.timeout.as_deref(), "timeout")?;
            if settings.headers.is_some_and(|h| !h.is_empty()) {
                return Err(
                    "headers: not supported for zipkin (the Zipkin exporter sends \
                            none); an opentelemetry provider's http.headers are"
                        .to_owned(),
                );
            }
        }
        _ => return Ok(None),
    }
    if provider.service.is_empty() || provider.port == 0 || provider.port > 65535 {
        return Err("service and port: the collector's Service host and port are required".into());
    }
    Ok(Some(provider))
}

/// Istio's legacy tracer (`enableTracing` with no tracing provider): Zipkin at `address`
/// (`host:port`, `defaultConfig.tracing.zipkin.address`).
pub(super) fn legacy_zipkin(address: &str) -> Result<proto::TraceProvider, String> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            format!("{address:?} is not a host:port such as zipkin.istio-system:9411")
        })?;
    read("zipkin", "zipkin", host, u32::from(port), "{}")?
        .ok_or_else(|| "zipkin provider not read".to_owned())
}

/// A provider's `service` (`[<namespace>/]<hostname>`) as a Service host: the namespace prefix
/// dropped, and a short `name.namespace` completed with `.svc.<cluster domain>`.
fn qualified(service: &str) -> String {
    let host = service.split_once('/').map_or(service, |(_, host)| host);
    let host = host.to_ascii_lowercase();
    if host.split('.').count() == 2 {
        format!("{host}.svc.{CLUSTER_DOMAIN}")
    } else {
        host
    }
}

fn timeout(text: Option<&str>, path: &str) -> Result<u64, String> {
    let Some(text) = text else {
        return Ok(millis(EXPORT_TIMEOUT));
    };
    let seconds = text.strip_suffix('s').and_then(|n| n.parse::<f64>().ok());
    let parsed = match seconds {
        Some(seconds) => Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string()),
        None => humantime::parse_duration(text).map_err(|e| e.to_string()),
    };
    parsed
        .map(millis)
        .map_err(|e| format!("{path}: {text:?} is not a duration such as \"3s\": {e}"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The headers sent with every export; an `envName` is read from the control plane's
/// environment, as istiod reads it (a variable that is not set sends no header).
fn headers(headers: Vec<Header>, path: &str) -> Result<Vec<proto::ExportHeader>, String> {
    let mut out = Vec::new();
    for (i, header) in headers.into_iter().enumerate() {
        let at = format!("{path}[{i}]");
        if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            return Err(format!("{at}.name: {:?} is not a header name", header.name));
        }
        let value = match (header.value, header.env_name) {
            (Some(value), None) => value,
            (None, Some(env)) => match std::env::var(&env) {
                Ok(value) => value,
                Err(_) => continue,
            },
            _ => return Err(format!("{at}: set exactly one of value and envName")),
        };
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(format!("{at}.value: not a header value"));
        }
        out.push(proto::ExportHeader {
            name: header.name.to_ascii_lowercase(),
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_read_as_istio_documents_them() {
        let otel = |json: &str| {
            read(
                "otel",
                "opentelemetry",
                "observability/otel.observability",
                4317,
                json,
            )
        };
        let grpc = otel("{}").expect("ok").expect("traces");
        assert_eq!(grpc.protocol(), Protocol::OtlpGrpc);
        assert_eq!(grpc.service, "otel.observability.svc.cluster.local");
        assert_eq!(
            (grpc.port, grpc.timeout_ms, grpc.max_tag_length),
            (4317, 3000, 256)
        );
        let http = otel(
            r#"{"http": {"path": "/v1/traces", "timeout": "500ms",
                 "headers": [{"name": "X-Token", "value": "t"},
                             {"name": "X-Unset", "envName": "REMORA_TEST_UNSET_VARIABLE"}]}}"#,
        )
        .expect("ok")
        .expect("traces");
        assert_eq!(http.protocol(), Protocol::OtlpHttp);
        assert_eq!((http.path.as_str(), http.timeout_ms), ("/v1/traces", 500));
        assert_eq!(
            http.headers,
            [proto::ExportHeader {
                name: "x-token".into(),
                value: "t".into()
            }],
            "an unset variable sends nothing"
        );
        let zipkin = read(
            "z",
            "zipkin",
            "zipkin.istio-system.svc.cluster.local",
            9411,
            r#"{"traceContextOption": "USE_B3_WITH_W3C_PROPAGATION"}"#,
        )
        .expect("ok")
        .expect("traces");
        assert_eq!(zipkin.protocol(), Protocol::Zipkin);
        assert_eq!((zipkin.path.as_str(), zipkin.w3c), ("/api/v2/spans", true));
        assert_eq!(read("p", "prometheus", "", 0, "{}"), Ok(None));
        let legacy = legacy_zipkin("zipkin.istio-system:9411").expect("legacy");
        assert_eq!(legacy.service, "zipkin.istio-system.svc.cluster.local");
        assert_eq!(legacy.port, 9411);
    }

    #[test]
    fn what_cannot_be_exported_to_is_refused_naming_the_field() {
        let cases = [
            (r#"{"http": {}}"#, "http.path"),
            (
                r#"{"http": {"path": "/v1/traces"}, "grpc": {}}"#,
                "sets both",
            ),
            (r#"{"grpc": {"timeout": "soon"}}"#, "grpc.timeout"),
            (
                r#"{"grpc": {"initialMetadata": [{"name": "a"}]}}"#,
                "grpc.initialMetadata[0]",
            ),
            (r#"{"dynatraceSampler": {}}"#, "dynatraceSampler"),
        ];
        for (json, field) in cases {
            let error = read("otel", "opentelemetry", "otel.ns", 4317, json).expect_err(json);
            assert!(error.contains(field), "{json}: {error}");
        }
        let error = read(
            "z",
            "zipkin",
            "zipkin.ns",
            9411,
            r#"{"traceContextOption": "W3C"}"#,
        )
        .expect_err("option");
        assert!(error.contains("traceContextOption"), "{error}");
        let error = read(
            "z",
            "zipkin",
            "zipkin.ns",
            9411,
            r#"{"headers": [{"name": "a", "value": "b"}]}"#,
        )
        .expect_err("zipkin headers");
        assert!(
            error.contains("headers: not supported for zipkin"),
            "{error}"
        );
        let error = read("otel", "opentelemetry", "", 4317, "{}").expect_err("no service");
        assert!(error.contains("service"), "{error}");
        assert!(legacy_zipkin("zipkin").is_err());
    }
}
