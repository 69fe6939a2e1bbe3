//! The route table each Service port's connections use, kept current: a connection holds its
//! port's [`PortRoutes`] for its life, and every config push swaps in the new table with the
//! balancers of the backends it names (a port's routes stay while the snapshot has the port,
//! so its balancers' state outlives the connections). So a keep-alive connection routes each request by the
//! newest routes, and a request finds its backend's balancer by index, with no lookup.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use remora_api::{route::BackendKey, ServiceKey, ServicePort, Snapshot};

use crate::{config::Config, tunnel::TunnelClient};

use super::balance::{Balancer, Balancers};

/// A port's routes and the balancers of their backends, as of one snapshot.
pub struct Resolved {
    pub port: Arc<ServicePort>,
    /// By [`remora_api::route::Target::Backend`] index.
    pub balancers: Vec<Arc<Balancer>>,
    /// The port's own endpoints, for connections that are not HTTP.
    pub own: Arc<Balancer>,
}

impl Resolved {
    fn new(
        port: Arc<ServicePort>,
        snapshot: &Snapshot,
        tunnel: &TunnelClient,
        balancers: &Balancers,
    ) -> Self {
        let own = balancers.get(
            snapshot,
            tunnel,
            &BackendKey {
                service: port.key.clone(),
                subset: None,
            },
        );
        let balancers = port
            .routes
            .backends()
            .iter()
            .map(|backend| balancers.get(snapshot, tunnel, &backend.key))
            .collect();
        Self {
            port,
            balancers,
            own,
        }
    }
}

/// One Service port's current routes.
pub struct PortRoutes {
    current: ArcSwap<Resolved>,
}

impl PortRoutes {
    pub fn load(&self) -> Arc<Resolved> {
        self.current.load_full()
    }
}

/// The ports connections have used.
#[derive(Default)]
pub struct Routes {
    live: Mutex<HashMap<ServiceKey, Arc<PortRoutes>>>,
}

impl Routes {
    /// The routes of `port`, shared with every connection to it.
    ///
    /// The snapshot is read under the same lock [`Routes::update`] takes, so routes made while
    /// a push is being applied still end up with the newest config.
    pub fn get(
        &self,
        port: &Arc<ServicePort>,
        config: &Config,
        tunnel: &TunnelClient,
        balancers: &Balancers,
    ) -> Arc<PortRoutes> {
        let mut live = self.live.lock();
        if let Some(routes) = live.get(&port.key) {
            return routes.clone();
        }
        let snapshot = config.load();
        let port = snapshot.service(&port.key).unwrap_or(port);
        let snapshot = &snapshot;
        let routes = Arc::new(PortRoutes {
            current: ArcSwap::from_pointee(Resolved::new(
                port.clone(),
                snapshot,
                tunnel,
                balancers,
            )),
        });
        live.insert(port.key.clone(), routes.clone());
        routes
    }

    /// After a config push (and after `balancers` took the new endpoints): every port takes
    /// its new routes. A port the snapshot no longer lists is forgotten; connections still
    /// holding it keep its last routes, whose backends are empty by now.
    pub fn update(&self, snapshot: &Snapshot, tunnel: &TunnelClient, balancers: &Balancers) {
        let mut live = self.live.lock();
        live.retain(|key, routes| match snapshot.service(key) {
            Some(port) => {
                routes.current.store(Arc::new(Resolved::new(
                    port.clone(),
                    snapshot,
                    tunnel,
                    balancers,
                )));
                true
            }
            None => false,
        });
    }
}
