//! The API server must trust the injection webhook's serving certificate, which the mesh CA
//! signs: as istiod does, the control plane writes the mesh root into the `caBundle` of every
//! injection webhook (`*.sidecar-injector.istio.io`) of its `MutatingWebhookConfiguration`, and writes it again whenever someone changes
//! it (the caller runs [`patch`] on every change it sees). A write that loses a race with
//! another writer reads the object again and retries.

use k8s_openapi::{
    api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
    ByteString,
};
use kube::api::{Api, PostParams};

/// How many times a write that lost a race is retried.
const ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
#[error("MutatingWebhookConfiguration {name}: {message}")]
pub struct BundleError {
    name: String,
    message: String,
}

/// Makes every webhook of configuration `name` trust `roots_pem`; whether anything had to
/// change.
pub async fn patch(client: kube::Client, name: &str, roots_pem: &str) -> Result<bool, BundleError> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client);
    let error = |message: String| BundleError {
        name: name.to_owned(),
        message,
    };
    let bundle = ByteString(roots_pem.as_bytes().to_vec());
    for _ in 0..ATTEMPTS {
        let mut config = configs.get(name).await.map_err(|e| error(e.to_string()))?;
        if trusts(&config, roots_pem) {
            return Ok(false);
        }
        for webhook in injection_webhooks(&mut config) {
            webhook.client_config.ca_bundle = Some(bundle.clone());
        }
        // The object carries the resourceVersion it was read at: a concurrent write makes
        // this one fail with a conflict rather than undo the other.
        match configs.replace(name, &PostParams::default(), &config).await {
            Ok(_) => {
                tracing::info!(webhook = name, "caBundle set to the mesh root");
                return Ok(true);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(error(e.to_string())),
        }
    }
    Err(error(format!(
        "still changing under us after {ATTEMPTS} attempts"
    )))
}

/// The webhooks of `config` that call the injector (Istio's are named
/// `*.sidecar-injector.istio.io`; others a user added to the configuration are theirs).
fn injection_webhooks(
    config: &mut MutatingWebhookConfiguration,
) -> impl Iterator<Item = &mut MutatingWebhook> {
    config
        .webhooks
        .iter_mut()
        .flatten()
        .filter(|webhook| webhook.name.ends_with(INJECTION_SUFFIX))
}

/// Whether every injection webhook of `config` trusts exactly `roots_pem`.
pub fn trusts(config: &MutatingWebhookConfiguration, roots_pem: &str) -> bool {
    config
        .webhooks
        .iter()
        .flatten()
        .filter(|webhook| webhook.name.ends_with(INJECTION_SUFFIX))
        .all(|webhook| {
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice())
                == Some(roots_pem.as_bytes())
        })
}

/// How Istio names its injection webhooks.
const INJECTION_SUFFIX: &str = "sidecar-injector.istio.io";

#[cfg(test)]
mod tests;
