//! The CA's key material in a cluster, where istiod keeps it, so that every control-plane
//! replica signs with the same root: the operator's `cacerts` Secret (Istio's plug-in layout)
//! when there is one; else `istio-ca-secret`, made by whichever replica gets there first. A
//! replica that finds neither makes a root and creates the Secret; if another replica created
//! it meanwhile, the API server refuses the second and the loser reads the winner's back, so
//! a mesh never has two roots.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, ByteString};
use kube::{
    api::{Api, PostParams},
    core::ObjectMeta,
};

use super::{Authority, CaError, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};

/// The operator's plug-in CA material (Istio's `cacerts`).
pub const PLUGGED_IN: &str = "cacerts";
/// The self-signed root a control plane made (Istio's `istio-ca-secret`).
pub const SELF_SIGNED: &str = "istio-ca-secret";
/// The type istiod gives `istio-ca-secret`.
const SELF_SIGNED_TYPE: &str = "istio.io/ca-root";

/// The mesh CA of the control plane in `namespace`: plugged in, else the self-signed root the
/// replicas share (made now if none exists).
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<Authority, CaError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(plugged) = get(&secrets, PLUGGED_IN).await? {
        tracing::info!(secret = PLUGGED_IN, "using the plugged-in CA");
        return authority(&plugged, PLUGGED_IN);
    }
    if let Some(shared) = get(&secrets, SELF_SIGNED).await? {
        return authority(&shared, SELF_SIGNED);
    }
    let made = Authority::generate(trust_domain)?;
    match secrets
        .create(&PostParams::default(), &secret_of(&made))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = SELF_SIGNED, "created a new mesh root");
            Ok(made)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(secret = SELF_SIGNED, "another replica made the root first");
            let winner = get(&secrets, SELF_SIGNED)
                .await?
                .ok_or_else(|| api_error(SELF_SIGNED, "created, then gone"))?;
            authority(&winner, SELF_SIGNED)
        }
        Err(e) => Err(api_error(SELF_SIGNED, e)),
    }
}

async fn get(secrets: &Api<Secret>, name: &str) -> Result<Option<Secret>, CaError> {
    secrets.get_opt(name).await.map_err(|e| api_error(name, e))
}

fn api_error(secret: &str, message: impl ToString) -> CaError {
    CaError::Api {
        secret: secret.to_owned(),
        message: message.to_string(),
    }
}

/// The CA in Secret `name`: `ca-cert.pem` and `ca-key.pem`, with `root-cert.pem` and
/// `cert-chain.pem` for a plugged-in intermediate (a self-signed root is its own root); or, as
/// cert-manager writes it and Istio also reads it, `tls.crt`, `tls.key` and `ca.crt`.
fn authority(secret: &Secret, name: &str) -> Result<Authority, CaError> {
    let data = secret.data.as_ref();
    let text = |key: &str| {
        data.and_then(|data| data.get(key))
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .filter(|text| !text.trim().is_empty())
    };
    let missing = |key: &str| api_error(name, format!("has no {key}"));
    let (ca_cert, key, roots, chain) = match (text(CA_CERT), text(TLS_CERT)) {
        (None, Some(tls_cert)) => (
            tls_cert,
            text(TLS_KEY).ok_or_else(|| missing(TLS_KEY))?,
            text(TLS_ROOT),
            None,
        ),
        (ca_cert, _) => (
            ca_cert.ok_or_else(|| missing(CA_CERT))?,
            text(CA_KEY).ok_or_else(|| missing(CA_KEY))?,
            text(ROOT_CERT),
            text(CERT_CHAIN),
        ),
    };
    let roots = roots.unwrap_or_else(|| ca_cert.clone());
    Authority::from_pem(&ca_cert, &key, roots, chain, &format!("Secret {name}"))
}

/// cert-manager's names for the CA certificate, its key and the root.
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const TLS_ROOT: &str = "ca.crt";

/// `istio-ca-secret` holding `ca`, as istiod writes it.
fn secret_of(ca: &Authority) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CA_CERT, ca.chain_pem.clone()),
        (CA_KEY, ca.issuer.key().serialize_pem()),
        (ROOT_CERT, ca.roots_pem.clone()),
    ]
    .into_iter()
    .map(|(key, pem)| (key.to_owned(), ByteString(pem.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some(SELF_SIGNED_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests;
