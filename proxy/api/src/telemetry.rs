//! What a sidecar records, per side (client: its outbound requests, reporter `source`;
//! server: inbound, reporter `destination`), as the control plane resolved it from Istio's
//! Telemetry API and mesh config: whether the standard metrics are recorded, how
//! `metrics.overrides` change them (a metric dropped, labels removed or added with a literal
//! or a request header's value), the access log with its `filter`, and its tracing
//! ([`spans`]).
//!
//! Checked and compiled with the rest of the snapshot, so the proxy only applies decisions:
//! [`Filter::keeps`] per entry, the overrides once per scrape (and, for labels taken from a
//! request, once per request by reading the headers [`Side::request_tags`] lists).

use crate::{access_log::Format, proto::config as proto};

pub mod spans;

pub use spans::Tracing;

/// Istio's standard metrics, by the names the Telemetry API's overrides use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    RequestsTotal,
    RequestDuration,
    RequestBytes,
    ResponseBytes,
    TcpOpened,
    TcpClosed,
    TcpSentBytes,
    TcpReceivedBytes,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::RequestsTotal,
        Metric::RequestDuration,
        Metric::RequestBytes,
        Metric::ResponseBytes,
        Metric::TcpOpened,
        Metric::TcpClosed,
        Metric::TcpSentBytes,
        Metric::TcpReceivedBytes,
    ];

    /// Its name without `istio_` (`requests_total`), as the snapshot carries it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RequestsTotal => "requests_total",
            Metric::RequestDuration => "request_duration_milliseconds",
            Metric::RequestBytes => "request_bytes",
            Metric::ResponseBytes => "response_bytes",
            Metric::TcpOpened => "tcp_connections_opened_total",
            Metric::TcpClosed => "tcp_connections_closed_total",
            Metric::TcpSentBytes => "tcp_sent_bytes_total",
            Metric::TcpReceivedBytes => "tcp_received_bytes_total",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A label value an override sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagValue {
    Literal(String),
    /// Request header `name` (lowercase; `:authority`, `:method` for the request's own), else
    /// `fallback`.
    RequestHeader {
        name: String,
        fallback: String,
    },
}

/// What the overrides leave of one metric.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricPolicy {
    pub disabled: bool,
    pub remove: Vec<String>,
    /// Added or replaced labels, sorted by name.
    pub tags: Vec<(String, TagValue)>,
}

/// One side's telemetry.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    /// Whether the standard metrics are recorded at all.
    pub metrics: bool,
    overrides: Vec<(Metric, MetricPolicy)>,
    pub access_log: Option<AccessLog>,
    /// Request headers some label takes its value from, in a fixed order.
    request_tags: Vec<String>,
    /// `None`: the side neither traces nor touches trace headers.
    pub tracing: Option<Tracing>,
}

impl Default for Side {
    fn default() -> Self {
        Self {
            metrics: true,
            overrides: Vec::new(),
            access_log: None,
            request_tags: Vec::new(),
            tracing: None,
        }
    }
}

impl Side {
    /// How `metric` is reported on this side (Istio's standard when nothing overrides it).
    pub fn metric(&self, metric: Metric) -> Option<&MetricPolicy> {
        self.overrides
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, policy)| policy)
    }

    /// The request headers labels take values from: each request records these, in this
    /// order (empty: no label depends on the request).
    pub fn request_tags(&self) -> &[String] {
        &self.request_tags
    }
}

/// Where, how and which entries a side logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    /// A file, or `/dev/stdout`.
    pub path: String,
    pub format: Format,
    pub filter: Filter,
}

/// Telemetry `filter.expression` on the response code: every check, or with `any`, one of
/// them, must pass; no checks keeps every entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    checks: Vec<(Op, u16)>,
    any: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Filter {
    /// Whether a TCP connection's entry is logged: only without checks, as Envoy's filter
    /// finds no response code on a connection and does not log it.
    pub fn keeps_connection(&self) -> bool {
        self.checks.is_empty()
    }

    /// Whether a request's entry with response `code` (0 when unanswered) is logged.
    pub fn keeps(&self, code: u16) -> bool {
        if self.checks.is_empty() {
            return true;
        }
        let pass = |(op, value): &(Op, u16)| match op {
            Op::Eq => code == *value,
            Op::Ne => code != *value,
            Op::Lt => code < *value,
            Op::Le => code <= *value,
            Op::Gt => code > *value,
            Op::Ge => code >= *value,
        };
        if self.any {
            self.checks.iter().any(pass)
        } else {
            self.checks.iter().all(pass)
        }
    }
}

/// Both sides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Telemetry {
    pub client: Side,
    pub server: Side,
}

impl Telemetry {
    /// Compiles the snapshot's `telemetry`, recording each problem with its path.
    pub fn compile(source: Option<&proto::Telemetry>, problems: &mut Vec<String>) -> Self {
        let Some(source) = source else {
            return Self::default();
        };
        let side = |side: Option<&proto::TelemetrySide>, path: &str, problems: &mut _| {
            side.map_or_else(Side::default, |s| compile_side(s, path, problems))
        };
        Self {
            client: side(source.client.as_ref(), "telemetry.client", problems),
            server: side(source.server.as_ref(), "telemetry.server", problems),
        }
    }
}

fn compile_side(source: &proto::TelemetrySide, path: &str, problems: &mut Vec<String>) -> Side {
    let mut overrides = Vec::new();
    for (i, o) in source.metric_overrides.iter().enumerate() {
        let here = format!("{path}.metricOverrides[{i}]");
        let Some(metric) = Metric::named(&o.metric) else {
            problems.push(format!(
                "{here}.metric: {:?} is not a standard metric",
                o.metric
            ));
            continue;
        };
        let mut tags = Vec::new();
        for (name, value) in &o.tags {
            if !is_label_name(name) {
                problems.push(format!("{here}.tags: {name:?} is not a label name"));
                continue;
            }
            let value = match &value.value {
                Some(proto::tag_value::Value::Literal(text)) => TagValue::Literal(text.clone()),
                Some(proto::tag_value::Value::RequestHeader(header)) => {
                    if header.name.is_empty() {
                        problems.push(format!("{here}.tags[{name}].requestHeader.name: empty"));
                        continue;
                    }
                    TagValue::RequestHeader {
                        name: header.name.to_ascii_lowercase(),
                        fallback: header.fallback.clone(),
                    }
                }
                None => {
                    problems.push(format!("{here}.tags[{name}]: no value"));
                    continue;
                }
            };
            tags.push((name.clone(), value));
        }
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        for name in &o.remove_tags {
            if !is_label_name(name) {
                problems.push(format!("{here}.removeTags: {name:?} is not a label name"));
            }
        }
        overrides.push((
            metric,
            MetricPolicy {
                disabled: o.disabled,
                remove: o.remove_tags.clone(),
                tags,
            },
        ));
    }
    let mut request_tags: Vec<String> = overrides
        .iter()
        .flat_map(|(_, p)| &p.tags)
        .filter_map(|(_, value)| match value {
            TagValue::RequestHeader { name, .. } => Some(name.clone()),
            TagValue::Literal(_) => None,
        })
        .collect();
    request_tags.sort();
    request_tags.dedup();
    let access_log = source
        .access_log
        .as_ref()
        .and_then(|log| compile_log(log, &format!("{path}.accessLog"), problems));
    let tracing = source
        .tracing
        .as_ref()
        .and_then(|t| spans::compile(t, &format!("{path}.tracing"), problems));
    Side {
        metrics: !source.metrics_disabled,
        overrides,
        access_log,
        request_tags,
        tracing,
    }
}

fn compile_log(
    source: &proto::AccessLogPolicy,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<AccessLog> {
    if source.path.is_empty() {
        problems.push(format!("{path}.path: empty"));
        return None;
    }
    let format = if source.json {
        if source.json_fields.is_empty() {
            Format::istio(true)
        } else {
            Format::json(
                source
                    .json_fields
                    .iter()
                    .map(|f| (f.key.as_str(), f.format.as_str())),
            )
        }
    } else if source.text_format.is_empty() {
        Format::istio(false)
    } else {
        Format::text(&source.text_format)
    };
    let format = format
        .map_err(|e| problems.push(format!("{path}: {e}")))
        .ok()?;
    let mut checks = Vec::new();
    for (i, check) in source.checks.iter().enumerate() {
        let op = match check.op.as_str() {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            other => {
                problems.push(format!(
                    "{path}.checks[{i}].op: {other:?} is not a comparison"
                ));
                return None;
            }
        };
        let Ok(code) = u16::try_from(check.code) else {
            problems.push(format!(
                "{path}.checks[{i}].code: {} is not a status",
                check.code
            ));
            return None;
        };
        checks.push((op, code));
    }
    Some(AccessLog {
        path: source.path.clone(),
        format,
        filter: Filter {
            checks,
            any: source.any_check,
        },
    })
}

/// A Prometheus label name an override may set: not one Prometheus reserves (`__*`) or gives
/// histogram buckets and summaries (`le`, `quantile`).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid && !name.starts_with("__") && !matches!(name, "le" | "quantile")
}

#[cfg(test)]
mod tests;
