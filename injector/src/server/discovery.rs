//! The discovery service: each sidecar subscribes once, proven by its workload certificate, and
//! is sent its resources in full, then, whenever they change, only what changed (delta xDS's
//! way): one Service's endpoints moving re-sends that one resource, not the mesh.
//!
//! Each subscription runs in its own task and reads the latest [`Published`] catalog from a
//! watch channel, so a slow sidecar only delays itself, and a burst of changes costs one push.
//! One push is in flight per sidecar: the next is computed once the sidecar has answered, from
//! what it acknowledged holding (after a NACK it still holds that). A push's version is the
//! sum of its resources' digests, so the same content has the same version in every replica.

mod held;
mod published;

use std::{sync::Arc, time::Duration};

use prost::Message;
use remora_api::{
    proto::config::{discovery_server::Discovery, resource::Body, Node, Push, SubscribeRequest},
    resources::{self, version_text},
    SpiffeId,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    jwks::Jwks,
    metrics::Metrics,
    sync_status::{Entry, SyncStatus},
};
use crate::config::{Catalog, OwnSource};
use held::{Change, Contents, Held};
use published::Entries;
pub use published::{publish, Published};

/// How long a subscriber has to say who it is.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// About how many bytes each part of a push carries: a thousand sidecars' streams each keep
/// a buffer the size of the largest message sent on them (8 KiB is tonic's own buffer size).
const PART_BYTES: usize = 8 * 1024;
/// First pushes under way at once: a thousand sidecars subscribing together are sent their
/// whole view a few dozen at a time, which bounds the memory and CPU their pushes take while
/// they are worked out, encoded and sent.
pub const CONCURRENT_PUSHES: usize = 32;
/// Later pushes under way at once (Istio's `PILOT_PUSH_THROTTLE` default): what changed is
/// usually a few hundred bytes, and a push holds at most one part queued whatever its size, so
/// an endpoint change reaches a thousand sidecars in ten rounds rather than thirty.
pub const CONCURRENT_CHANGES: usize = 100;
/// How long a push holds its turn, sending and waiting for the sidecar's answer; a sidecar
/// slower than that is still sent its push and has its answer read, without holding up others.
const TURN: Duration = Duration::from_secs(5);

pub struct DiscoveryService {
    pub published: watch::Receiver<Arc<Published>>,
    /// Turns to push.
    pub turns: Turns,
    /// The keys fetched for `jwksUri`s, filled into each snapshot.
    pub jwks: watch::Receiver<Arc<Jwks>>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SyncStatus>,
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type DeltaSubscribeStream = ReceiverStream<Result<Push, Status>>;

    async fn delta_subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::DeltaSubscribeStream>, Status> {
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
        authorize(&self.published.borrow().catalog, &peer, &node)?;
        let (pushes, stream) = mpsc::channel(1);
        let status = self.status.register(
            format!("{}/{}", node.namespace, node.pod_name),
            peer.to_string(),
        );
        let session = Session {
            status,
            node,
            peer,
            published: self.published.clone(),
            jwks: self.jwks.clone(),
            metrics: self.metrics.clone(),
            turns: self.turns.clone(),
            pushes,
            own: None,
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

/// Turns to push: a sidecar's first push takes one of [`CONCURRENT_PUSHES`], a later one one
/// of [`CONCURRENT_CHANGES`].
#[derive(Clone)]
pub struct Turns {
    first: Arc<Semaphore>,
    changes: Arc<Semaphore>,
}

impl Default for Turns {
    fn default() -> Self {
        Self {
            first: Arc::new(Semaphore::new(CONCURRENT_PUSHES)),
            changes: Arc::new(Semaphore::new(CONCURRENT_CHANGES)),
        }
    }
}

impl Turns {
    /// A turn for a first push, or for a later one; `None` once the control plane stops.
    async fn take(&self, first: bool) -> Option<OwnedSemaphorePermit> {
        let turns = if first { &self.first } else { &self.changes };
        turns.clone().acquire_owned().await.ok()
    }
}

struct Session {
    status: Entry,
    node: Node,
    peer: SpiffeId,
    published: watch::Receiver<Arc<Published>>,
    jwks: watch::Receiver<Arc<Jwks>>,
    metrics: Arc<Metrics>,
    turns: Turns,
    pushes: mpsc::Sender<Result<Push, Status>>,
    /// The own resources last made, what they were made of and the keys filled in: most
    /// changes leave them alone, and a thousand sessions need not make them again.
    own: Option<(OwnSource, Arc<Jwks>, Entries)>,
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
        // What the sidecar has acknowledged holding; `None` until its first ACK.
        let mut held: Option<Held> = None;
        loop {
            // A turn first, then the newest catalog: what waited for its turn is not stale.
            let Some(turn) = self.turns.take(held.is_none()).await else {
                return "control plane stopping";
            };
            // Read outside the watches' locks, which publishing needs.
            let published = self.published.borrow_and_update().clone();
            let jwks = self.jwks.borrow_and_update().clone();
            if let Err(status) = authorize(&published.catalog, &self.peer, &self.node) {
                drop(turn);
                let _ = self.pushes.send(Err(status)).await;
                return "no longer authorized";
            }
            let wanted = self.contents(&published, &jwks);
            let change = match &held {
                None => held::full(&wanted),
                Some(held) => held::delta(held, &wanted),
            };
            if held.is_some() && change.is_empty() {
                drop(turn);
                // Same content, newer parts: later comparisons start from these.
                held = Some(Held {
                    contents: wanted,
                    sum: change.sum,
                });
            } else {
                let sum = change.sum;
                match self.push(change, held.is_none(), turn, requests).await {
                    Ok(true) => {
                        held = Some(Held {
                            contents: wanted,
                            sum,
                        })
                    }
                    Ok(false) => {}
                    Err(ended) => return ended,
                }
            }
            // Wait for the next change, reading (unexpected) answers meanwhile.
            loop {
                tokio::select! {
                    changed = self.published.changed() => {
                        if changed.is_err() {
                            return "control plane stopping";
                        }
                        break;
                    }
                    changed = self.jwks.changed() => {
                        if changed.is_err() {
                            return "control plane stopping";
                        }
                        break;
                    }
                    answer = requests.message() => match answer {
                        Ok(Some(answer)) => {
                            tracing::debug!(pod = %self.node.pod_name, version = answer.version, "answer to no push");
                        }
                        Ok(None) => return "stream closed",
                        Err(_) => return "stream broken",
                    }
                }
            }
        }
    }

    /// What the sidecar should hold now: the shared resources, its view's Services, and its
    /// own resources (with the keys fetched for its `jwksUri`s).
    fn contents(&mut self, published: &Published, jwks: &Arc<Jwks>) -> Contents {
        let catalog: &Catalog = &published.catalog;
        let source = catalog.own_source(&self.node);
        let own = match &self.own {
            Some((made_of, keys, own)) if *made_of == source && Arc::ptr_eq(keys, jwks) => {
                own.clone()
            }
            _ => {
                let own = Self::own_resources(catalog, &self.node, jwks);
                self.own = Some((source, jwks.clone(), own.clone()));
                own
            }
        };
        Contents {
            shared: published.shared.clone(),
            view: published.view(&catalog.view_of(&self.node)),
            own,
        }
    }

    /// `node`'s own resources, encoded, with the keys fetched for its `jwksUri`s.
    fn own_resources(catalog: &Catalog, node: &Node, jwks: &Jwks) -> Entries {
        catalog
            .own_resources(node)
            .into_iter()
            .map(|mut resource| {
                if let Some(Body::Security(security)) = &mut resource.body {
                    jwks.fill(security);
                }
                (
                    Arc::from(resource.name.as_str()),
                    published::Encoded::of(&resource),
                )
            })
            .collect()
    }

    /// Sends `change` and waits for the answer, holding `turn` for at most [`TURN`] of that:
    /// `Ok(true)` for an ACK, `Ok(false)` for a NACK, `Err` with why the stream ended.
    async fn push(
        &self,
        change: Change,
        full: bool,
        turn: OwnedSemaphorePermit,
        requests: &mut Streaming<SubscribeRequest>,
    ) -> Result<bool, &'static str> {
        // A sidecar that stops reading (its connection kept alive) or never answers must not
        // keep its turn: after TURN it goes on without one, and others take it.
        let mut turn = Turn {
            permit: Some(turn),
            until: tokio::time::Instant::now() + TURN,
        };
        let version = version_text(change.sum);
        let (count, mut removed) = (change.resources.len(), change.removed);
        let parts = resources::split(change.resources, PART_BYTES);
        let last = parts.len() - 1;
        let mut bytes = 0;
        for (index, resources) in parts.into_iter().enumerate() {
            let part = Push {
                version: version.clone(),
                full,
                resources,
                // The names to drop travel with the last part.
                removed: if index == last {
                    std::mem::take(&mut removed)
                } else {
                    Vec::new()
                },
                more: index != last,
            };
            bytes += part.encoded_len();
            let slot = turn
                .within(self.pushes.reserve())
                .await
                .map_err(|_| "stream closed")?;
            slot.send(Ok(part));
        }
        tracing::debug!(pod = %self.node.pod_name, version, full, resources = count, bytes, parts = last + 1, "pushed");
        self.metrics.pushes.inc();
        self.status.sent(&version);
        loop {
            let answer = match turn.within(requests.message()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => return Err("stream closed"),
                Err(_) => return Err("stream broken"),
            };
            if answer.version != version {
                tracing::debug!(pod = %self.node.pod_name, version = answer.version, "answer to an earlier push");
                continue;
            }
            return Ok(self.answered(&answer));
        }
    }

    /// Records an answer; `true` for an ACK.
    fn answered(&self, answer: &SubscribeRequest) -> bool {
        if answer.error.is_empty() {
            tracing::debug!(pod = %self.node.pod_name, version = answer.version, "ACK");
            self.status.acked(&answer.version);
            true
        } else {
            self.metrics.nacks.inc();
            self.status.rejected(&answer.version, &answer.error);
            tracing::warn!(
                namespace = self.node.namespace,
                pod = self.node.pod_name,
                version = answer.version,
                reason = answer.error,
                "sidecar rejected a push (NACK); it keeps what it had"
            );
            false
        }
    }
}

/// A push's turn, given back when its time is up even if the push is not done.
struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    until: tokio::time::Instant,
}

impl Turn {
    /// Awaits `step`, holding the turn until its time is up, then without it.
    async fn within<F: std::future::Future>(&mut self, step: F) -> F::Output {
        let mut step = std::pin::pin!(step);
        if self.permit.is_some() {
            if let Ok(done) = tokio::time::timeout_at(self.until, &mut step).await {
                return done;
            }
            self.permit = None;
        }
        step.await
    }
}
