//! What Kubernetes mounts into an injected pod's `istio-proxy` container under
//! `/var/run/secrets`: the projected service-account token (`tokens/istio-token`, audience
//! `istio-ca`) and the mesh root (`istio/root-cert.pem`, Istio's `istiod-ca-cert` ConfigMap).
//! The launcher writes them into the pod's directory, owned by the sidecar's uid, and binds
//! that directory over `/var/run/secrets` in the sidecar's private mount namespace.

use std::{
    fs, io,
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
};

use super::process::PROXY_UID;

/// Where the sidecar expects its secrets, as in an Istio pod.
pub const MOUNT_POINT: &str = "/var/run/secrets";

/// Writes `token` and `root_pem` below `pod_dir/secrets` and returns that directory.
pub fn write(pod_dir: &Path, token: &str, root_pem: &str) -> io::Result<PathBuf> {
    let secrets = pod_dir.join("secrets");
    let files = [
        ("tokens", "istio-token", token, 0o600),
        ("istio", "root-cert.pem", root_pem, 0o644),
    ];
    owned_dir(&secrets)?;
    for (dir, file, contents, mode) in files {
        let dir = secrets.join(dir);
        owned_dir(&dir)?;
        let path = dir.join(file);
        fs::write(&path, contents)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        chown(&path, Some(PROXY_UID), Some(PROXY_UID))?;
    }
    Ok(secrets)
}

fn owned_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    chown(dir, Some(PROXY_UID), Some(PROXY_UID))
}

/// Makes sure the mount point exists on the host (binds need a directory to land on; the
/// bind itself only ever happens in a pod's private mount namespace).
pub fn ensure_mount_point() -> io::Result<()> {
    fs::create_dir_all(MOUNT_POINT)
}
