//! Access logs, off unless the mesh config (`accessLogFile`) or the Telemetry API turns them
//! on for a side: one line per request or TCP connection in Istio's default format (or the
//! provider's or `accessLogFormat`, or JSON), for the entries the side's `filter` keeps,
//! written to the file or the sidecar's stdout by a thread of their own. The request path only fills an [`Entry`]
//! (the headers the format reads, the addresses, the outcome) and hands it over without
//! waiting: rendering and writing happen on the writer thread, and when it falls behind
//! entries are dropped and counted (`remora_access_log_dropped_total`), never queued without
//! bound or waited for.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        mpsc::{self, SyncSender, TrySendError},
        Arc,
    },
    time::SystemTime,
};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use prometheus::IntCounter;
use remora_api::{
    access_log::{Fields, Format, Side, Value},
    telemetry::{AccessLog, Filter, Telemetry},
};

use crate::metrics::flags::Flags;

/// Entries waiting for the writer; beyond this, new ones are dropped.
const QUEUE: usize = 4096;

/// The access logs in use on each side, following the config.
pub struct AccessLogs {
    client: ArcSwapOption<Log>,
    server: ArcSwapOption<Log>,
    dropped: IntCounter,
}

/// A side's access log: where lines go, and which entries make one.
#[derive(Clone)]
pub struct Log {
    pub logger: Arc<Logger>,
    pub filter: Filter,
}

impl AccessLogs {
    pub fn new(dropped: IntCounter) -> Self {
        Self {
            client: ArcSwapOption::empty(),
            server: ArcSwapOption::empty(),
            dropped,
        }
    }

    /// The log of connections `side` accepts now; `None` when that side logs nothing.
    pub fn current(&self, side: Direction) -> Option<Log> {
        let log = match side {
            Direction::Client => self.client.load(),
            Direction::Server => self.server.load(),
        };
        log.as_deref().cloned()
    }

    /// Puts `telemetry`'s logs in use: a logger (and its writer) is kept while its file and
    /// format stay, shared by both sides when they log alike.
    pub fn update(&self, telemetry: &Telemetry) {
        let mut open: Vec<Arc<Logger>> = [self.client.load_full(), self.server.load_full()]
            .into_iter()
            .flatten()
            .map(|log| log.logger.clone())
            .collect();
        for (slot, wanted) in [
            (&self.client, &telemetry.client.access_log),
            (&self.server, &telemetry.server.access_log),
        ] {
            let log = wanted.as_ref().and_then(|wanted| {
                let logger = match open.iter().find(|l| l.writes_as(wanted)) {
                    Some(logger) => logger.clone(),
                    None => {
                        let logger = Arc::new(Logger::open(wanted, &self.dropped)?);
                        open.push(logger.clone());
                        logger
                    }
                };
                Some(Arc::new(Log {
                    logger,
                    filter: wanted.filter.clone(),
                }))
            });
            slot.store(log);
        }
    }
}

/// Which side of the sidecar a connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The app's outbound connections.
    Client,
    /// Inbound connections to the app.
    Server,
}

/// One access log: its format, the headers entries keep for it, and its writer.
pub struct Logger {
    path: String,
    format: Format,
    request_headers: Vec<Header>,
    response_headers: Vec<Header>,
    writer: SyncSender<Entry>,
    dropped: IntCounter,
    /// The writer, which ends (detached) once every sender is gone.
    #[cfg(test)]
    thread: std::thread::JoinHandle<()>,
}

/// A header a format reads: a real one, or one of the request's own (`:method`, ...).
#[derive(Clone, Debug)]
enum Header {
    Named(HeaderName),
    Method,
    Path,
    Authority,
}

impl Header {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            ":method" => Header::Method,
            ":path" => Header::Path,
            ":authority" => Header::Authority,
            name => Header::Named(HeaderName::from_bytes(name.as_bytes()).ok()?),
        })
    }

    fn name(&self) -> &str {
        match self {
            Header::Named(name) => name.as_str(),
            Header::Method => ":method",
            Header::Path => ":path",
            Header::Authority => ":authority",
        }
    }
}

impl Logger {
    /// Whether it writes what `log` asks for (same file, same format).
    fn writes_as(&self, log: &AccessLog) -> bool {
        self.path == log.path && self.format == log.format
    }

    /// Opens `settings.path` (appending) and starts its writer; `None`, logged, if it cannot
    /// be opened.
    fn open(settings: &AccessLog, dropped: &IntCounter) -> Option<Self> {
        let out: Box<dyn Write + Send> = if settings.path == "/dev/stdout" {
            Box::new(std::io::stdout())
        } else {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&settings.path)
            {
                Ok(file) => Box::new(file),
                Err(error) => {
                    tracing::error!(path = settings.path, %error, "cannot open the access log");
                    return None;
                }
            }
        };
        let (writer, entries) = mpsc::sync_channel(QUEUE);
        let format = settings.format.clone();
        let headers = |names: Vec<String>| -> Vec<Header> {
            names.iter().filter_map(|n| Header::of(n)).collect()
        };
        let request_headers = headers(format.request_headers());
        let response_headers = headers(format.response_headers());
        let names = (
            request_headers
                .iter()
                .map(|h| h.name().to_owned())
                .collect(),
            response_headers
                .iter()
                .map(|h| h.name().to_owned())
                .collect(),
        );
        let spawned = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_entries(&format, &names, &entries, out));
        #[cfg_attr(not(test), allow(unused_variables))]
        let thread = match spawned {
            Ok(thread) => thread,
            Err(error) => {
                tracing::error!(%error, "cannot start the access log writer");
                return None;
            }
        };
        Some(Self {
            path: settings.path.clone(),
            format: settings.format.clone(),
            request_headers,
            response_headers,
            writer,
            dropped: dropped.clone(),
            #[cfg(test)]
            thread,
        })
    }

    /// An entry for a request whose head just arrived, between `downstream` addresses.
    pub fn request<B>(&self, req: &Request<B>, downstream: &Downstream) -> Entry {
        let request = self
            .request_headers
            .iter()
            .map(|header| match header {
                Header::Named(name) => req.headers().get(name).cloned(),
                Header::Method => HeaderValue::from_str(req.method().as_str()).ok(),
                Header::Path => req
                    .uri()
                    .path_and_query()
                    .and_then(|pq| HeaderValue::from_str(pq.as_str()).ok()),
                Header::Authority => req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    .or_else(|| req.headers().get(http::header::HOST).cloned()),
            })
            .collect();
        Entry {
            start: Some(SystemTime::now()),
            // Through the tunnel, the version the calling app spoke.
            protocol: Some(
                match crate::tunnel::orig_proto(req.headers()).unwrap_or(req.version()) {
                    http::Version::HTTP_10 => "HTTP/1.0",
                    http::Version::HTTP_2 => "HTTP/2",
                    _ => "HTTP/1.1",
                },
            ),
            request,
            downstream: downstream.clone(),
            ..Entry::default()
        }
    }

    /// An entry for a TCP connection opened now.
    pub fn connection(&self, downstream: &Downstream) -> Entry {
        Entry {
            start: Some(SystemTime::now()),
            request: vec![None; self.request_headers.len()],
            downstream: downstream.clone(),
            ..Entry::default()
        }
    }

    /// Keeps the response headers the format reads.
    pub fn response(&self, entry: &mut Entry, headers: &HeaderMap) {
        entry.response = self
            .response_headers
            .iter()
            .map(|header| match header {
                Header::Named(name) => headers.get(name).cloned(),
                _ => None,
            })
            .collect();
    }

    /// Hands `entry` to the writer, or drops it if the writer is behind.
    pub fn log(&self, entry: Entry) {
        match self.writer.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// Renders and writes entries until every sender is gone, flushing whenever it has caught up.
fn write_entries(
    format: &Format,
    names: &(Vec<String>, Vec<String>),
    entries: &mpsc::Receiver<Entry>,
    out: Box<dyn Write + Send>,
) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(entry) = entries.recv() {
        let mut next = Some(entry);
        while let Some(entry) = next {
            let line = format.render(&Rendered {
                entry: &entry,
                names,
            });
            if let Err(error) = out.write_all(line.as_bytes()) {
                tracing::warn!(%error, "writing the access log");
            }
            next = entries.try_recv().ok();
        }
        if let Err(error) = out.flush() {
            tracing::warn!(%error, "writing the access log");
        }
    }
}

/// The connection a request came in on: its two ends, and the server name its TLS asked for.
#[derive(Clone, Debug, Default)]
pub struct Downstream {
    /// Where the caller connected to (the original destination).
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub server_name: Option<Arc<str>>,
}

/// What one log line says, filled as the request goes.
#[derive(Debug, Default)]
pub struct Entry {
    start: Option<SystemTime>,
    protocol: Option<&'static str>,
    pub code: u16,
    pub flags: Flags,
    pub details: Option<&'static str>,
    pub received: u64,
    pub sent: u64,
    pub duration_ms: u64,
    request: Vec<Option<HeaderValue>>,
    response: Vec<Option<HeaderValue>>,
    downstream: Downstream,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub route: Option<String>,
}

/// An entry as its format reads it, on the writer thread.
struct Rendered<'a> {
    entry: &'a Entry,
    names: &'a (Vec<String>, Vec<String>),
}

impl Fields for Rendered<'_> {
    fn value(&self, value: Value) -> Option<String> {
        let e = self.entry;
        match value {
            Value::StartTime => e
                .start
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            Value::Protocol => e.protocol.map(str::to_owned),
            Value::ResponseCode => Some(e.code.to_string()),
            Value::ResponseFlags => Some(e.flags.to_string()),
            Value::ResponseCodeDetails => e.details.map(str::to_owned),
            Value::ConnectionTerminationDetails | Value::UpstreamTransportFailureReason => None,
            Value::UpstreamLocalAddress => None,
            Value::BytesReceived => Some(e.received.to_string()),
            Value::BytesSent => Some(e.sent.to_string()),
            Value::Duration => Some(e.duration_ms.to_string()),
            Value::UpstreamHost => e.upstream_host.map(|a| a.to_string()),
            Value::UpstreamCluster => e.upstream_cluster.as_deref().map(str::to_owned),
            Value::DownstreamLocalAddress => e.downstream.local.map(|a| a.to_string()),
            Value::DownstreamRemoteAddress => e.downstream.remote.map(|a| a.to_string()),
            Value::DownstreamRemoteAddressWithoutPort => {
                e.downstream.remote.map(|a| a.ip().to_string())
            }
            Value::RequestedServerName => e.downstream.server_name.as_deref().map(str::to_owned),
            Value::RouteName => e.route.clone(),
        }
    }

    fn header(&self, side: Side, name: &str) -> Option<&str> {
        let (names, values) = match side {
            Side::Request => (&self.names.0, &self.entry.request),
            Side::Response => (&self.names.1, &self.entry.response),
        };
        let index = names.iter().position(|n| n == name)?;
        values.get(index)?.as_ref()?.to_str().ok()
    }
}

#[cfg(test)]
mod tests {
    use http::{Response, StatusCode};
    use remora_api::access_log::Format;

    use super::*;

    fn logger(path: &std::path::Path, format: Format) -> Logger {
        let settings = AccessLog {
            path: path.display().to_string(),
            format,
            filter: Filter::default(),
        };
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        Logger::open(&settings, &dropped).expect("opens")
    }

    #[test]
    fn entries_are_written_off_the_request_path_in_the_format() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("access.log");
        let log = logger(
            &path,
            Format::text("%REQ(:METHOD)% %REQ(:PATH)% %REQ(USER-AGENT)% %RESPONSE_CODE% %RESP(SERVER)% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS%").expect("format"),
        );
        let req = Request::get("http://httpbin.demo:8000/ip?x=1")
            .header("user-agent", "curl/8")
            .body(())
            .expect("request");
        let downstream = Downstream {
            local: None,
            remote: Some("198.18.0.10:40000".parse().expect("addr")),
            server_name: None,
        };
        let mut entry = log.request(&req, &downstream);
        let response = Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header("server", "gunicorn")
            .body(())
            .expect("response");
        log.response(&mut entry, response.headers());
        entry.code = 418;
        entry.upstream_host = Some("198.18.0.11:8080".parse().expect("addr"));
        log.log(entry);
        log.log(log.connection(&Downstream::default()));
        // Closing the logger lets the writer finish what it was handed.
        let Logger { writer, thread, .. } = log;
        drop(writer);
        thread.join().expect("the writer");
        let text = std::fs::read_to_string(&path).expect("written");
        assert_eq!(
            text,
            "GET /ip?x=1 curl/8 418 gunicorn 198.18.0.11:8080 198.18.0.10:40000\n\
             - - - 0 - - -\n"
        );
    }

    #[test]
    fn a_writer_that_cannot_keep_up_costs_lines_never_waits() {
        // A log whose reader never reads: the writer blocks once the pipe is full.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("stalled.log");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let (done, finish) = mpsc::channel::<()>();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let _held = std::fs::File::open(&path).expect("the reading end");
                let _ = finish.recv();
            })
        };
        let settings = AccessLog {
            path: path.display().to_string(),
            format: Format::text("%REQ(USER-AGENT)%").expect("format"),
            filter: Filter::default(),
        };
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        let log = Logger::open(&settings, &dropped).expect("opens");
        let req = Request::get("/")
            .header("user-agent", "x".repeat(1024))
            .body(())
            .expect("request");
        // Far more than the pipe holds plus the queue: every call returns at once, and what
        // does not fit is counted.
        let sent = QUEUE * 3;
        for _ in 0..sent {
            log.log(log.request(&req, &Downstream::default()));
        }
        let lost = dropped.get();
        assert!(
            lost >= (sent - QUEUE - 128) as u64 && lost < sent as u64,
            "{lost} of {sent} dropped"
        );
        // The reader goes away: the writer's writes fail, it drains the queue and ends.
        drop(done);
        reader.join().expect("reader");
        let Logger { writer, thread, .. } = log;
        drop(writer);
        thread.join().expect("the writer ends");
    }

    #[test]
    fn a_log_that_cannot_be_opened_is_off() {
        let settings = AccessLog {
            path: "/nonexistent-dir/access.log".to_owned(),
            format: Format::istio(false).expect("default"),
            filter: Filter::default(),
        };
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        assert!(Logger::open(&settings, &dropped).is_none());
    }
}
