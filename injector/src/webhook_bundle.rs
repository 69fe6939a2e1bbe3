//! The API server must trust the injection webhook's serving certificate, which the mesh CA
//! signs: as istiod does, the control plane writes the mesh root into the `caBundle` of every
//! webhook of its `MutatingWebhookConfiguration`, and writes it again whenever someone changes
//! it (the caller runs [`patch`] on every change it sees). A write that loses a race with
//! another writer reads the object again and retries.

use k8s_openapi::{api::admissionregistration::v1::MutatingWebhookConfiguration, ByteString};
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
        let mut changed = false;
        for webhook in config.webhooks.iter_mut().flatten() {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
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

#[cfg(test)]
mod tests;
