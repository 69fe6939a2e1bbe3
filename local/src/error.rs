//! Why a local cluster could not be brought up or changed: one error for the launcher's public
//! API, wrapping the per-module errors (each of which names the pod or file at fault).

use std::{io, path::Path, path::PathBuf};

use remora_injector::{ca::CaError, token::TokenError};

use super::{
    admission::AdmissionError, bins::BinariesError, control_plane::ControlPlaneError,
    network::NetworkError, plan::PlanError, pod::PodError, record_dir::RecordError,
    state::StateError,
};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the mesh CA: {0}")]
    Ca(#[from] CaError),
    #[error("the token key: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("the pod network: {0}")]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error("writing the pod list: {0}")]
    Index(#[source] serde_json::Error),
    #[error("pod {pod}: {source}")]
    Admission {
        pod: String,
        #[source]
        source: AdmissionError,
    },
    #[error("pod {pod} as admitted: spec.{field}: {message}")]
    Unrunnable {
        pod: String,
        field: String,
        message: String,
    },
    #[error("no Deployment {namespace}/{name} in the manifests (or the control plane rejects it)")]
    NoDeployment { namespace: String, name: String },
}

pub(super) fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalError {
    let path = path.to_owned();
    move |source| LocalError::Io { what, path, source }
}
