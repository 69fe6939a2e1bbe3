//! What a control plane in a cluster keeps right besides config, for as long as it runs: the
//! mesh root in every namespace's `istio-ca-root-cert` ConfigMap, and in the `caBundle` of the
//! injection webhook's configuration. Each is watched, so a namespace created, a ConfigMap
//! deleted or edited, or a bundle overwritten (by `kubectl apply` of the install, say) is
//! repaired as soon as the API server says so; a repair that fails is tried again shortly.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{ConfigMap, Namespace},
};
use kube::{
    api::Api,
    runtime::{watcher, WatchStreamExt},
    ResourceExt,
};
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::{root_cert, webhook_bundle};

/// How soon a repair that failed is tried again; also the least time between two repairs of
/// one target, so two replicas holding different roots (during a CA change) cannot rewrite
/// each other's without pause.
const RETRY: Duration = Duration::from_secs(10);
/// Namespaces istiod publishes no root in: the cluster's own.
const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// What a watch said needs looking at.
enum Due {
    /// The namespaces are listed again: those not listed until [`Due::Listed`] are gone.
    Listing,
    /// The namespaces are all listed.
    Listed,
    /// Namespace `0` is there: its root ConfigMap may be missing or stale.
    Namespace(String),
    /// Namespace `0`'s root ConfigMap was deleted or edited.
    Root(String),
    /// Namespace `0` is gone, or going: nothing to publish there any more.
    Gone(String),
    /// The webhook configuration may not trust the root.
    Bundle,
    /// Nothing to do.
    Nothing,
}

/// Keeps the root in every namespace and in webhook configuration `webhook` (Istio's
/// `istio-sidecar-injector`), until the process ends.
pub async fn keep_roots(client: kube::Client, webhook: String, roots_pem: String) {
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(namespace_due));
    let roots = roots_pem.clone();
    let maps = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", root_cert::CONFIG_MAP)),
    )
    .default_backoff()
    .map(move |event| event.map(|event| root_due(event, &roots)));
    let roots = roots_pem.clone();
    let bundles = watcher(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={webhook}")),
    )
    .default_backoff()
    .applied_objects()
    .map(move |config| config.map(|config| bundle_due(&config, &roots)));

    let mut due = std::pin::pin!(namespaces.merge(maps).merge(bundles));
    // What must be tried again: a namespace, or (`None`) the webhook configuration.
    let mut failed: BTreeSet<Option<String>> = BTreeSet::new();
    // The namespaces that exist and are not terminating: only there is a root published.
    let mut live: BTreeSet<String> = BTreeSet::new();
    // The namespaces of a relist under way.
    let mut listing: Option<BTreeSet<String>> = None;
    // When each target was last written, to pace repairs.
    let mut repaired_at: HashMap<Option<String>, Instant> = HashMap::new();
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let work: Vec<Option<String>> = tokio::select! {
            next = due.next() => match next {
                Some(Ok(Due::Listing)) => {
                    listing = Some(BTreeSet::new());
                    continue;
                }
                Some(Ok(Due::Listed)) => {
                    if let Some(listed) = listing.take() {
                        live = listed;
                        failed.retain(|target| target.as_ref().is_none_or(|ns| live.contains(ns)));
                    }
                    continue;
                }
                Some(Ok(Due::Namespace(namespace))) => {
                    if let Some(listed) = listing.as_mut() {
                        listed.insert(namespace.clone());
                    }
                    live.insert(namespace.clone());
                    vec![Some(namespace)]
                }
                Some(Ok(Due::Root(namespace))) if live.contains(&namespace) => vec![Some(namespace)],
                Some(Ok(Due::Root(_))) => continue,
                Some(Ok(Due::Gone(namespace))) => {
                    failed.remove(&Some(namespace.clone()));
                    live.remove(&namespace);
                    continue;
                }
                Some(Ok(Due::Bundle)) => vec![None],
                Some(Ok(Due::Nothing)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching namespaces, root ConfigMaps or the webhook; retrying");
                    continue;
                }
                None => return,
            },
            _ = retry.tick() => std::mem::take(&mut failed).into_iter().collect(),
        };
        let now = Instant::now();
        repaired_at.retain(|_, at| now.duration_since(*at) < RETRY);
        for target in work {
            if repaired_at.contains_key(&target) {
                failed.insert(target);
                continue;
            }
            let repair = match &target {
                Some(namespace) => publish_root(&client, namespace, &roots_pem).await,
                None => trust_root(&client, &webhook, &roots_pem).await,
            };
            match repair {
                Repair::Current => {}
                Repair::Wrote => {
                    repaired_at.insert(target, Instant::now());
                }
                Repair::Failed => {
                    failed.insert(target);
                }
            }
        }
    }
}

/// A namespace listed, created or edited needs its root; one deleted or terminating does not,
/// nor the cluster's own.
fn namespace_due(event: watcher::Event<Namespace>) -> Due {
    match event {
        watcher::Event::Apply(namespace) | watcher::Event::InitApply(namespace) => {
            let name = namespace.name_any();
            if namespace.metadata.deletion_timestamp.is_some()
                || SYSTEM_NAMESPACES.contains(&name.as_str())
            {
                Due::Gone(name)
            } else {
                Due::Namespace(name)
            }
        }
        watcher::Event::Delete(namespace) => Due::Gone(namespace.name_any()),
        watcher::Event::Init => Due::Listing,
        watcher::Event::InitDone => Due::Listed,
    }
}

/// A root ConfigMap deleted, or holding anything but `roots_pem`, needs repair.
fn root_due(event: watcher::Event<ConfigMap>, roots_pem: &str) -> Due {
    match event {
        watcher::Event::Apply(map) | watcher::Event::InitApply(map) => {
            let current = map
                .data
                .as_ref()
                .and_then(|d| d.get(root_cert::KEY))
                .map(String::as_str)
                == Some(roots_pem);
            match map.namespace() {
                Some(namespace) if !current => Due::Root(namespace),
                _ => Due::Nothing,
            }
        }
        watcher::Event::Delete(map) => map.namespace().map_or(Due::Nothing, Due::Root),
        watcher::Event::Init | watcher::Event::InitDone => Due::Nothing,
    }
}

/// A webhook configuration whose injection webhooks do not all trust `roots_pem` needs repair.
fn bundle_due(config: &MutatingWebhookConfiguration, roots_pem: &str) -> Due {
    if webhook_bundle::trusts(config, roots_pem) {
        Due::Nothing
    } else {
        Due::Bundle
    }
}

/// What a repair did.
enum Repair {
    /// Nothing needed writing.
    Current,
    Wrote,
    /// It must be tried again.
    Failed,
}

/// Makes namespace `namespace`'s root ConfigMap current.
async fn publish_root(client: &kube::Client, namespace: &str, roots_pem: &str) -> Repair {
    match root_cert::ensure(client.clone(), namespace, roots_pem).await {
        Ok(root_cert::Change::Unchanged) => Repair::Current,
        Ok(change) => {
            tracing::info!(%namespace, ?change, "mesh root published");
            Repair::Wrote
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish the mesh root; trying again soon");
            Repair::Failed
        }
    }
}

/// Makes the webhook configuration trust the root.
async fn trust_root(client: &kube::Client, webhook: &str, roots_pem: &str) -> Repair {
    match webhook_bundle::patch(client.clone(), webhook, roots_pem).await {
        Ok(false) => Repair::Current,
        Ok(true) => Repair::Wrote,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set the webhook's caBundle; trying again soon");
            Repair::Failed
        }
    }
}

#[cfg(test)]
mod tests;
