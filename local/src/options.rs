//! How to bring a local cluster up.

use std::{path::PathBuf, time::Duration};

use super::bins::Binaries;

/// How to bring a cluster up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prefix of every network namespace (with the launcher's pid, so concurrent clusters,
    /// e.g. one per test, stay apart).
    pub name: String,
    /// Where the CA, token key, records and pod directories live; a fresh temporary directory
    /// when `None`.
    pub state_dir: Option<PathBuf>,
    /// Keep a temporary state directory (logs) after teardown.
    pub keep_state: bool,
    /// The binaries to run; [`Binaries::locate`] when `None`.
    pub binaries: Option<Binaries>,
    /// The most any one thing (control plane, sidecar, app port) may take to become ready.
    pub timeout: Duration,
    /// Run the control plane as in a cluster, against this Kubernetes API server program
    /// serving the manifests and records (see `control_plane`); files when `None`.
    pub api_server: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name: "rmr".to_owned(),
            state_dir: None,
            keep_state: false,
            binaries: None,
            timeout: Duration::from_secs(30),
            api_server: None,
        }
    }
}
