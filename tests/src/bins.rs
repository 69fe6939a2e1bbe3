//! Finding the workspace's binaries (`remora-proxy`, `remora-init`, `remora-injector`), built
//! fresh so a test never runs a stale proxy.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{bail, Context};

#[derive(Clone, Debug)]
pub struct Binaries {
    /// The directory holding them; pass it on as `REMORA_BIN_DIR` to child harness processes.
    pub dir: PathBuf,
    pub proxy: PathBuf,
    pub init: PathBuf,
    /// The tests' fake Kubernetes API server (`remora_e2e::apiserver`).
    pub fake_apiserver: PathBuf,
}

impl Binaries {
    /// The binaries next to the running executable (`target/<profile>/`), after one
    /// `cargo build --workspace --bins` per process when started by cargo. `REMORA_BIN_DIR`
    /// points elsewhere and skips the build.
    pub fn get() -> anyhow::Result<Self> {
        static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = BUILT
            .get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        let bins = Self {
            dir: dir.clone(),
            proxy: dir.join("remora-proxy"),
            init: dir.join("remora-init"),
            fake_apiserver: dir.join("fake-apiserver"),
        };
        for bin in [&bins.proxy, &bins.init, &bins.fake_apiserver] {
            if !bin.is_file() {
                bail!(
                    "{} is missing; build with `cargo build --workspace --bins`",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }

    /// The same binaries as the local cluster launcher wants them (the control plane too).
    pub fn launcher(&self) -> anyhow::Result<remora_local::Binaries> {
        Ok(remora_local::Binaries::in_dir(&self.dir)?)
    }
}

fn locate_and_build() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(remora_local::BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().context("executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        build(Path::new(&cargo), dir)?;
    }
    Ok(dir.to_owned())
}

fn build(cargo: &Path, profile_dir: &Path) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the harness crate lives inside the workspace")?;
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--workspace", "--bins", "--quiet"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // Cargo describes the running package to it in these; some build scripts (ring's) track
    // them, so passing them on would rebuild half the dependency tree for nothing.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --workspace --bins failed ({status})");
    }
    Ok(())
}
