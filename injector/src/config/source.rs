//! Where the control plane's config comes from. Local mode reads a directory; a cluster
//! watches the Kubernetes API. Both hand the discovery server the same thing: a channel that
//! always holds the latest complete [`Catalog`], so the server never sees a half-read source.

use std::{collections::BTreeSet, future::Future, path::PathBuf, pin::Pin, sync::Arc};

use tokio::sync::watch;

use super::{Catalog, Rejection};

/// What [`Source::watch`] returns: resolves once the first complete catalog is read.
pub type Watching =
    Pin<Box<dyn Future<Output = Result<watch::Receiver<Arc<Catalog>>, SourceError>> + Send>>;

/// A config source, started once.
pub trait Source: Send + 'static {
    /// Starts watching; the receiver always holds the latest complete catalog.
    fn watch(self: Box<Self>) -> Watching;
}

/// Rejections are logged when they first appear, not again on every rebuild.
pub(super) fn log_new_rejections(catalog: &Catalog, before: &BTreeSet<Rejection>) {
    for rejection in catalog.rejected.iter().filter(|r| !before.contains(r)) {
        tracing::warn!(object = %rejection.object, reason = %rejection.reason, "config rejected");
    }
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
    #[error("the config source stopped before its first catalog was read")]
    Stopped,
}
