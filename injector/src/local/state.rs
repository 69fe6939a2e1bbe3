//! The launcher's state directory: the mesh CA and token key (kept across runs when the
//! directory is given), the records the control plane reads (`cluster/`), and one directory
//! per pod with its logs and secrets (`pods/<namespace>/<name>/`).

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// A state directory; a temporary one is removed on drop unless kept.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    remove_on_drop: bool,
}

impl StateDir {
    /// Opens `path` (created when missing), or a fresh `<tmp>/<name>` when `None`. Records and
    /// pod directories of an earlier run are cleared; its CA and token key are kept.
    pub fn open(path: Option<&Path>, name: &str, keep: bool) -> io::Result<Self> {
        let (root, temporary) = match path {
            Some(path) => (path.to_owned(), false),
            None => (std::env::temp_dir().join(name), true),
        };
        if temporary {
            let _ = fs::remove_dir_all(&root);
        }
        let state = Self {
            root,
            remove_on_drop: temporary && !keep,
        };
        for dir in [state.cluster_dir(), state.pods_dir()] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        for dir in [&state.root, &state.cluster_dir(), &state.pods_dir()] {
            create_traversable(dir)?;
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

    /// A pod's directory (logs, secrets, working directory of its containers), created
    /// readable by the sidecar's uid.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> io::Result<PathBuf> {
        let namespace_dir = self.pods_dir().join(namespace);
        create_traversable(&namespace_dir)?;
        let dir = namespace_dir.join(name);
        create_traversable(&dir)?;
        Ok(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Creates `dir` with mode 0755, so the sidecar (uid 1337) can reach files below it.
pub fn create_traversable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}
