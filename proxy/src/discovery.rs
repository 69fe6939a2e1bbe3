//! The discovery stream: the sidecar subscribes once with who it is, and takes each push the
//! control plane sends (its resources in full first, then what changed): the snapshot the
//! resources then make is checked whole and swapped in atomically, and the sidecar answers ACK
//! or NACK. A rejected push leaves what was held in place. When the stream breaks (or the
//! sidecar finds it no longer holds what the control plane thinks it does) the sidecar keeps
//! serving what it has and resubscribes with jittered backoff, which starts again from a full
//! push.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use remora_api::{
    proto::config::{
        discovery_client::DiscoveryClient, Node, Snapshot as WireSnapshot, SubscribeRequest,
    },
    resources::{Held, Parts, PushError},
    Dump, Snapshot,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::{backoff::Backoff, config::Config, control_plane::ControlPlane, metrics::Metrics};

/// How long a stream must have lasted for the next reconnect to start from the shortest wait.
const STABLE_STREAM: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Connect(#[from] crate::control_plane::ControlPlaneError),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("{0}")]
    Diverged(PushError),
}

/// Everything the stream needs, moved into its task.
pub struct Subscription {
    pub control_plane: ControlPlane,
    pub node: Node,
    /// The sidecar's trust domain: its certificate and every peer check depend on it, so a
    /// snapshot for another one is refused until the sidecar restarts.
    pub trust_domain: String,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
}

impl Subscription {
    /// Runs forever; `first` fires once the first snapshot is in use.
    pub async fn run(self, first: oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
        loop {
            let opened = Instant::now();
            let error = self.subscribe(&mut first).await;
            self.metrics.control_plane_connected(false);
            // Only a stream that stayed up earns a quick reconnect: a control plane that
            // accepts and then drops every stream must not be hammered by every sidecar.
            if opened.elapsed() >= STABLE_STREAM {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(%error, ?delay, version = %self.config.load().version(), "discovery stream lost; serving the last snapshot");
            tokio::time::sleep(delay).await;
        }
    }

    async fn subscribe(&self, first: &mut Option<oneshot::Sender<()>>) -> StreamError {
        match self.stream(first).await {
            Ok(()) => StreamError::Closed,
            Err(error) => error,
        }
    }

    async fn stream(&self, first: &mut Option<oneshot::Sender<()>>) -> Result<(), StreamError> {
        let channel = self.control_plane.channel(false).await?;
        let (answers, requests) = mpsc::channel(4);
        // The channel has room: the first message cannot block.
        let _ = answers
            .send(SubscribeRequest {
                node: Some(self.node.clone()),
                ..Default::default()
            })
            .await;
        let mut pushes = DiscoveryClient::new(channel)
            .delta_subscribe(ReceiverStream::new(requests))
            .await?
            .into_inner();
        // A new stream starts from a full push: what was held before is replaced then.
        let mut held = Held::default();
        let mut parts = Parts::default();
        while let Some(part) = pushes.message().await? {
            self.metrics.control_plane_connected(true);
            let Some(push) = parts.add(part) else {
                continue;
            };
            let version = push.version.clone();
            let (full, resources, removed) = (push.full, push.resources.len(), push.removed.len());
            let mut diverged = None;
            let staged = held.stage(push).map_err(|e| {
                let reason = e.to_string();
                if matches!(e, PushError::Diverged(_)) {
                    diverged = Some(e);
                }
                reason
            });
            let error = match staged.and_then(|mut staged| {
                let wire = std::mem::take(&mut staged.snapshot);
                accept(wire, &self.trust_domain).map(|snapshot| (staged, snapshot))
            }) {
                Ok((staged, snapshot)) => {
                    let dump = Dump::Resources {
                        version: version.clone(),
                        held: held.commit(staged),
                    };
                    // The wire snapshot it was compiled from goes: the resources are the dump.
                    let snapshot = snapshot.with_dump(dump);
                    tracing::info!(
                        version,
                        full,
                        resources,
                        removed,
                        destinations = snapshot.destination_count(),
                        "config applied"
                    );
                    self.config.store(snapshot);
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    String::new()
                }
                Err(reason) => {
                    tracing::warn!(version, %reason, "push rejected; keeping what was held");
                    reason
                }
            };
            self.metrics.config_update(error.is_empty(), &version);
            if answers
                .send(SubscribeRequest {
                    node: None,
                    version,
                    error,
                })
                .await
                .is_err()
            {
                break;
            }
            if let Some(diverged) = diverged {
                return Err(StreamError::Diverged(diverged));
            }
        }
        Ok(())
    }
}

/// Checks a received snapshot whole; the error is the NACK's reason.
fn accept(wire: WireSnapshot, trust_domain: &str) -> Result<Snapshot, String> {
    let snapshot = Snapshot::try_from(wire).map_err(|e| e.to_string())?;
    match &snapshot.mesh.trust_domain {
        Some(domain) if domain != trust_domain => Err(format!(
            "mesh.trustDomain: {domain:?} differs from this sidecar's {trust_domain:?}; its \
             certificate and its peers' identities are in the old one, so moving needs a restart"
        )),
        _ => Ok(snapshot),
    }
}

#[cfg(test)]
mod tests {
    use remora_api::proto::config::{Endpoint, MeshSettings};

    use super::*;

    fn wire(trust_domain: &str, address: &str) -> WireSnapshot {
        WireSnapshot {
            version: "v1".into(),
            endpoints: vec![Endpoint {
                address: address.into(),
                identity: "spiffe://cluster.local/ns/demo/sa/httpbin".into(),
                ..Default::default()
            }],
            services: vec![],
            mesh: Some(MeshSettings {
                trust_domain: trust_domain.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn snapshots_are_checked_whole() {
        let ok = accept(wire("cluster.local", "198.18.0.3:8080"), "cluster.local").expect("ok");
        assert_eq!(ok.version(), "v1");
        let moved = accept(wire("example.org", "198.18.0.3:8080"), "cluster.local")
            .expect_err("trust domain change refused");
        assert!(
            moved.contains("mesh.trustDomain: \"example.org\""),
            "{moved}"
        );
        let bad = accept(wire("cluster.local", "198.18.0.3"), "cluster.local")
            .expect_err("bad address refused");
        assert!(bad.contains("endpoints[0].address"), "{bad}");
        // A policy the sidecar cannot apply refuses the snapshot: the last good one stays.
        let mut policy = wire("cluster.local", "198.18.0.3:8080");
        policy.security = Some(remora_api::proto::config::Security {
            authorization_policies: vec![remora_api::proto::config::AuthorizationPolicy {
                namespace: "demo".into(),
                name: "deny".into(),
                action: "DENY".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let nacked = accept(policy, "cluster.local").expect_err("policy refused");
        assert!(
            nacked.contains("security.authorizationPolicies[0].rules: a DENY policy needs"),
            "{nacked}"
        );
    }
}
