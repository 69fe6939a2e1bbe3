//! Choosing a Service's endpoint per request: round robin over its ready endpoints (the traffic
//! issue brings power-of-two-choices over latency). The state lives here, in the proxy, not in
//! the snapshot: a balancer per Service port in use, kept across snapshots, handed the new
//! endpoints on each config push, and forgotten when no connection holds it. The way to each
//! endpoint (its tunnel channel) is built per push, so a request only takes a turn.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use remora_api::{Endpoint, ServiceKey};

use crate::{
    config::Config,
    tunnel::{PeerChannel, TunnelClient},
};

/// One endpoint, ready to send to.
pub struct Upstream {
    pub endpoint: Endpoint,
    /// Through its sidecar, for an endpoint in the mesh; `None`: reached directly.
    pub channel: Option<PeerChannel>,
}

impl Upstream {
    pub fn new(tunnel: &TunnelClient, endpoint: Endpoint) -> Self {
        let channel = endpoint
            .identity
            .clone()
            .map(|identity| tunnel.channel(endpoint.address, identity));
        Self { endpoint, channel }
    }
}

/// One Service port's ready endpoints and whose turn it is.
pub struct Balancer {
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    next: AtomicUsize,
}

impl Balancer {
    fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Self {
            upstreams: ArcSwap::from_pointee(upstreams),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in turn, or `None` when the Service has none ready.
    pub fn pick(&self) -> Option<Arc<Upstream>> {
        let upstreams = self.upstreams.load();
        if upstreams.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(upstreams[turn % upstreams.len()].clone())
    }
}

/// The balancers of the Service ports connections are using.
#[derive(Default)]
pub struct Balancers {
    live: Mutex<HashMap<ServiceKey, Weak<Balancer>>>,
}

impl Balancers {
    /// The balancer for `key`, made from the snapshot in use when no connection holds one.
    ///
    /// The snapshot is read under the same lock [`Balancers::update`] takes, so a balancer made
    /// while a push is being applied still ends up with the newest endpoints.
    pub fn get(&self, config: &Config, tunnel: &TunnelClient, key: &ServiceKey) -> Arc<Balancer> {
        let mut live = self.live.lock();
        if let Some(balancer) = live.get(key).and_then(Weak::upgrade) {
            return balancer;
        }
        let balancer = Arc::new(Balancer::new(upstreams(config, tunnel, key)));
        live.insert(key.clone(), Arc::downgrade(&balancer));
        balancer
    }

    /// After a config push: every balancer in use takes its Service's endpoints from the new
    /// snapshot (none, if the Service is gone); those no connection holds are forgotten.
    pub fn update(&self, config: &Config, tunnel: &TunnelClient) {
        let mut live = self.live.lock();
        live.retain(|key, balancer| match balancer.upgrade() {
            Some(balancer) => {
                balancer
                    .upstreams
                    .store(Arc::new(upstreams(config, tunnel, key)));
                true
            }
            None => false,
        });
    }
}

fn upstreams(config: &Config, tunnel: &TunnelClient, key: &ServiceKey) -> Vec<Arc<Upstream>> {
    config
        .load()
        .service(key)
        .map(|port| {
            port.endpoints
                .iter()
                .map(|endpoint| Arc::new(Upstream::new(tunnel, endpoint.clone())))
                .collect()
        })
        .unwrap_or_default()
}
