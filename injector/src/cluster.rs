//! What a control plane in a cluster keeps right besides config, for as long as it runs: the
//! mesh root in every namespace's `istio-ca-root-cert` ConfigMap, and in the `caBundle` of the
//! injection webhook's configuration. Each is watched, so a namespace created, a ConfigMap
//! deleted or edited, or a bundle overwritten (by `kubectl apply` of the install, say) is
//! repaired as soon as the API server says so; a repair that fails is tried again shortly.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{ConfigMap, Namespace},
};
use kube::{
    api::Api,
    runtime::{watcher, WatchStreamExt},
    ResourceExt,
};
use tokio_stream::StreamExt;

use crate::{root_cert, webhook_bundle};

/// How soon a repair that failed is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// What a watch said needs looking at.
enum Due {
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
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let work: Vec<Option<String>> = tokio::select! {
            next = due.next() => match next {
                Some(Ok(Due::Namespace(namespace))) => {
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
        for target in work {
            let repaired = match &target {
                Some(namespace) => publish_root(&client, namespace, &roots_pem).await,
                None => trust_root(&client, &webhook, &roots_pem).await,
            };
            if !repaired {
                failed.insert(target);
            }
        }
    }
}

/// A namespace listed, created or edited needs its root; one deleted or terminating does not.
fn namespace_due(event: watcher::Event<Namespace>) -> Due {
    match event {
        watcher::Event::Apply(namespace) | watcher::Event::InitApply(namespace) => {
            if namespace.metadata.deletion_timestamp.is_some() {
                Due::Gone(namespace.name_any())
            } else {
                Due::Namespace(namespace.name_any())
            }
        }
        watcher::Event::Delete(namespace) => Due::Gone(namespace.name_any()),
        watcher::Event::Init | watcher::Event::InitDone => Due::Nothing,
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

/// Whether `config` has a webhook that does not trust `roots_pem`.
fn bundle_due(config: &MutatingWebhookConfiguration, roots_pem: &str) -> Due {
    let stale = config.webhooks.iter().flatten().any(|webhook| {
        webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            != Some(roots_pem.as_bytes())
    });
    if stale {
        Due::Bundle
    } else {
        Due::Nothing
    }
}

/// Makes namespace `namespace`'s root ConfigMap current; false when it must be tried again.
async fn publish_root(client: &kube::Client, namespace: &str, roots_pem: &str) -> bool {
    match root_cert::ensure(client.clone(), namespace, roots_pem).await {
        Ok(root_cert::Change::Unchanged) => true,
        Ok(change) => {
            tracing::info!(%namespace, ?change, "mesh root published");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish the mesh root; trying again soon");
            false
        }
    }
}

/// Makes the webhook configuration trust the root; false when it must be tried again.
async fn trust_root(client: &kube::Client, webhook: &str, roots_pem: &str) -> bool {
    match webhook_bundle::patch(client.clone(), webhook, roots_pem).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set the webhook's caBundle; trying again soon");
            false
        }
    }
}

#[cfg(test)]
mod tests;
