//! The fake API server as a process of its own on loopback (the `fake-apiserver` binary), for
//! tests and benchmarks that run control-plane replicas against it by hand.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Binaries, Process};

/// A running fake API server.
pub struct Spawned {
    pub process: Process,
    pub port: u16,
    /// A kubeconfig that reaches it.
    pub kubeconfig: PathBuf,
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the fake API server in `work` (its log and kubeconfig go there) serving the manifests
/// in `manifests`, answering TokenReviews with `token_key`, auditing to `audit` when given; it
/// answers once the manifests' objects are in.
pub fn spawn(
    work: &Path,
    manifests: &Path,
    token_key: &Path,
    audit: Option<&Path>,
) -> anyhow::Result<Spawned> {
    let port = free_port()?;
    let mut command = Command::new(Binaries::get()?.fake_apiserver);
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--config-dir")
        .arg(manifests)
        .arg("--token-key")
        .arg(token_key);
    if let Some(audit) = audit {
        command.arg("--audit").arg(audit);
    }
    let mut process = Process::spawn("apiserver", command, &work.join("apiserver.log"))?;
    let url = format!("http://127.0.0.1:{port}/api/v1/namespaces");
    process.wait_until("the API server", Duration::from_secs(120), || {
        Command::new("curl")
            .args(["-sf", "-m", "2", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        remora_local::kubeconfig_for(&format!("127.0.0.1:{port}")),
    )?;
    Ok(Spawned {
        process,
        port,
        kubeconfig,
    })
}
