//! The launcher's state directory: the mesh CA and token key (kept across runs when the
//! directory is given), the records the control plane reads (`cluster/`), and one directory
//! per pod with its logs and secrets (`pods/<namespace>/<name>/`).
//!
//! The launcher runs as root and clears `cluster/` and `pods/` on every start, so it is careful
//! about which directory it clears: a temporary one is created exclusively under an
//! unpredictable name with mode 0700 (as `mkdtemp` does, so nobody can plant it or its
//! contents beforehand), and a directory the
//! user names must be new, empty, or marked as the launcher's by an earlier run, so a mistyped
//! `--state-dir` can never wipe someone's files.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use tempfile::TempDir;

/// The file marking a directory as a state directory the launcher made.
pub const MARKER: &str = ".remora-state";
const MARKER_TEXT: &str = "A Remora local cluster's state directory: `cluster/` and `pods/` are \
                           cleared whenever a cluster starts with it.\n";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {}: {what}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory {}: not empty and not made by the local launcher (no {MARKER} in it); \
         name a new or empty directory",
        .0.display()
    )]
    NotOurs(PathBuf),
    #[error(
        "state directory {} must be a directory owned by this user and writable by no one else \
         (it will hold the mesh CA's key)",
        .0.display()
    )]
    Unsafe(PathBuf),
    #[error(
        "state directory {} is inside the manifest directory {}: the control plane would read \
         the launcher's records as manifests; name one outside it",
        .state.display(),
        .manifests.display()
    )]
    InsideManifests { state: PathBuf, manifests: PathBuf },
}

/// A state directory; a temporary one is removed on drop unless kept.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _temporary: Option<TempDir>,
}

impl StateDir {
    /// Opens `path` (created when missing), or a fresh `<tmp>/<prefix>-XXXXXX` when `None`
    /// (kept after drop when `keep`). Refuses a directory inside `manifests` (the directory
    /// the control plane watches) and a non-empty one the launcher did not make. Records and
    /// pod directories of an earlier run are cleared; its CA and token key are kept.
    pub fn open(
        path: Option<&Path>,
        prefix: &str,
        keep: bool,
        manifests: &Path,
    ) -> Result<Self, StateError> {
        let io_error = |what, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { what, path, source }
        };
        let parent = path.map_or_else(std::env::temp_dir, Path::to_owned);
        let resolved = resolve(&parent);
        if resolved.starts_with(manifests) {
            return Err(StateError::InsideManifests {
                state: resolved,
                manifests: manifests.to_owned(),
            });
        }
        let (root, temporary) = match path {
            Some(path) => {
                claim(path)?;
                (path.to_owned(), None)
            }
            None => {
                // tempfile creates the directory exclusively, but with the umask's mode unless
                // told otherwise.
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{prefix}-"))
                    .permissions(fs::Permissions::from_mode(0o700))
                    .tempdir()
                    .map_err(io_error("creating", &parent))?;
                if keep {
                    (dir.keep(), None)
                } else {
                    (dir.path().to_owned(), Some(dir))
                }
            }
        };
        fs::write(root.join(MARKER), MARKER_TEXT).map_err(io_error("marking", &root))?;
        let state = Self {
            root,
            _temporary: temporary,
        };
        for dir in [state.cluster_dir(), state.pods_dir()] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("clearing", &dir)(e))
                }
                _ => {}
            }
            fs::create_dir(&dir).map_err(io_error("creating", &dir))?;
        }
        Ok(state)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mesh CA (Istio's plug-in CA file names).
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// The Pods and EndpointSlices the launcher records for the control plane.
    pub fn cluster_dir(&self) -> PathBuf {
        self.root.join("cluster")
    }

    fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// A new pod's directory (logs, secrets, working directory of its containers). The
    /// directory of an earlier pod with the same name becomes `<name>.previous` (replacing
    /// an older one), so each pod's logs tell only its own story and the last one's stay
    /// readable, as `kubectl logs --previous` (pod names end in a digit, so never collide).
    pub fn pod_dir(&self, namespace: &str, name: &str) -> io::Result<PathBuf> {
        let parent = self.pods_dir().join(namespace);
        let dir = parent.join(name);
        if dir.exists() {
            let previous = parent.join(format!("{name}.previous"));
            if previous.exists() {
                fs::remove_dir_all(&previous)?;
            }
            fs::rename(&dir, &previous)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// Makes sure the launcher may clear `path`: it is created when missing, and otherwise must be
/// an empty directory or one carrying the [`MARKER`].
fn claim(path: &Path) -> Result<(), StateError> {
    let io_error = |what| {
        let path = path.to_owned();
        move |source| StateError::Io { what, path, source }
    };
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io_error("creating"));
        }
        Err(e) => return Err(io_error("reading")(e)),
    };
    // Someone else's directory (or a link to one) could hand the launcher a CA or token key of
    // theirs, or links into files root would then overwrite.
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(StateError::Unsafe(path.to_owned()));
    }
    let mut entries = fs::read_dir(path).map_err(io_error("reading"))?;
    let empty = entries.next().is_none();
    let marked = fs::symlink_metadata(path.join(MARKER)).is_ok_and(|m| m.is_file());
    if empty || marked {
        Ok(())
    } else {
        Err(StateError::NotOurs(path.to_owned()))
    }
}

/// `path` made absolute with symlinks resolved as far as it exists and the rest appended
/// (`..` taken lexically there, which is exact because nothing below is a symlink yet), so a
/// directory not created yet can be compared with existing ones.
fn resolve(path: &Path) -> PathBuf {
    let parts: Vec<Component> = path.components().collect();
    for existing in (0..=parts.len()).rev() {
        let prefix: PathBuf = parts[..existing].iter().collect();
        let lookup = if prefix.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            prefix
        };
        if let Ok(mut resolved) = lookup.canonicalize() {
            for part in &parts[existing..] {
                match part {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(name) => resolved.push(name),
                    // The root, a prefix or a leading `.` only ever come first.
                    _ => {}
                }
            }
            return resolved;
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_directory_must_be_new_empty_or_ours() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let manifests = scratch.path().join("manifests");
        fs::create_dir(&manifests).expect("mkdir");

        let new = scratch.path().join("new/state");
        let state = StateDir::open(Some(&new), "t", false, &manifests).expect("new is fine");
        fs::write(state.cluster_dir().join("pod.yaml"), "old").expect("a record");
        fs::write(state.root().join("kept"), "kept").expect("a CA, say");
        drop(state);
        assert!(
            new.join("kept").exists(),
            "a given directory is never removed"
        );

        let again = StateDir::open(Some(&new), "t", false, &manifests).expect("marked: ours");
        assert!(
            !again.cluster_dir().join("pod.yaml").exists(),
            "records cleared"
        );
        assert!(again.root().join("kept").exists(), "the rest kept");

        let empty = scratch.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        StateDir::open(Some(&empty), "t", false, &manifests).expect("empty is fine");

        let someones = scratch.path().join("home");
        fs::create_dir_all(someones.join("cluster")).expect("mkdir");
        fs::write(someones.join("cluster/thesis.tex"), "years of work").expect("write");
        let err = StateDir::open(Some(&someones), "t", false, &manifests).expect_err("not ours");
        assert!(matches!(err, StateError::NotOurs(_)), "{err}");
        assert!(someones.join("cluster/thesis.tex").exists(), "untouched");
    }

    #[test]
    fn a_pod_reusing_a_name_starts_with_a_fresh_directory_and_the_last_one_is_kept() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(None, "rmr-test", false, scratch.path()).expect("temporary");
        let log = |dir: &Path| fs::read_to_string(dir.join("app.log")).ok();
        for run in ["first", "second", "third"] {
            let dir = state.pod_dir("demo", "httpbin-0").expect("pod dir");
            assert_eq!(log(&dir), None, "{run}: fresh");
            fs::write(dir.join("app.log"), run).expect("a log");
        }
        let previous = state.pods_dir().join("demo/httpbin-0.previous");
        assert_eq!(log(&previous).as_deref(), Some("second"));
    }

    #[test]
    fn not_inside_the_manifests() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let manifests = scratch.path().join("manifests");
        fs::create_dir(&manifests).expect("mkdir");
        let manifests = manifests.canonicalize().expect("canonical");
        let sneaky = scratch.path().join("missing/../manifests/state");
        for inside in [manifests.join("state"), sneaky, manifests.clone()] {
            let err = StateDir::open(Some(&inside), "t", false, &manifests).expect_err("inside");
            assert!(matches!(err, StateError::InsideManifests { .. }), "{err}");
        }
        assert!(
            !manifests.join("state").exists(),
            "refused before creating anything"
        );
    }

    #[test]
    fn a_temporary_directory_is_private_and_removed_unless_kept() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(None, "rmr-test", false, scratch.path()).expect("temporary");
        let root = state.root().to_owned();
        let name = root.file_name().and_then(|n| n.to_str()).expect("a name");
        assert!(
            name.starts_with("rmr-test-") && name.len() > "rmr-test-".len(),
            "{name}"
        );
        let mode = fs::metadata(&root).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(state);
        assert!(!root.exists());

        let kept = StateDir::open(None, "rmr-test", true, scratch.path()).expect("temporary");
        let root = kept.root().to_owned();
        drop(kept);
        assert!(
            root.join(MARKER).exists(),
            "kept, and reusable as --state-dir"
        );
        fs::remove_dir_all(root).expect("clean up");
    }
}
