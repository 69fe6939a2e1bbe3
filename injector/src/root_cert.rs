//! Workloads find the mesh root where istiod publishes it: ConfigMap `istio-ca-root-cert`
//! (key `root-cert.pem`) in every namespace, which injection mounts into each sidecar. The
//! control plane keeps each one as it should be: made if missing (or deleted), rewritten if
//! edited, left alone when current. [`ensure`] does that for one namespace; the caller runs it
//! for every namespace and on every change to one of these ConfigMaps.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{Api, PostParams},
    core::ObjectMeta,
};

/// The ConfigMap istiod publishes the root in, and its key.
pub const CONFIG_MAP: &str = "istio-ca-root-cert";
pub const KEY: &str = "root-cert.pem";

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
#[error("ConfigMap {namespace}/{CONFIG_MAP}: {message}")]
pub struct PublishError {
    namespace: String,
    message: String,
}

/// Makes namespace `namespace`'s root ConfigMap hold `roots_pem`.
pub async fn ensure(
    client: kube::Client,
    namespace: &str,
    roots_pem: &str,
) -> Result<Change, PublishError> {
    let maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    let error = |e: kube::Error| PublishError {
        namespace: namespace.to_owned(),
        message: e.to_string(),
    };
    let data = BTreeMap::from([(KEY.to_owned(), roots_pem.to_owned())]);
    match maps.get_opt(CONFIG_MAP).await.map_err(error)? {
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "istio.io/config".to_owned(),
                        "true".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match maps.create(&PostParams::default(), &map).await {
                Ok(_) => Ok(Change::Created),
                // Another replica published it meanwhile: the same root, by construction.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Change::Unchanged),
                Err(e) => Err(error(e)),
            }
        }
        Some(map) if holds(&map, roots_pem) => Ok(Change::Unchanged),
        Some(mut map) => {
            map.data
                .get_or_insert_with(BTreeMap::new)
                .insert(KEY.to_owned(), roots_pem.to_owned());
            maps.replace(CONFIG_MAP, &PostParams::default(), &map)
                .await
                .map_err(error)?;
            Ok(Change::Updated)
        }
    }
}

/// Whether `map` publishes exactly `roots_pem`.
pub fn holds(map: &ConfigMap, roots_pem: &str) -> bool {
    map.data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .map(String::as_str)
        == Some(roots_pem)
}

#[cfg(test)]
mod tests;
