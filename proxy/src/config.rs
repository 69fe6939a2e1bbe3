//! The snapshot in use, swapped whole when a new one is accepted (no connection sees half a
//! config), with a signal for the state the proxy derives from it per push rather than per
//! request (the outbound balancers' endpoint lists).

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use remora_api::Snapshot;
use tokio::sync::watch;

pub struct Config {
    current: ArcSwap<Snapshot>,
    changed: watch::Sender<()>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl Config {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            changed: watch::Sender::new(()),
        }
    }

    /// The snapshot in use.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The snapshot in use, to keep.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `snapshot` in use and tells every follower.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.changed.send_replace(());
    }

    /// Completes after each [`Config::store`] (a burst may be seen once).
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}
