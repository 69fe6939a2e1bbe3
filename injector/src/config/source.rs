//! Where the control plane's config comes from. Local mode reads a directory; a cluster will
//! watch the Kubernetes API. Both hand the discovery server the same thing: a channel that
//! always holds the latest complete [`Catalog`], so the server never sees a half-read source.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

use super::Catalog;

/// A config source, started once.
pub trait Source: Send + 'static {
    /// Starts watching; the receiver always holds the latest complete catalog.
    fn watch(self: Box<Self>) -> Result<watch::Receiver<Arc<Catalog>>, SourceError>;
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("config directory {path} cannot be read: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start watching files: {0}")]
    Watcher(#[source] notify::Error),
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("a config source must be started inside a Tokio runtime")]
    NoRuntime,
}
