//! Spans leave the request path through a bounded queue: a request that ends hands its span
//! over without waiting (a full queue drops it and counts the drop), and one task per
//! collector sends them in batches, each export given a time limit. A slow or dead collector
//! therefore costs traffic nothing but the spans it loses, and those are counted
//! (`remora_tracing_spans_dropped_total`).

use std::{future::Future, pin::Pin, time::Duration};

use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus::IntCounter;
use tokio::sync::mpsc;

/// Spans waiting for export, at most.
pub const QUEUE: usize = 2048;
/// Spans sent in one export, at most.
pub const BATCH: usize = 512;
/// How long a batch waits to fill once its first span is in.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Sends a batch of spans to a collector.
pub trait Sink: Send + 'static {
    fn export(
        &mut self,
        batch: Vec<SpanData>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// An OpenTelemetry SDK exporter (OTLP over gRPC or HTTP, Zipkin) as a [`Sink`].
pub struct Sdk<E>(pub E);

impl<E: SpanExporter + 'static> Sink for Sdk<E> {
    fn export(
        &mut self,
        batch: Vec<SpanData>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.export(batch).await.map_err(|e| e.to_string()) })
    }
}

/// What export counts.
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    /// The queue was full when a span ended.
    pub queue_full: IntCounter,
    /// Its batch's export failed or ran out of time.
    pub export_failed: IntCounter,
}

/// The request path's end of one collector's queue.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<SpanData>,
    counters: Counters,
}

impl Exporter {
    /// Starts the task that sends what the queue receives to `sink`, each export given
    /// `timeout`; it ends when every handle on the queue is gone.
    pub fn spawn(sink: impl Sink, timeout: Duration, counters: Counters) -> Self {
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(run(spans, sink, timeout, counters.clone()));
        Self { queue, counters }
    }

    /// Hands `span` to the export task, or drops it (counted) if the queue is full.
    pub fn send(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.counters.queue_full.inc();
        }
    }
}

async fn run(
    mut spans: mpsc::Receiver<SpanData>,
    mut sink: impl Sink,
    timeout: Duration,
    counters: Counters,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if spans.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, spans.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let count = batch.len() as u64;
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        match tokio::time::timeout(timeout, sink.export(sent)).await {
            Ok(Ok(())) => counters.exported.inc_by(count),
            Ok(Err(error)) => {
                tracing::debug!(%error, spans = count, "span export failed");
                counters.export_failed.inc_by(count);
            }
            Err(_) => {
                tracing::debug!(spans = count, "span export timed out");
                counters.export_failed.inc_by(count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        borrow::Cow,
        sync::{Arc, Mutex},
        time::SystemTime,
    };

    use opentelemetry::{
        trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
        InstrumentationScope,
    };

    use super::*;

    fn span(n: u64) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes((n + 1).to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("test"),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }

    fn counters() -> Counters {
        let counter = |name: &str| IntCounter::new(name, name).expect("counter");
        Counters {
            exported: counter("exported"),
            queue_full: counter("queue_full"),
            export_failed: counter("export_failed"),
        }
    }

    /// Records batch sizes; with `hang`, never answers.
    struct Recorded {
        batches: Arc<Mutex<Vec<usize>>>,
        hang: bool,
    }

    impl Sink for Recorded {
        fn export(
            &mut self,
            batch: Vec<SpanData>,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            if let Ok(mut batches) = self.batches.lock() {
                batches.push(batch.len());
            }
            let hang = self.hang;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        }
    }

    fn sink(hang: bool) -> (Recorded, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        (
            Recorded {
                batches: batches.clone(),
                hang,
            },
            batches,
        )
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spans_wait_for_their_batch_then_go_together() {
        let (sink, batches) = sink(false);
        let counters = counters();
        let exporter = Exporter::spawn(sink, Duration::from_secs(3), counters.clone());
        for n in 0..3 {
            exporter.send(span(n));
        }
        settle().await;
        assert!(batches.lock().expect("lock").is_empty(), "waits for more");
        tokio::time::advance(BATCH_DELAY).await;
        settle().await;
        assert_eq!(*batches.lock().expect("lock"), [3]);
        assert_eq!(counters.exported.get(), 3);
        // A full batch does not wait.
        for n in 0..BATCH as u64 {
            exporter.send(span(n));
        }
        settle().await;
        assert_eq!(*batches.lock().expect("lock"), [3, BATCH]);
        assert_eq!(counters.queue_full.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_collector_costs_spans_not_time() {
        let (sink, batches) = sink(true);
        let counters = counters();
        let timeout = Duration::from_secs(3);
        let exporter = Exporter::spawn(sink, timeout, counters.clone());
        // One batch goes to the collector, which never answers; the queue fills behind it.
        for n in 0..BATCH as u64 {
            exporter.send(span(n));
        }
        settle().await;
        assert_eq!(*batches.lock().expect("lock"), [BATCH]);
        let extra = 100;
        for n in 0..(QUEUE + extra) as u64 {
            exporter.send(span(n));
        }
        assert_eq!(
            counters.queue_full.get(),
            extra as u64,
            "sending never waits"
        );
        // The export's time runs out: its batch is counted lost, and the next one goes.
        tokio::time::advance(timeout).await;
        settle().await;
        assert_eq!(counters.export_failed.get(), BATCH as u64);
        assert_eq!(*batches.lock().expect("lock"), [BATCH, BATCH]);
        assert_eq!(counters.exported.get(), 0);
    }
}
