//! Where the control plane's config comes from. Local mode reads a directory; a cluster
//! watches the Kubernetes API. Both hand the discovery server the same thing: a channel that
//! always holds the latest complete [`Catalog`], so the server never sees a half-read source.

use std::{
    collections::BTreeSet, future::Future, path::PathBuf, pin::Pin, sync::Arc, time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{Catalog, Rejection, Subject};

/// How long a source must stay quiet before it rebuilds its catalog.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a rebuild waits after the first change of a burst, however busy the source
/// stays: a file written without pause must not hold every other change back.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// What [`Source::watch`] returns: resolves once the first complete catalog is read.
pub type Watching =
    Pin<Box<dyn Future<Output = Result<watch::Receiver<Arc<Catalog>>, SourceError>> + Send>>;

/// A config source, started once.
pub trait Source: Send + 'static {
    /// Starts watching; the receiver always holds the latest complete catalog.
    fn watch(self: Box<Self>) -> Watching;
}

/// What the rejections of a catalog were about, and why: a rejection is new unless its object
/// was rejected for the same reason before (wherever it was read last: an API object's
/// resourceVersion changes with every write to it).
pub(super) type Seen = BTreeSet<(Subject, String)>;

pub(super) fn seen(catalog: &Catalog) -> Seen {
    catalog
        .rejected
        .iter()
        .map(|r| (r.subject.clone(), r.reason.clone()))
        .collect()
}

/// The rejections of `catalog` not in `before`.
pub(super) fn new_rejections<'c>(
    catalog: &'c Catalog,
    before: &'c Seen,
) -> impl Iterator<Item = &'c Rejection> {
    catalog
        .rejected
        .iter()
        .filter(|r| !before.contains(&(r.subject.clone(), r.reason.clone())))
}

/// Rejections are logged when they first appear, not again on every rebuild.
pub(super) fn log_new_rejections(catalog: &Catalog, before: &Seen) {
    for rejection in new_rejections(catalog, before) {
        tracing::warn!(object = %rejection.object, reason = %rejection.reason, "config rejected");
    }
}

/// Waits for a burst of changes, whose first has just arrived, to end: until none came for
/// [`DEBOUNCE`], or [`MAX_DELAY`] after the first, whichever is sooner; `note` sees each
/// change. False once nobody can send changes any more.
pub(super) async fn settle<T>(
    changes: &mut mpsc::UnboundedReceiver<T>,
    mut note: impl FnMut(T),
) -> bool {
    let latest = Instant::now() + MAX_DELAY;
    loop {
        let quiet_until = (Instant::now() + DEBOUNCE).min(latest);
        match tokio::time::timeout_at(quiet_until, changes.recv()).await {
            Ok(Some(change)) => note(change),
            Ok(None) => return false,
            Err(_settled) => return true,
        }
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

#[cfg(test)]
mod tests;
