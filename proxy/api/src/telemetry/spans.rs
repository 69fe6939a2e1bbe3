//! What a side traces, as the control plane resolved it from the Telemetry API's `tracing`,
//! `defaultProviders.tracing` and the legacy tracer: the share of requests sampled when the
//! caller did not decide, whether trace headers are written, the tags spans carry, and the
//! collector they go to. [`Tracing::sampled`] is the one sampling decision.

use std::time::Duration;

use crate::{
    proto::config::{self as proto, custom_tag, trace_provider::Protocol},
    route::Percent,
};

/// One side's tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracing {
    /// Of the requests that arrive without a sampling decision, the share sampled.
    pub sampling: Percent,
    /// Whether trace headers are read and written.
    pub propagation: bool,
    /// Whether spans carry Istio's own attributes (`istio.*`).
    pub istio_tags: bool,
    pub custom_tags: Vec<CustomTag>,
    pub provider: Provider,
}

impl Tracing {
    /// Whether a request is sampled: as the caller decided (`parent`), else when a draw
    /// (`random`, only called then) falls in the sampling share.
    pub fn sampled(&self, parent: Option<bool>, random: impl FnOnce() -> u32) -> bool {
        parent.unwrap_or_else(|| self.sampling.hit(random()))
    }
}

/// A span attribute Telemetry's `customTags` adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomTag {
    pub name: String,
    pub value: CustomValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomValue {
    Literal(String),
    /// A request header (lowercase), else `fallback`.
    Header {
        name: String,
        fallback: String,
    },
    /// The sidecar's environment variable, else `fallback`.
    Environment {
        name: String,
        fallback: String,
    },
}

/// How spans reach a collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Export {
    OtlpGrpc,
    OtlpHttp,
    Zipkin,
}

/// A collector: its Service's host and port, found in the sidecar's own snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Provider {
    pub name: String,
    pub export: Export,
    pub service: String,
    pub port: u16,
    /// The HTTP path spans are posted to (OTLP/HTTP, Zipkin).
    pub path: String,
    pub timeout: Duration,
    /// Sent with every export (gRPC metadata for OTLP/gRPC), by name.
    pub headers: Vec<(String, String)>,
    /// Zipkin only: W3C trace context is written beside B3.
    pub w3c: bool,
    /// Attribute values are cut to this many bytes (`None`: not cut).
    pub max_tag_length: Option<usize>,
}

/// Compiles one side's `tracing`, recording each problem with its path.
pub(super) fn compile(
    source: &proto::TracingPolicy,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Tracing> {
    let sampling = Percent::compile(source.sampling)
        .map_err(|e| problems.push(format!("{path}.sampling: {e}")))
        .ok()?;
    let mut custom_tags = Vec::new();
    for (i, tag) in source.custom_tags.iter().enumerate() {
        let value = match &tag.value {
            Some(custom_tag::Value::Literal(text)) => CustomValue::Literal(text.clone()),
            Some(custom_tag::Value::RequestHeader(header)) => CustomValue::Header {
                name: header.name.to_ascii_lowercase(),
                fallback: header.fallback.clone(),
            },
            Some(custom_tag::Value::Environment(env)) => CustomValue::Environment {
                name: env.name.clone(),
                fallback: env.fallback.clone(),
            },
            None => {
                problems.push(format!("{path}.customTags[{i}]: no value"));
                return None;
            }
        };
        custom_tags.push(CustomTag {
            name: tag.name.clone(),
            value,
        });
    }
    let provider = source.provider.as_ref().or_else(|| {
        problems.push(format!("{path}.provider: missing"));
        None
    })?;
    let provider = compile_provider(provider, &format!("{path}.provider"), problems)?;
    Some(Tracing {
        sampling,
        propagation: !source.propagation_disabled,
        istio_tags: !source.istio_tags_disabled,
        custom_tags,
        provider,
    })
}

fn compile_provider(
    source: &proto::TraceProvider,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Provider> {
    let export = match Protocol::try_from(source.protocol) {
        Ok(Protocol::OtlpGrpc) => Export::OtlpGrpc,
        Ok(Protocol::OtlpHttp) => Export::OtlpHttp,
        Ok(Protocol::Zipkin) => Export::Zipkin,
        Err(_) => {
            problems.push(format!("{path}.protocol: {} is unknown", source.protocol));
            return None;
        }
    };
    let Ok(port) = u16::try_from(source.port) else {
        problems.push(format!("{path}.port: {} is not a port", source.port));
        return None;
    };
    if source.service.is_empty() || port == 0 {
        problems.push(format!("{path}: no service and port"));
        return None;
    }
    if export != Export::OtlpGrpc && !source.path.starts_with('/') {
        problems.push(format!("{path}.path: {:?} is not a path", source.path));
        return None;
    }
    let headers = source
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    Some(Provider {
        name: source.name.clone(),
        export,
        service: source.service.clone(),
        port,
        path: source.path.clone(),
        timeout: Duration::from_millis(source.timeout_ms),
        headers,
        w3c: source.w3c,
        max_tag_length: usize::try_from(source.max_tag_length)
            .ok()
            .filter(|&n| n > 0),
    })
}
