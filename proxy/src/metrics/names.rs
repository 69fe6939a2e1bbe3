//! What this sidecar's own workload is called in telemetry, and which Service each of its app
//! ports serves, derived from each snapshot once (the first time a connection needs them after
//! a push), not per connection or request.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwapOption;
use remora_api::{Snapshot, SpiffeId};

use super::labels::{or_unknown, Peer, Service};

/// The pod this sidecar runs in, as its bootstrap says.
#[derive(Clone, Debug)]
pub struct Own {
    pub namespace: String,
    pub pod: String,
    pub id: SpiffeId,
}

/// Names derived from one snapshot.
pub struct Local {
    /// The snapshot they were derived from (compared by address).
    from: Arc<Snapshot>,
    pub me: Peer,
    /// The Service (the first by hostname) with an endpoint on this pod at each app port.
    services: HashMap<u16, Service>,
    /// When no Service has: named after the canonical service, as Istio does.
    fallback: Service,
}

impl Local {
    pub fn service(&self, port: u16) -> Service {
        self.services.get(&port).unwrap_or(&self.fallback).clone()
    }
}

pub struct Names {
    own: Option<Own>,
    current: ArcSwapOption<Local>,
}

impl Names {
    pub fn new(own: Option<Own>) -> Self {
        Self {
            own,
            current: ArcSwapOption::empty(),
        }
    }

    /// The names `snapshot` gives this sidecar's workload.
    pub fn local(&self, snapshot: &Arc<Snapshot>) -> Arc<Local> {
        if let Some(local) = self.current.load_full() {
            if Arc::ptr_eq(&local.from, snapshot) {
                return local;
            }
        }
        let local = Arc::new(self.derive(snapshot));
        self.current.store(Some(local.clone()));
        local
    }

    fn derive(&self, snapshot: &Arc<Snapshot>) -> Local {
        let cluster = snapshot.mesh.cluster_id();
        let record = self
            .own
            .as_ref()
            .and_then(|own| snapshot.workload(&own.namespace, &own.pod));
        let id = self.own.as_ref().map(|own| &own.id);
        let me = Peer::of(record.map(|r| &**r), id, cluster);
        let namespace = self.own.as_ref().map_or("", |own| own.namespace.as_str());
        let mut services: HashMap<u16, Service> = HashMap::new();
        if let Some(record) = record {
            let mut ports: Vec<_> = snapshot
                .service_ports()
                .flat_map(|port| {
                    port.endpoints
                        .iter()
                        .filter(|e| record.addresses.contains(&e.address.ip()))
                        .map(move |e| (e.address.port(), &port.key.hostname))
                })
                .collect();
            ports.sort();
            for (port, host) in ports {
                services
                    .entry(port)
                    .or_insert_with(|| Service::named(host, namespace));
            }
        }
        let canonical = &me.canonical_service;
        Local {
            from: snapshot.clone(),
            fallback: Service {
                host: canonical.clone(),
                name: canonical.clone(),
                namespace: or_unknown(namespace),
            },
            me,
            services,
        }
    }
}
