//! The discovery service: each sidecar subscribes once, proven by its workload certificate, and
//! gets its snapshot in full, then again whenever its snapshot changes.
//!
//! Each subscription runs in its own task and reads the latest catalog from a watch channel, so
//! a slow sidecar only delays itself, and a burst of changes costs one push (changes are
//! debounced, then the newest catalog is read). A snapshot's version is a hash of its content:
//! a sidecar whose snapshot did not change is not pushed, and after a control-plane restart an
//! unchanged snapshot keeps its version.

use std::{sync::Arc, time::Duration};

use remora_api::{
    proto::config::{discovery_server::Discovery, Node, Snapshot, SubscribeRequest},
    SpiffeId,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    jwks::Jwks,
    metrics::Metrics,
    sync_status::{Entry, SyncStatus},
    CatalogWatch,
};
use crate::config::{version_of, Catalog};

/// How long to let a burst of changes settle before computing snapshots.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long a subscriber has to say who it is.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DiscoveryService {
    pub catalog: CatalogWatch,
    /// The keys fetched for `jwksUri`s, filled into each snapshot.
    pub jwks: watch::Receiver<Arc<Jwks>>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SyncStatus>,
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type SubscribeStream = ReceiverStream<Result<Snapshot, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| {
                Status::unauthenticated("discovery needs the sidecar's workload certificate")
            })?;
        let peer = SpiffeId::from_certificate(&leaf)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut requests = request.into_inner();
        let node = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, requests.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no subscribe request"))??
            .and_then(|first| first.node)
            .ok_or_else(|| Status::invalid_argument("node: required on the first message"))?;
        authorize(&self.catalog.borrow(), &peer, &node)?;
        let (snapshots, stream) = mpsc::channel(1);
        let status = self.status.register(
            format!("{}/{}", node.namespace, node.pod_name),
            peer.to_string(),
        );
        let session = Session {
            status,
            node,
            peer,
            catalog: self.catalog.clone(),
            jwks: self.jwks.clone(),
            metrics: self.metrics.clone(),
            snapshots,
        };
        tokio::spawn(session.run(requests));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// A certificate for one namespace's account may speak only for a pod of that namespace running
/// as that account.
fn authorize(catalog: &Catalog, peer: &SpiffeId, node: &Node) -> Result<(), Status> {
    if peer.namespace() != node.namespace {
        return Err(Status::permission_denied(format!(
            "{peer} cannot subscribe for a pod in namespace {:?}",
            node.namespace
        )));
    }
    match catalog.pod_service_account(&node.namespace, &node.pod_name) {
        Some(account) if account != peer.service_account() => {
            Err(Status::permission_denied(format!(
                "pod {}/{} runs as {account:?}, not as {peer}",
                node.namespace, node.pod_name
            )))
        }
        // A pod not recorded yet (the sidecar can start before the source reports its pod) gets
        // the namespace-wide snapshot; it is checked again on every change.
        _ => Ok(()),
    }
}

struct Session {
    status: Entry,
    node: Node,
    peer: SpiffeId,
    catalog: CatalogWatch,
    jwks: watch::Receiver<Arc<Jwks>>,
    metrics: Arc<Metrics>,
    snapshots: mpsc::Sender<Result<Snapshot, Status>>,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<SubscribeRequest>) {
        self.metrics.connected.inc();
        let (namespace, pod) = (self.node.namespace.clone(), self.node.pod_name.clone());
        tracing::info!(namespace, pod, ip = self.node.ip, peer = %self.peer, "sidecar subscribed");
        let ended = self.serve(&mut requests).await;
        self.metrics.connected.dec();
        tracing::info!(namespace, pod, reason = ended, "sidecar unsubscribed");
    }

    /// Pushes until the sidecar goes away; returns why it ended.
    async fn serve(&mut self, requests: &mut Streaming<SubscribeRequest>) -> &'static str {
        let mut sent: Option<String> = None;
        loop {
            // Computed outside the watch's lock, which the source needs to publish.
            let catalog = self.catalog.borrow_and_update().clone();
            let jwks = self.jwks.borrow_and_update().clone();
            let snapshot = authorize(&catalog, &self.peer, &self.node).map(|()| {
                let mut snapshot = catalog.snapshot_for(&self.node);
                jwks.fill(&mut snapshot);
                versioned(snapshot)
            });
            let snapshot = match snapshot {
                Ok(snapshot) => snapshot,
                Err(status) => {
                    let _ = self.snapshots.send(Err(status)).await;
                    return "no longer authorized";
                }
            };
            if sent.as_deref() != Some(snapshot.version.as_str()) {
                let version = snapshot.version.clone();
                if self.snapshots.send(Ok(snapshot)).await.is_err() {
                    return "stream closed";
                }
                self.metrics.pushes.inc();
                self.status.sent(&version);
                tracing::debug!(pod = %self.node.pod_name, version, "snapshot pushed");
                sent = Some(version);
            }
            // Wait for the next change, reading ACKs and NACKs meanwhile.
            loop {
                tokio::select! {
                    changed = self.catalog.changed() => {
                        if changed.is_err() {
                            return "control plane stopping";
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        break;
                    }
                    changed = self.jwks.changed() => {
                        if changed.is_err() {
                            return "control plane stopping";
                        }
                        break;
                    }
                    answer = requests.message() => match answer {
                        Ok(Some(answer)) => self.answered(&answer),
                        Ok(None) => return "stream closed",
                        Err(_) => return "stream broken",
                    }
                }
            }
        }
    }

    fn answered(&self, answer: &SubscribeRequest) {
        if answer.error.is_empty() {
            tracing::debug!(pod = %self.node.pod_name, version = answer.version, "ACK");
            self.status.acked(&answer.version);
        } else {
            self.metrics.nacks.inc();
            self.status.rejected(&answer.version, &answer.error);
            tracing::warn!(
                namespace = self.node.namespace,
                pod = self.node.pod_name,
                version = answer.version,
                reason = answer.error,
                "sidecar rejected a snapshot (NACK); it keeps its previous one"
            );
        }
    }
}

/// Stamps a snapshot with its version.
fn versioned(mut snapshot: Snapshot) -> Snapshot {
    snapshot.version.clear();
    snapshot.version = version_of(&snapshot);
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_content() {
        let a = versioned(Snapshot::default());
        let b = versioned(Snapshot {
            version: "ignored".into(),
            ..Default::default()
        });
        assert_eq!(a.version, b.version);
        let c = versioned(Snapshot {
            endpoints: vec![remora_api::proto::config::Endpoint {
                address: "198.18.0.3:8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_ne!(a.version, c.version);
    }
}
