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

use remora_api::telemetry::{Metric, Side, TagValue, Telemetry};

use super::{
    flags::Flags,
    labels::{Reporter, SeriesLabels},
};

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

    /// Its counts per bucket (the last: above every bound) and its sum.
    fn read(&self) -> Counts {
        Counts {
            buckets: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A histogram's counts, as a scrape adds them up.
#[derive(Clone, Copy, Default)]
struct Counts {
    buckets: [u64; BUCKETS.len() + 1],
    sum: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }

    #[allow(clippy::cast_precision_loss)]
    fn proto(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += count;
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(cumulative + self.buckets[BUCKETS.len()]);
        histogram.set_sample_sum(self.sum as f64);
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
    /// The request's values for labels overrides take from it: an index into the series'
    /// table ([`Series::tags`]), 0 when none are configured.
    pub tags: u32,
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
    /// Request header values labels were taken from, each set once ([`Outcome::tags`] is its
    /// index plus one).
    tag_values: RwLock<Vec<TagValues>>,
}

/// Request header values, by header name.
type TagValues = Vec<(String, Option<String>)>;

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

    /// The id of request header `values` (for [`Outcome::tags`]), the same for equal values.
    pub fn tags(&self, values: TagValues) -> u32 {
        let find = |known: &[TagValues]| {
            known
                .iter()
                .position(|v| *v == values)
                .map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX))
        };
        if let Some(id) = find(&self.tag_values.read()) {
            return id;
        }
        let mut known = self.tag_values.write();
        if let Some(id) = find(&known) {
            return id;
        }
        known.push(values);
        u32::try_from(known.len()).unwrap_or(u32::MAX)
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
            tag_values: RwLock::default(),
        });
        series.insert(labels, made.clone());
        made
    }

    /// The metric families, as a scrape shows them with `telemetry`'s overrides applied.
    pub fn families(&self, telemetry: &Telemetry) -> Vec<MetricFamily> {
        let all: Vec<Arc<Series>> = self.series.lock().values().cloned().collect();
        let mut families: Vec<Family> = Metric::ALL.into_iter().map(Family::of).collect();
        for series in &all {
            let side = match series.labels.reporter {
                Reporter::Source => &telemetry.client,
                Reporter::Destination => &telemetry.server,
            };
            let base = series.labels.pairs();
            let security = series.labels.security.as_str();
            let tag_values = series.tag_values.read();
            for (outcome, cells) in series.requests.read().iter() {
                let code = outcome.code.to_string();
                let grpc_status = outcome.grpc_status.map(|s| s.to_string());
                let flags = outcome.flags.to_string();
                let mut labels = base.to_vec();
                labels.extend([
                    (
                        "request_protocol",
                        if outcome.grpc { "grpc" } else { "http" },
                    ),
                    ("response_code", &code),
                    ("grpc_response_status", grpc_status.as_deref().unwrap_or("")),
                    ("response_flags", &flags),
                    ("connection_security_policy", security),
                ]);
                let values = (outcome.tags as usize)
                    .checked_sub(1)
                    .and_then(|i| tag_values.get(i));
                for family in &mut families {
                    let Some(labels) = overridden(side, family.metric, &labels, values) else {
                        continue;
                    };
                    match family.metric {
                        Metric::RequestsTotal => family.counter(labels, cells.count.load(Relaxed)),
                        Metric::RequestDuration => family.histogram(labels, &cells.duration_ms),
                        Metric::RequestBytes => family.histogram(labels, &cells.request_bytes),
                        Metric::ResponseBytes => family.histogram(labels, &cells.response_bytes),
                        _ => {}
                    }
                }
            }
            for (flags, cells) in series.tcp.read().iter() {
                let flags = flags.to_string();
                let mut labels = base.to_vec();
                labels.extend([
                    ("request_protocol", "tcp"),
                    ("response_flags", &flags),
                    ("connection_security_policy", security),
                ]);
                for family in &mut families {
                    let Some(labels) = overridden(side, family.metric, &labels, None) else {
                        continue;
                    };
                    let value = match family.metric {
                        Metric::TcpOpened => &cells.opened,
                        Metric::TcpClosed => &cells.closed,
                        Metric::TcpSentBytes => &cells.sent,
                        Metric::TcpReceivedBytes => &cells.received,
                        _ => continue,
                    };
                    family.counter(labels, value.load(Relaxed));
                }
            }
        }
        families
            .into_iter()
            .filter(|family| !family.samples.is_empty())
            .map(Family::into_proto)
            .collect()
    }
}

/// `labels` of a sample of `metric` as `side`'s overrides leave them (`values`: the request's
/// header values for labels taken from it); `None` when the metric is disabled there.
fn overridden(
    side: &Side,
    metric: Metric,
    labels: &[(&'static str, &str)],
    values: Option<&TagValues>,
) -> Option<Labels> {
    if !side.metrics {
        return None;
    }
    let Some(policy) = side.metric(metric) else {
        return Some(pairs(labels.iter().copied()));
    };
    if policy.disabled {
        return None;
    }
    let kept = labels.iter().filter(|(name, _)| {
        !policy.remove.iter().any(|r| r == name) && !policy.tags.iter().any(|(t, _)| t == name)
    });
    let mut out = pairs(kept.copied());
    for (name, value) in &policy.tags {
        let text = match value {
            TagValue::Literal(text) => text.as_str(),
            TagValue::RequestHeader { name, fallback } => values
                .and_then(|values| values.iter().find(|(n, _)| n == name))
                .and_then(|(_, value)| value.as_deref())
                .unwrap_or(fallback),
        };
        out.push((name.clone(), text.to_owned()));
    }
    Some(out)
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

fn pairs<'a>(pairs: impl IntoIterator<Item = (&'static str, &'a str)>) -> Labels {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// A metric family being filled for a scrape. Samples whose labels come out the same (an
/// override removed or fixed what told them apart) are added up into one, as Prometheus
/// allows one sample per label set.
struct Family {
    metric: Metric,
    samples: Vec<(Labels, Sample)>,
    index: HashMap<Labels, usize>,
}

enum Sample {
    Counter(u64),
    Histogram(Counts),
}

impl Family {
    fn of(metric: Metric) -> Self {
        Self {
            metric,
            samples: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn add(&mut self, labels: Labels, sample: Sample) {
        match self.index.get(&labels) {
            Some(&i) => match (&mut self.samples[i].1, sample) {
                (Sample::Counter(total), Sample::Counter(value)) => *total += value,
                (Sample::Histogram(total), Sample::Histogram(counts)) => total.add(counts),
                _ => {}
            },
            None => {
                self.index.insert(labels.clone(), self.samples.len());
                self.samples.push((labels, sample));
            }
        }
    }

    fn counter(&mut self, labels: Labels, value: u64) {
        self.add(labels, Sample::Counter(value));
    }

    fn histogram(&mut self, labels: Labels, histogram: &Histogram) {
        self.add(labels, Sample::Histogram(histogram.read()));
    }

    #[allow(clippy::cast_precision_loss)]
    fn into_proto(self) -> MetricFamily {
        let (help, kind) = match self.metric {
            Metric::RequestsTotal => (
                "Requests, by reporter, peers, Service, protocol and outcome",
                MetricType::COUNTER,
            ),
            Metric::RequestDuration => (
                "Time from the request's first byte to the response's last, in milliseconds",
                MetricType::HISTOGRAM,
            ),
            Metric::RequestBytes => (
                "Request sizes (headers and body), in bytes",
                MetricType::HISTOGRAM,
            ),
            Metric::ResponseBytes => (
                "Response sizes (headers and body), in bytes",
                MetricType::HISTOGRAM,
            ),
            Metric::TcpOpened => ("TCP connections opened", MetricType::COUNTER),
            Metric::TcpClosed => ("TCP connections closed", MetricType::COUNTER),
            Metric::TcpSentBytes => (
                "Bytes sent to the caller on TCP connections",
                MetricType::COUNTER,
            ),
            Metric::TcpReceivedBytes => (
                "Bytes received from the caller on TCP connections",
                MetricType::COUNTER,
            ),
        };
        let mut family = MetricFamily::default();
        family.set_name(format!("istio_{}", self.metric.name()));
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        for (labels, sample) in self.samples {
            let mut metric = proto::Metric::default();
            metric.set_label(
                labels
                    .into_iter()
                    .map(|(name, value)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(name);
                        pair.set_value(value);
                        pair
                    })
                    .collect(),
            );
            match sample {
                Sample::Counter(value) => {
                    let mut counter = proto::Counter::default();
                    counter.set_value(value as f64);
                    metric.set_counter(counter);
                }
                Sample::Histogram(counts) => metric.set_histogram(counts.proto()),
            }
            family.mut_metric().push(metric);
        }
        family
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
        let proto = histogram.read().proto();
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
