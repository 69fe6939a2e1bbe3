//! Local mode's config source: directories of ordinary manifests (and a `mesh.yaml`), re-read
//! whenever anything in them changes.
//!
//! Everything is re-read on every change rather than patched file by file: a directory is
//! small, and a full read can never drift from what is on disk. Changes are debounced (an
//! editor or `kubectl`-style tool writes a file in several steps), and a re-read that finds
//! exactly the same documents publishes nothing, so sidecars are not sent identical snapshots.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use notify::{
    event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind},
    Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher,
};
use tokio::sync::{mpsc, watch};

use super::{
    source::{log_new_rejections, seen, settle, Seen, Watching},
    Catalog, Rejection, Source, SourceError,
};

/// Reads every `*.yaml` / `*.yml` file under some directories (recursively, in path order,
/// skipping hidden files and directories) and watches them for changes.
#[derive(Debug)]
pub struct DirectorySource {
    dirs: Vec<PathBuf>,
}

impl DirectorySource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self { dirs }
    }
}

/// Reads `dirs` once, exactly as a [`DirectorySource`] reads them (the same files in the same
/// order, an unreadable one among the rejections), without watching: the catalog the control
/// plane serves for these files as they are now. For whoever must agree with a control plane
/// reading `dirs` about what it admitted, such as the local launcher.
pub fn read_directories(dirs: &[PathBuf]) -> Catalog {
    Files::read(dirs).catalog()
}

impl Source for DirectorySource {
    fn watch(self: Box<Self>) -> Watching {
        Box::pin(async move { self.start() })
    }
}

impl DirectorySource {
    fn start(self) -> Result<watch::Receiver<Arc<Catalog>>, SourceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SourceError::NoRuntime)?;
        for dir in &self.dirs {
            fs::read_dir(dir).map_err(|source| SourceError::Directory {
                path: dir.clone(),
                source,
            })?;
        }
        let (changed, changes) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if is_change(&event) {
                // The receiver is gone only once the source has stopped.
                let _ = changed.send(());
            }
        })
        .map_err(SourceError::Watcher)?;
        for dir in &self.dirs {
            watcher
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|source| SourceError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        // Watching starts before the first read, so no change can fall between the two.
        let files = Files::read(&self.dirs);
        let catalog = files.catalog();
        log_new_rejections(&catalog, &Seen::new());
        let (publish, catalogs) = watch::channel(Arc::new(catalog));
        runtime.spawn(reload(self.dirs, watcher, changes, publish, files));
        Ok(catalogs)
    }
}

/// Whether `event` may change what a re-read finds: a manifest (`*.yaml`, `*.yml`) written,
/// created, removed or renamed, or a directory created, removed or renamed (its manifests come
/// and go with it). Opening or reading is not a change, nor is anything done to other files,
/// such as a log written next to the manifests many times a second.
fn is_change(event: &notify::Result<Event>) -> bool {
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, "file watcher error; re-reading config");
            return true;
        }
    };
    if event.need_rescan() {
        return true;
    }
    let paths = || event.paths.iter();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => paths().any(|p| is_manifest(p)),
        EventKind::Access(_) => false,
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
        // A directory renamed away cannot be looked at any more: a path that is gone may
        // have been one.
        EventKind::Modify(ModifyKind::Name(_)) => {
            paths().any(|p| is_manifest(p) || p.is_dir() || !p.exists())
        }
        // Some platforms do not say whether a directory was created.
        EventKind::Create(_) => paths().any(|p| is_manifest(p) || p.is_dir()),
        _ => paths().any(|p| is_manifest(p)),
    }
}

/// Re-reads the directories after each burst of changes, until nobody listens any more.
async fn reload(
    dirs: Vec<PathBuf>,
    // Dropping the watcher stops the events, so it lives as long as this task.
    _watcher: RecommendedWatcher,
    mut changes: mpsc::UnboundedReceiver<()>,
    publish: watch::Sender<Arc<Catalog>>,
    mut last: Files,
) {
    loop {
        tokio::select! {
            change = changes.recv() => if change.is_none() { return },
            () = publish.closed() => return,
        }
        if !settle(&mut changes, |()| {}).await {
            return;
        }
        let reading = dirs.clone();
        let Ok(files) = tokio::task::spawn_blocking(move || Files::read(&reading)).await else {
            tracing::warn!("re-reading the config directories failed; keeping the last config");
            continue;
        };
        if files == last {
            tracing::debug!("config files changed on disk but their contents did not");
            continue;
        }
        let building = files.clone();
        let Ok(catalog) = tokio::task::spawn_blocking(move || building.catalog()).await else {
            tracing::warn!("building the config catalog failed; keeping the last config");
            continue;
        };
        let before = seen(&publish.borrow());
        log_new_rejections(&catalog, &before);
        tracing::info!(
            documents = files.documents.len(),
            rejected = catalog.rejected.len(),
            "config reloaded"
        );
        last = files;
        if publish.send(Arc::new(catalog)).is_err() {
            return;
        }
    }
}

/// One read of the directories.
#[derive(Debug, Clone, PartialEq)]
struct Files {
    /// `(path, contents)` in path order, directory by directory.
    documents: Vec<(String, String)>,
    unreadable: Vec<Rejection>,
}

impl Files {
    fn read(dirs: &[PathBuf]) -> Self {
        let mut files = Files {
            documents: Vec::new(),
            unreadable: Vec::new(),
        };
        for dir in dirs {
            files.read_dir(dir);
        }
        files
    }

    fn read_dir(&mut self, dir: &Path) {
        let entries = match fs::read_dir(dir).and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.path()))
                .collect::<io::Result<Vec<_>>>()
        }) {
            Ok(entries) => entries,
            Err(e) => {
                self.unreadable.push(unreadable(dir, &e));
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .into_iter()
            .filter(|path| {
                // Hidden files, editor swap files (`.x.yaml.swp`, `.#x.yaml`) and the `..data`
                // directories of a mounted ConfigMap.
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| !name.starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            // Real directories are walked; symlinked ones are not, so a loop cannot trap us.
            let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir {
                self.read_dir(&path);
            } else if is_manifest(&path) && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                match fs::read_to_string(&path) {
                    Ok(text) => self.documents.push((path.display().to_string(), text)),
                    Err(e) => self.unreadable.push(unreadable(&path, &e)),
                }
            }
        }
    }

    /// The catalog of these files, with the unreadable ones among its rejections.
    fn catalog(&self) -> Catalog {
        let mut catalog = Catalog::build(self.documents.clone());
        catalog
            .rejected
            .splice(0..0, self.unreadable.iter().cloned());
        catalog
    }
}

/// `*.yaml` and `*.yml`; editor backups (`x.yaml~`, `#x.yaml#`) end differently.
fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension == "yaml" || extension == "yml")
}

fn unreadable(path: &Path, error: &io::Error) -> Rejection {
    let origin = path.display().to_string();
    Rejection::unidentified(&origin, origin.clone(), format!("cannot be read: {error}"))
}

#[cfg(test)]
mod tests;
