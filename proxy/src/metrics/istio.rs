//! Istio's standard metrics, stored as atomics on interned label sets.
//!
//! A [`Series`] is one label set without its outcome (reporter, both peers, the Service,
//! the connection's security), interned once per connection or upstream endpoint. Under it,
//! each outcome seen (protocol, response code, gRPC status, response flags) has its cells: a
//! request counter and three histograms, or a connection's four TCP counters. Recording a
//! request finds its outcome's cells under a read lock and adds with relaxed atomics: no label
//! is hashed, built or allocated per request. Label strings are only rendered on a scrape.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use parking_lot::{Mutex, RwLock};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::{flags::Flags, labels::SeriesLabels};

/// Envoy's default histogram buckets, which Istio's sidecars use for the request duration
/// (milliseconds) and the request and response sizes (bytes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A histogram over [`BUCKETS`] of whole numbers (milliseconds, bytes).
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last counts values above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: u64) {
        // Exact: every bound is below 2^53.
        #[allow(clippy::cast_precision_loss)]
        let bucket = BUCKETS.partition_point(|bound| *bound < value as f64);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    #[allow(clippy::cast_precision_loss)]
    fn proto(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| {
                cumulative += count.load(Relaxed);
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(cumulative + self.counts[BUCKETS.len()].load(Relaxed));
        histogram.set_sample_sum(self.sum.load(Relaxed) as f64);
        histogram.set_bucket(buckets);
        histogram
    }
}

/// What a request ended as.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Outcome {
    pub grpc: bool,
    /// The status the caller got; 0 when it got none.
    pub code: u16,
    /// `grpc-status`, for gRPC requests whose response carried one.
    pub grpc_status: Option<u8>,
    pub flags: Flags,
}

/// One request outcome's cells.
#[derive(Default)]
pub struct RequestCells {
    pub count: AtomicU64,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

/// One TCP outcome's cells.
#[derive(Default)]
pub struct TcpCells {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// One interned label set and the cells of each outcome seen under it.
pub struct Series {
    labels: Arc<SeriesLabels>,
    requests: RwLock<Vec<(Outcome, Arc<RequestCells>)>>,
    tcp: RwLock<Vec<(Flags, Arc<TcpCells>)>>,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.labels.fmt(f)
    }
}

impl Series {
    pub fn labels(&self) -> &SeriesLabels {
        &self.labels
    }

    /// Runs `record` on `outcome`'s cells, made the first time it is seen.
    pub fn request(&self, outcome: Outcome, record: impl FnOnce(&RequestCells)) {
        {
            let seen = self.requests.read();
            if let Some((_, cells)) = seen.iter().find(|(o, _)| *o == outcome) {
                return record(cells);
            }
        }
        let cells = {
            let mut seen = self.requests.write();
            match seen.iter().find(|(o, _)| *o == outcome) {
                Some((_, cells)) => cells.clone(),
                None => {
                    let cells = Arc::new(RequestCells::default());
                    seen.push((outcome, cells.clone()));
                    cells
                }
            }
        };
        record(&cells);
    }

    /// The TCP cells of connections that ended with `flags`.
    pub fn tcp(&self, flags: Flags) -> Arc<TcpCells> {
        if let Some((_, cells)) = self.tcp.read().iter().find(|(f, _)| *f == flags) {
            return cells.clone();
        }
        let mut seen = self.tcp.write();
        if let Some((_, cells)) = seen.iter().find(|(f, _)| *f == flags) {
            return cells.clone();
        }
        let cells = Arc::new(TcpCells::default());
        seen.push((flags, cells.clone()));
        cells
    }
}

/// Every series, by its labels.
#[derive(Default)]
pub struct Store {
    series: Mutex<HashMap<Arc<SeriesLabels>, Arc<Series>>>,
}

impl Store {
    /// The series of `labels`, the same one for equal labels however often it is asked for.
    pub fn intern(&self, labels: SeriesLabels) -> Arc<Series> {
        let mut series = self.series.lock();
        if let Some(found) = series.get(&labels) {
            return found.clone();
        }
        let labels = Arc::new(labels);
        let made = Arc::new(Series {
            labels: labels.clone(),
            requests: RwLock::default(),
            tcp: RwLock::default(),
        });
        series.insert(labels, made.clone());
        made
    }

    /// The metric families, as a scrape shows them.
    pub fn families(&self) -> Vec<MetricFamily> {
        let all: Vec<Arc<Series>> = self.series.lock().values().cloned().collect();
        let mut requests = Family::new(
            "istio_requests_total",
            "Requests, by reporter, peers, Service, protocol and outcome",
            MetricType::COUNTER,
        );
        let mut duration = Family::new(
            "istio_request_duration_milliseconds",
            "Time from the request's first byte to the response's last, in milliseconds",
            MetricType::HISTOGRAM,
        );
        let mut request_bytes = Family::new(
            "istio_request_bytes",
            "Request sizes (headers and body), in bytes",
            MetricType::HISTOGRAM,
        );
        let mut response_bytes = Family::new(
            "istio_response_bytes",
            "Response sizes (headers and body), in bytes",
            MetricType::HISTOGRAM,
        );
        let mut opened = Family::new(
            "istio_tcp_connections_opened_total",
            "TCP connections opened",
            MetricType::COUNTER,
        );
        let mut closed = Family::new(
            "istio_tcp_connections_closed_total",
            "TCP connections closed",
            MetricType::COUNTER,
        );
        let mut sent = Family::new(
            "istio_tcp_sent_bytes_total",
            "Bytes sent to the caller on TCP connections",
            MetricType::COUNTER,
        );
        let mut received = Family::new(
            "istio_tcp_received_bytes_total",
            "Bytes received from the caller on TCP connections",
            MetricType::COUNTER,
        );
        for series in &all {
            let base = series.labels.pairs();
            for (outcome, cells) in series.requests.read().iter() {
                let code = outcome.code.to_string();
                let grpc_status = outcome.grpc_status.map(|s| s.to_string());
                let mut labels = label_pairs(&base);
                labels.extend(pairs([
                    (
                        "request_protocol",
                        if outcome.grpc { "grpc" } else { "http" },
                    ),
                    ("response_code", &code),
                    ("grpc_response_status", grpc_status.as_deref().unwrap_or("")),
                    ("response_flags", &outcome.flags.to_string()),
                    (
                        "connection_security_policy",
                        series.labels.security.as_str(),
                    ),
                ]));
                requests.counter(&labels, cells.count.load(Relaxed));
                duration.histogram(&labels, &cells.duration_ms);
                request_bytes.histogram(&labels, &cells.request_bytes);
                response_bytes.histogram(&labels, &cells.response_bytes);
            }
            for (flags, cells) in series.tcp.read().iter() {
                let mut labels = label_pairs(&base);
                labels.extend(pairs([
                    ("request_protocol", "tcp"),
                    ("response_flags", &flags.to_string()),
                    (
                        "connection_security_policy",
                        series.labels.security.as_str(),
                    ),
                ]));
                opened.counter(&labels, cells.opened.load(Relaxed));
                closed.counter(&labels, cells.closed.load(Relaxed));
                sent.counter(&labels, cells.sent.load(Relaxed));
                received.counter(&labels, cells.received.load(Relaxed));
            }
        }
        [
            requests,
            duration,
            request_bytes,
            response_bytes,
            opened,
            closed,
            sent,
            received,
        ]
        .into_iter()
        .map(|family| family.0)
        .collect()
    }
}

fn label_pairs(pairs_in_order: &[(&'static str, &str)]) -> Vec<proto::LabelPair> {
    pairs(pairs_in_order.iter().copied())
}

fn pairs<'a>(pairs: impl IntoIterator<Item = (&'static str, &'a str)>) -> Vec<proto::LabelPair> {
    pairs
        .into_iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(name.to_owned());
            pair.set_value(value.to_owned());
            pair
        })
        .collect()
}

/// A metric family being filled for a scrape.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Self(family)
    }

    #[allow(clippy::cast_precision_loss)]
    fn counter(&mut self, labels: &[proto::LabelPair], value: u64) {
        let mut counter = proto::Counter::default();
        counter.set_value(value as f64);
        let mut metric = proto::Metric::default();
        metric.set_label(labels.to_vec());
        metric.set_counter(counter);
        self.0.mut_metric().push(metric);
    }

    fn histogram(&mut self, labels: &[proto::LabelPair], histogram: &Histogram) {
        let mut metric = proto::Metric::default();
        metric.set_label(labels.to_vec());
        metric.set_histogram(histogram.proto());
        self.0.mut_metric().push(metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        for value in [0, 1, 2, 5, 6, 4_000_000] {
            histogram.observe(value);
        }
        let proto = histogram.proto();
        let cumulative: Vec<u64> = proto
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        // le=0.5 holds 0; le=1 adds 1; le=5 adds 2 and 5; le=10 adds 6; 4,000,000 is above all.
        assert_eq!(&cumulative[..4], &[1, 2, 4, 5]);
        assert_eq!(cumulative[18], 5);
        assert_eq!(proto.get_sample_count(), 6);
        assert_eq!(proto.get_sample_sum(), 4_000_014.0);
    }
}
