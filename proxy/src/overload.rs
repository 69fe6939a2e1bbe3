//! Refusing load the sidecar should not take, rather than queueing it without bound.
//!
//! Each listener (outbound, inbound capture, tunnel) holds at most so many connections open at
//! once, and the sidecar at most so many over all of them (Envoy's
//! `overload.global_downstream_max_connections`): over either, a new connection is closed as
//! soon as it is accepted. Each listener also has at most so many requests waiting for their
//! response's head: over that, a new request gets Envoy's overload answer (503
//! `envoy overloaded`, `x-envoy-overloaded: true`, response flag `OM`). Refusals are counted
//! (`remora_proxy_overload_*`). The limits come with the pod's `ProxyConfig`
//! ([`remora_api::OverloadLimits`]) and are read once per accepted connection; a request pays
//! two atomic operations.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use crate::{config::Config, metrics::Metrics};

/// The listeners whose load is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Outbound,
    Inbound,
    Tunnel,
}

impl Listener {
    /// The name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Tunnel => "tunnel",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What is open and waiting now, against the limits in use.
pub struct Overload {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    connections: [AtomicUsize; 3],
    all_connections: AtomicUsize,
    pending: [AtomicUsize; 3],
    /// The per-listener request limit as of the last accepted connection.
    pending_limit: AtomicUsize,
}

impl Overload {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Arc<Self> {
        let pending_limit = config.load().mesh.overload.listener_pending_requests;
        Arc::new(Self {
            config,
            metrics,
            connections: Default::default(),
            all_connections: AtomicUsize::new(0),
            pending: Default::default(),
            pending_limit: AtomicUsize::new(pending_limit),
        })
    }

    /// Lets one more connection in on `listener`, if it and the sidecar are under their
    /// limits; the permit holds its place until dropped.
    pub fn admit(self: &Arc<Self>, listener: Listener) -> Option<ConnectionPermit> {
        let limits = self.config.load().mesh.overload;
        self.pending_limit
            .store(limits.listener_pending_requests, Ordering::Relaxed);
        let open = &self.connections[listener.index()];
        let admitted = take(open, limits.listener_connections)
            && (take(&self.all_connections, limits.global_connections) || {
                open.fetch_sub(1, Ordering::Relaxed);
                false
            });
        if !admitted {
            self.metrics.overload_refused_connection(listener.name());
            return None;
        }
        Some(ConnectionPermit {
            overload: self.clone(),
            listener,
        })
    }

    /// Lets one more request in on `listener`, if it is under its limit; the permit holds its
    /// place until dropped (when the response's head is ready).
    pub fn admit_request(&self, listener: Listener) -> Option<RequestPermit<'_>> {
        let pending = &self.pending[listener.index()];
        if take(pending, self.pending_limit.load(Ordering::Relaxed)) {
            Some(RequestPermit(pending))
        } else {
            self.metrics.overload_refused_request(listener.name());
            None
        }
    }
}

/// Adds one to `count` unless it is at `limit` already.
fn take(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// A connection's place on its listener.
pub struct ConnectionPermit {
    overload: Arc<Overload>,
    listener: Listener,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.overload.connections[self.listener.index()].fetch_sub(1, Ordering::Relaxed);
        self.overload
            .all_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's place among its listener's waiting requests.
pub struct RequestPermit<'a>(&'a AtomicUsize);

impl Drop for RequestPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The requests of one listener's connections, let in (or not) by [`Overload`].
#[derive(Clone)]
pub struct RequestGate {
    pub overload: Arc<Overload>,
    pub listener: Listener,
}

impl RequestGate {
    pub fn admit(&self) -> Option<RequestPermit<'_>> {
        self.overload.admit_request(self.listener)
    }
}

#[cfg(test)]
mod tests;
