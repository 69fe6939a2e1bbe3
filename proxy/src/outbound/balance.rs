//! Choosing a backend's endpoint per request. The state lives here, in the proxy, not in the
//! snapshot: a balancer per backend in use (a Service port, or a DestinationRule subset of
//! one), kept across snapshots, handed the new endpoints on each config push (an endpoint that
//! stays keeps its latency estimate, load and ejection), and forgotten when nothing holds it.
//! The way to each endpoint (its tunnel channel) is built per push, so a request only chooses.
//!
//! The default is what Linkerd does: power of two choices, comparing a peak-EWMA latency
//! estimate weighted by the requests in flight. `DestinationRule` `loadBalancer.simple` picks
//! round robin, least request (two choices over requests in flight, as Envoy does) or random
//! instead. tower's `p2c::Balance` needs exclusive access to the balancer for each request
//! (Linkerd puts a buffer task in front of it); here every app connection chooses from the
//! shared state concurrently, so the same algorithm is written over atomics and short locks.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use remora_api::{
    route::{Attempt, BackendKey, DestinationPolicy, LoadBalancer, PoolLimits, TlsMode},
    Endpoint, ServiceKey, Snapshot,
};
use tokio::{sync::Notify, time::Instant};
use tower::retry::budget::TpsBudget;

use crate::{
    config::Config,
    metrics::{Metrics, RequestRecord, Series},
    trace,
    tunnel::{PeerChannel, TunnelClient},
};

use super::{dns::Dns, originate::Originator};

/// One endpoint, ready to send to, and what the balancer knows about it.
pub struct Upstream {
    pub endpoint: Endpoint,
    pub way: Way,
    load: Load,
    /// The Service port it is an endpoint of, if any.
    service: Option<ServiceKey>,
    /// The access log's name for its backend (`outbound|<port>|<subset>|<host>`), if any.
    pub cluster: Option<Arc<str>>,
    /// What requests it answers are counted under, resolved on first use.
    series: OnceLock<Arc<Series>>,
}

/// How an endpoint is reached.
pub enum Way {
    /// Through its sidecar, for an endpoint in the mesh.
    Mesh(PeerChannel),
    /// Directly, in the clear.
    Direct,
    /// Directly, over TLS the sidecar originates (DestinationRule `SIMPLE`/`MUTUAL`).
    Originate(Arc<Originator>),
}

impl Upstream {
    /// `endpoint`, through its sidecar's tunnel when it has one and `tls` is mesh mTLS, over
    /// `originator` when `tls` originates TLS, else directly.
    pub fn new(
        tunnel: &TunnelClient,
        endpoint: Endpoint,
        backend: Option<&BackendKey>,
        policy: &DestinationPolicy,
        originator: Option<&Arc<Originator>>,
    ) -> Self {
        let way = match (&policy.tls, originator, &endpoint.identity) {
            (TlsMode::Originate(_), Some(originator), _) => Way::Originate(originator.clone()),
            (TlsMode::IstioMutual, _, Some(identity)) => Way::Mesh(tunnel.channel(
                endpoint.address,
                identity.clone(),
                policy.pool.max_requests_per_connection.unwrap_or(0),
            )),
            _ => Way::Direct,
        };
        Self {
            endpoint,
            way,
            load: Load::default(),
            service: backend.map(|key| key.service.clone()),
            cluster: backend.map(|key| {
                Arc::from(format!(
                    "outbound|{}|{}|{}",
                    key.service.port,
                    key.subset.as_deref().unwrap_or(""),
                    key.service.hostname
                ))
            }),
            series: OnceLock::new(),
        }
    }

    /// Where a try to it goes, as its span names it.
    pub fn to(&self) -> trace::To<'_> {
        trace::To {
            address: self.endpoint.address,
            identity: self.endpoint.identity.as_ref(),
            cluster: self.cluster.as_ref(),
            service: self.service.as_ref().map(|key| (&key.hostname, key.port)),
        }
    }

    /// Tells `record` that this endpoint answers.
    pub fn answers(&self, record: &RequestRecord, metrics: &Metrics, config: &Config) {
        record.counted_as(self.series(metrics, config));
        record.upstream(self.endpoint.address, self.cluster.as_ref());
    }

    /// What the requests and connections it takes are counted under.
    pub fn series(&self, metrics: &Metrics, config: &Config) -> &Arc<Series> {
        self.series.get_or_init(|| {
            let host = self.service.as_ref().map(|key| &*key.hostname);
            let mesh_tls = matches!(self.way, Way::Mesh(_));
            metrics.outbound(&config.load(), host, &self.endpoint, mesh_tls)
        })
    }

    /// Whether it is reached as [`Upstream::new`] would reach it under `policy` and
    /// `originator`.
    fn reached_as(&self, policy: &DestinationPolicy, originator: Option<&Arc<Originator>>) -> bool {
        match (&self.way, &policy.tls, originator) {
            (Way::Mesh(channel), TlsMode::IstioMutual, _) => {
                channel.max_requests() == policy.pool.max_requests_per_connection.unwrap_or(0)
            }
            (Way::Originate(mine), TlsMode::Originate(_), Some(theirs)) => {
                Arc::ptr_eq(mine, theirs)
            }
            (Way::Direct, TlsMode::Disable, _) => true,
            (Way::Direct, TlsMode::IstioMutual, _) => self.endpoint.identity.is_none(),
            _ => false,
        }
    }

    /// Counts a request in flight until the returned guard is dropped; with `timed`, its
    /// latency then feeds the estimate.
    pub fn start(self: &Arc<Self>, timed: bool) -> InFlight {
        self.load.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            upstream: self.clone(),
            started: timed.then(Instant::now),
        }
    }

    /// Whether outlier detection keeps it out of the rotation at `now`.
    fn ejected(&self, now: Instant) -> bool {
        let until = self.load.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.load.micros(now) < until
    }
}

/// The address an app connection was sent to, as the endpoint of backends balanced
/// `PASSTHROUGH`: reached directly, in the clear (kube-proxy, or whatever owns the address,
/// forwards it), built on first use and kept for the connection's life.
pub struct Original {
    address: SocketAddr,
    upstream: OnceLock<Arc<Upstream>>,
}

impl Original {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            upstream: OnceLock::new(),
        }
    }

    fn upstream(&self) -> Arc<Upstream> {
        self.upstream
            .get_or_init(|| {
                Arc::new(Upstream {
                    endpoint: Endpoint {
                        address: self.address,
                        identity: None,
                        workload: None,
                    },
                    way: Way::Direct,
                    load: Load::default(),
                    service: None,
                    cluster: None,
                    series: OnceLock::new(),
                })
            })
            .clone()
    }
}

/// Requests in flight, the peak-EWMA latency estimate, and the outlier state of one endpoint.
struct Load {
    pending: AtomicUsize,
    estimate: Mutex<Estimate>,
    /// Consecutive 5xx answers (failures to connect count as 503), for outlier detection.
    errors_5xx: AtomicUsize,
    /// Consecutive 502, 503 and 504 answers (and failures to connect).
    errors_gateway: AtomicUsize,
    /// Ejected until this many µs after `origin` (0: not ejected).
    ejected_until: AtomicU64,
    /// How many times it was ejected: each ejection lasts that many base ejection times.
    ejections: AtomicU64,
    origin: Instant,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            pending: AtomicUsize::new(0),
            estimate: Mutex::default(),
            errors_5xx: AtomicUsize::new(0),
            errors_gateway: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Load {
    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64
    }
}

/// Envoy's longest ejection (`max_ejection_time`), however often an endpoint was ejected.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Linkerd's defaults: an endpoint never heard from is assumed to answer in 30 ms, and the
/// estimate forgets over 10 s.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DECAY: Duration = Duration::from_secs(10);

struct Estimate {
    /// Nanoseconds.
    rtt: f64,
    updated: Option<Instant>,
}

impl Default for Estimate {
    fn default() -> Self {
        Self {
            rtt: DEFAULT_RTT.as_nanos() as f64,
            updated: None,
        }
    }
}

impl Estimate {
    /// A new sample: a slower answer is taken at once (the peak), a faster one decays in.
    fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.rtt {
            self.rtt = rtt;
        } else {
            let elapsed = self
                .updated
                .map_or(DECAY, |at| now.saturating_duration_since(at));
            let weight = (-(elapsed.as_nanos() as f64) / DECAY.as_nanos() as f64).exp();
            self.rtt = self.rtt * weight + rtt * (1.0 - weight);
        }
        self.updated = Some(now);
    }
}

/// A request in flight on an upstream.
pub struct InFlight {
    upstream: Arc<Upstream>,
    /// When it started, if its latency is to be measured.
    started: Option<Instant>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let load = &self.upstream.load;
        load.pending.fetch_sub(1, Ordering::Relaxed);
        if let Some(started) = self.started {
            let now = Instant::now();
            load.estimate.lock().observe(now - started, now);
        }
    }
}

/// One backend's ready endpoints, its DestinationRule policy, and what is in flight.
pub struct Balancer {
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    policy: ArcSwap<DestinationPolicy>,
    next: AtomicUsize,
    /// Requests in flight and waiting, and retries in flight, for `connectionPool` limits.
    active: AtomicUsize,
    waiting: AtomicUsize,
    retries: AtomicUsize,
    freed: Notify,
    /// Retries may add 20% to the backend's requests, plus 10 a second (Linkerd's budget).
    pub budget: TpsBudget,
}

/// Why a request could not have an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoUpstream {
    /// The backend has no endpoint.
    Empty,
    /// The connection pool is full and so is its queue (Envoy's `UO`).
    Overflow,
}

impl Balancer {
    fn new(upstreams: Vec<Arc<Upstream>>, policy: DestinationPolicy) -> Self {
        Self {
            upstreams: ArcSwap::from_pointee(upstreams),
            policy: ArcSwap::from_pointee(policy),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            freed: Notify::new(),
            budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
        }
    }

    pub fn policy(&self) -> Arc<DestinationPolicy> {
        self.policy.load_full()
    }

    /// A place in the backend's connection pool for one request: at once while fewer than
    /// the limit are in flight, after waiting in a queue of `http1MaxPendingRequests`
    /// otherwise, and refused when the queue is full too.
    pub async fn admit(self: &Arc<Self>, limits: &PoolLimits) -> Result<Admitted, NoUpstream> {
        let Some(limit) = [limits.max_connections, limits.max_requests]
            .into_iter()
            .flatten()
            .min()
        else {
            return Ok(Admitted(None));
        };
        let limit = limit as usize;
        loop {
            let freed = self.freed.notified();
            let active = self.active.load(Ordering::Acquire);
            if active < limit {
                if self
                    .active
                    .compare_exchange(active, active + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Admitted(Some(self.clone())));
                }
                continue;
            }
            let queue = limits.max_pending.map_or(usize::MAX, |q| q as usize);
            if self.waiting.fetch_add(1, Ordering::AcqRel) >= queue {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(NoUpstream::Overflow);
            }
            freed.await;
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether one more retry may be in flight (`maxRetries`); the guard gives it back.
    pub fn retry_slot(self: &Arc<Self>, limits: &PoolLimits) -> Option<RetrySlot> {
        let max = limits.max_retries.map_or(usize::MAX, |m| m as usize);
        if self.retries.fetch_add(1, Ordering::AcqRel) >= max {
            self.retries.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RetrySlot(self.clone()))
    }

    /// An endpoint for the next try, preferring ones not in `tried` (a retry goes elsewhere
    /// when it can) and not ejected; under `PASSTHROUGH`, the address the app connection was
    /// sent to.
    pub fn pick(
        &self,
        tried: &[SocketAddr],
        original: &Original,
    ) -> Result<Arc<Upstream>, NoUpstream> {
        let policy = self.policy.load();
        if policy.load_balancer == LoadBalancer::Passthrough {
            return Ok(original.upstream());
        }
        let upstreams = self.upstreams.load();
        // The clock is read only when something can be ejected.
        let now = policy.outlier.is_some().then(Instant::now);
        let eligible = |u: &&Arc<Upstream>| {
            !tried.contains(&u.endpoint.address) && now.is_none_or(|now| !u.ejected(now))
        };
        let count = upstreams.iter().filter(eligible).count();
        let algorithm = policy.load_balancer;
        let chosen = if count == 0 {
            // Everything was tried or ejected: any endpoint beats none (Envoy's panic mode).
            self.choose(algorithm, &upstreams, upstreams.len(), |_| true)
        } else {
            self.choose(algorithm, &upstreams, count, eligible)
        };
        chosen.ok_or(NoUpstream::Empty)
    }

    fn choose(
        &self,
        algorithm: LoadBalancer,
        upstreams: &[Arc<Upstream>],
        count: usize,
        eligible: impl Fn(&&Arc<Upstream>) -> bool,
    ) -> Option<Arc<Upstream>> {
        let nth = |n: usize| upstreams.iter().filter(&eligible).nth(n).cloned();
        match count {
            0 => None,
            1 => nth(0),
            _ => match algorithm {
                LoadBalancer::RoundRobin => nth(self.next.fetch_add(1, Ordering::Relaxed) % count),
                LoadBalancer::Random => nth(rand::random_range(0..count)),
                LoadBalancer::LeastRequest => two_choices(count, nth, |u| {
                    u.load.pending.load(Ordering::Relaxed) as f64
                }),
                LoadBalancer::PeakEwma => two_choices(count, nth, |u| {
                    let pending = u.load.pending.load(Ordering::Relaxed) as f64;
                    u.load.estimate.lock().rtt * (pending + 1.0)
                }),
                // Answered by `pick` before any endpoint is chosen.
                LoadBalancer::Passthrough => None,
            },
        }
    }

    /// Outlier detection: how a try on `upstream` ended. Enough consecutive errors eject it
    /// for `baseEjectionTime` times its ejections so far, unless `maxEjectionPercent` of the
    /// backend is out already (one endpoint may always be).
    pub fn report(&self, upstream: &Upstream, attempt: Attempt) {
        let policy = self.policy.load();
        let Some(outlier) = policy.outlier.as_ref() else {
            return;
        };
        let load = &upstream.load;
        let (server_error, gateway_error) = match attempt {
            Attempt::Answered { status, .. } => (status >= 500, matches!(status, 502..=504)),
            // Envoy counts a failure to connect or a reset as a 503 from the endpoint.
            Attempt::ConnectFailure | Attempt::Reset | Attempt::RefusedStream => (true, true),
            Attempt::TimedOut => (true, true),
        };
        let count = |counter: &AtomicUsize, failed: bool| {
            if failed {
                counter.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                counter.store(0, Ordering::Relaxed);
                0
            }
        };
        let errors_5xx = count(&load.errors_5xx, server_error);
        let errors_gateway = count(&load.errors_gateway, gateway_error);
        let now = Instant::now();
        if !server_error && !upstream.ejected(now) {
            return;
        }
        let tripped = outlier
            .consecutive_5xx
            .is_some_and(|n| errors_5xx >= n as usize)
            || outlier
                .consecutive_gateway
                .is_some_and(|n| errors_gateway >= n as usize);
        if !tripped || upstream.ejected(now) {
            return;
        }
        let total = self.upstreams.load().len();
        let allowed = (total * outlier.max_ejection_percent as usize / 100).max(1);
        if self.ejected_count(now) >= allowed {
            return;
        }
        let ejections = load.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = outlier
            .base_ejection
            .saturating_mul(ejections.min(u64::from(u32::MAX)) as u32)
            .min(MAX_EJECTION);
        load.errors_5xx.store(0, Ordering::Relaxed);
        load.errors_gateway.store(0, Ordering::Relaxed);
        // Readmitted at the first detection interval after its ejection time, as Envoy's
        // interval timer readmits it.
        let tick = (outlier.interval.as_micros() as u64).max(1);
        let until = (load.micros(now) + duration.as_micros() as u64).div_ceil(tick) * tick;
        load.ejected_until.store(until, Ordering::Relaxed);
        tracing::info!(endpoint = %upstream.endpoint.address, ?duration, "ejected by outlier detection");
    }

    /// Whether requests' latencies matter: only peak-EWMA choices among several endpoints
    /// read them.
    pub fn timed(&self) -> bool {
        self.policy.load().load_balancer == LoadBalancer::PeakEwma
            && self.upstreams.load().len() > 1
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.upstreams
            .load()
            .iter()
            .filter(|u| u.ejected(now))
            .count()
    }
}

/// Power of two choices: two distinct endpoints at random, the cheaper one wins.
fn two_choices(
    count: usize,
    nth: impl Fn(usize) -> Option<Arc<Upstream>>,
    cost: impl Fn(&Upstream) -> f64,
) -> Option<Arc<Upstream>> {
    let a = rand::random_range(0..count);
    let b = (a + rand::random_range(1..count)) % count;
    let (a, b) = (nth(a)?, nth(b)?);
    Some(if cost(&b) < cost(&a) { b } else { a })
}

/// A request's place in its backend's connection pool (none when the pool is unlimited).
pub struct Admitted(Option<Arc<Balancer>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(balancer) = &self.0 {
            balancer.active.fetch_sub(1, Ordering::AcqRel);
            balancer.freed.notify_one();
        }
    }
}

/// A retry in flight, counted against `maxRetries`.
pub struct RetrySlot(Arc<Balancer>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The balancers of the backends requests have used.
#[derive(Default)]
pub struct Balancers {
    live: Mutex<HashMap<BackendKey, Arc<Balancer>>>,
    /// The addresses of backends whose endpoints are names.
    pub dns: Arc<Dns>,
}

impl Balancers {
    /// The balancer for `key`, made from `snapshot` the first time.
    pub fn get(
        &self,
        snapshot: &Snapshot,
        tunnel: &TunnelClient,
        key: &BackendKey,
    ) -> Arc<Balancer> {
        let mut live = self.live.lock();
        if let Some(balancer) = live.get(key) {
            return balancer.clone();
        }
        let (upstreams, policy) = endpoints(snapshot, tunnel, &self.dns, key, &[]);
        let balancer = Arc::new(Balancer::new(upstreams, policy));
        live.insert(key.clone(), balancer.clone());
        balancer
    }

    /// After a config push: every balancer takes its backend's endpoints from the new
    /// snapshot, keeping the state of endpoints that stay. A backend the snapshot no longer
    /// has is forgotten (connections still holding its balancer see it empty).
    pub fn update(&self, snapshot: &Snapshot, tunnel: &TunnelClient) {
        let mut live = self.live.lock();
        live.retain(|key, balancer| {
            let (upstreams, policy) =
                endpoints(snapshot, tunnel, &self.dns, key, &balancer.upstreams.load());
            balancer.upstreams.store(Arc::new(upstreams));
            balancer.policy.store(Arc::new(policy));
            snapshot.backend(key).is_some()
        });
    }
}

/// Backend `key`'s endpoints in `snapshot` (its names' addresses as `dns` has them),
/// reusing the upstreams of `current` whose endpoint did not change.
fn endpoints(
    snapshot: &Snapshot,
    tunnel: &TunnelClient,
    dns: &Dns,
    key: &BackendKey,
    current: &[Arc<Upstream>],
) -> (Vec<Arc<Upstream>>, DestinationPolicy) {
    let Some(backend) = snapshot.backend(key) else {
        return (Vec::new(), DestinationPolicy::default());
    };
    // Built once per backend and push; kept while its settings are.
    let originator = match &backend.policy.tls {
        TlsMode::Originate(settings) => Some(
            current
                .iter()
                .find_map(|u| match &u.way {
                    Way::Originate(o) if o.is_for(settings, &key.service.hostname) => {
                        Some(o.clone())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| Arc::new(Originator::new(settings, &key.service.hostname))),
        ),
        _ => None,
    };
    let resolved = backend.dns.iter().flat_map(|names| {
        names.names.iter().flat_map(|name| {
            let addresses = dns.addresses(name);
            let take = if names.first_only { 1 } else { addresses.len() };
            (0..take.min(addresses.len())).map(move |i| Endpoint {
                address: SocketAddr::new(addresses[i], name.port),
                identity: None,
                workload: None,
            })
        })
    });
    let endpoints: Vec<Endpoint> = backend.endpoints.iter().cloned().chain(resolved).collect();
    let upstreams = endpoints
        .iter()
        .map(|endpoint| {
            current
                .iter()
                .find(|u| {
                    u.endpoint == *endpoint && u.reached_as(&backend.policy, originator.as_ref())
                })
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Upstream::new(
                        tunnel,
                        endpoint.clone(),
                        Some(key),
                        &backend.policy,
                        originator.as_ref(),
                    ))
                })
        })
        .collect::<Vec<Arc<Upstream>>>();
    if backend.policy.pool.max_requests_per_connection.is_some()
        && upstreams.iter().any(|u| !matches!(u.way, Way::Mesh(_)))
    {
        tracing::warn!(
            backend = %key.service,
            "maxRequestsPerConnection applies to endpoints with a sidecar only; \
             requests to the others share connections without a limit"
        );
    }
    (upstreams, backend.policy.clone())
}

#[cfg(test)]
mod tests;
