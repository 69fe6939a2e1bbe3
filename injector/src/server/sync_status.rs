//! Who is subscribed and what each runs: per sidecar, the snapshot version last sent, the one it
//! acknowledged and its last rejection with the reason. Served as `/debug/syncz` (istiod's name
//! for the same view), so "which sidecars are behind, and why" has an answer.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Default)]
pub struct SyncStatus {
    next: AtomicU64,
    sidecars: Mutex<BTreeMap<u64, Sidecar>>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    /// `namespace/name` of its pod.
    pub pod: String,
    /// The SPIFFE identity its certificate proved.
    pub identity: String,
    pub sent: String,
    pub acked: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub version: String,
    pub reason: String,
}

impl SyncStatus {
    /// Adds a subscriber; it is removed when the returned entry is dropped.
    pub fn register(self: &Arc<Self>, pod: String, identity: String) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sidecars.lock().insert(
            id,
            Sidecar {
                pod,
                identity,
                sent: String::new(),
                acked: String::new(),
                rejected: None,
            },
        );
        Entry {
            status: self.clone(),
            id,
        }
    }

    pub fn list(&self) -> Vec<Sidecar> {
        self.sidecars.lock().values().cloned().collect()
    }
}

/// One subscriber's line in the status.
pub struct Entry {
    status: Arc<SyncStatus>,
    id: u64,
}

impl Entry {
    fn update(&self, change: impl FnOnce(&mut Sidecar)) {
        if let Some(sidecar) = self.status.sidecars.lock().get_mut(&self.id) {
            change(sidecar);
        }
    }

    pub fn sent(&self, version: &str) {
        self.update(|s| s.sent = version.to_owned());
    }

    pub fn acked(&self, version: &str) {
        self.update(|s| s.acked = version.to_owned());
    }

    pub fn rejected(&self, version: &str, reason: &str) {
        self.update(|s| {
            s.rejected = Some(Rejected {
                version: version.to_owned(),
                reason: reason.to_owned(),
            });
        });
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.status.sidecars.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_track_versions_and_leave_when_dropped() {
        let status = Arc::new(SyncStatus::default());
        let a = status.register("client/sleep-0".into(), "spiffe://a".into());
        let b = status.register("demo/httpbin-0".into(), "spiffe://b".into());
        a.sent("v2");
        a.acked("v1");
        b.rejected("v2", "mesh.trustDomain: ...");
        let list = status.list();
        assert_eq!(
            (list[0].sent.as_str(), list[0].acked.as_str()),
            ("v2", "v1")
        );
        assert_eq!(
            list[1].rejected.as_ref().map(|r| r.version.as_str()),
            Some("v2")
        );
        drop(a);
        assert_eq!(status.list().len(), 1);
    }
}
