//! Where the launcher finds the binaries it runs in pods: `REMORA_BIN_DIR` when set (the test
//! harness builds them and points there), else the directory of the running executable, which
//! is where cargo and the container image both put them side by side.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The environment variable naming the directory of Remora's binaries.
pub const BIN_DIR_ENV: &str = "REMORA_BIN_DIR";

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("locating the running executable: {0}")]
    CurrentExe(#[source] io::Error),
    #[error(
        "{} is missing (build with `cargo build --workspace --bins`, or set {BIN_DIR_ENV})",
        .0.display()
    )]
    Missing(PathBuf),
}

/// Paths of the binaries a local cluster runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    /// `remora-proxy`, the sidecar.
    pub proxy: PathBuf,
    /// `remora-init`, the init container.
    pub init: PathBuf,
    /// `remora-injector`, the control plane.
    pub injector: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`, checked to exist.
    pub fn in_dir(dir: &Path) -> Result<Self, BinariesError> {
        let bins = Self {
            dir: dir.to_owned(),
            proxy: dir.join("remora-proxy"),
            init: dir.join("remora-init"),
            injector: dir.join("remora-injector"),
        };
        for bin in [&bins.proxy, &bins.init, &bins.injector] {
            if !bin.is_file() {
                return Err(BinariesError::Missing(bin.clone()));
            }
        }
        Ok(bins)
    }

    /// Replaces `program`, a container's command, with the path of the Remora binary of that
    /// name when there is one (containers name them as the images put them on `PATH`);
    /// whether it was one of Remora's.
    pub fn resolve(&self, program: &mut std::ffi::OsString) -> bool {
        let name = Path::new(program.as_os_str());
        if name.components().count() != 1 {
            return false;
        }
        let path = self.dir.join(name);
        let ours = [&self.proxy, &self.init, &self.injector].contains(&&path);
        if ours {
            *program = path.into_os_string();
        }
        ours
    }

    /// The binaries in `$REMORA_BIN_DIR`, or next to the running executable.
    pub fn locate() -> Result<Self, BinariesError> {
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().map_err(BinariesError::CurrentExe)?;
                exe.parent().map(Path::to_owned).unwrap_or_default()
            }
        };
        Self::in_dir(&dir)
    }
}
