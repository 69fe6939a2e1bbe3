//! What Kubernetes mounts into an injected pod's `istio-proxy` container under
//! `/var/run/secrets`: the projected service-account token (`tokens/istio-token`, audience
//! `istio-ca`) and the mesh root (`istio/root-cert.pem`, Istio's `istiod-ca-cert` ConfigMap).
//!
//! Every sidecar runs as the same uid (1337) on the same file system, so ownership alone cannot
//! keep one pod's token from another pod's sidecar; the directory tree does. The launcher
//! writes a pod's secrets into `<pod dir>/secrets/istio-proxy/` (root's, mode 0555, so the
//! sidecar can neither change nor plant anything there; the token 1337's with mode 0600 from the
//! moment it exists, opened without following links) below `<pod dir>/secrets/`, which is
//! root's with mode 0700: uid 1337 cannot get through it from the host. (Through
//! `/proc/<pid>/root` of another sidecar it cannot either: `remora-proxy` makes itself
//! non-dumpable.) Root binds `istio-proxy/` over
//! `/var/run/secrets` in the sidecar's private mount namespace before dropping to 1337, and a
//! bind mount is entered at the bound directory itself, so there, and only there, the sidecar
//! reads its own secrets.

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::{self, Write},
    os::unix::fs::{chown, fchown, DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::process::PROXY_UID;

/// Where the sidecar expects its secrets, as in an Istio pod.
pub const MOUNT_POINT: &str = "/var/run/secrets";
const ROOT_UID: u32 = 0;

/// The directory below `pod_dir` that only root may enter.
fn guard_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("secrets")
}

/// The directory bound over [`MOUNT_POINT`].
fn volume_dir(pod_dir: &Path) -> PathBuf {
    guard_dir(pod_dir).join("istio-proxy")
}

/// Where a pod's service-account token is on the host (readable by root only).
pub fn token_path(pod_dir: &Path) -> PathBuf {
    volume_dir(pod_dir).join("tokens/istio-token")
}

/// Writes `token` and `root_pem` for the pod of `pod_dir` and returns the directory to bind
/// over [`MOUNT_POINT`].
pub fn write(pod_dir: &Path, token: &str, root_pem: &str) -> io::Result<PathBuf> {
    let volume = volume_dir(pod_dir);
    private_dir(&guard_dir(pod_dir), ROOT_UID, 0o700)?;
    private_dir(&volume, ROOT_UID, 0o555)?;
    let token_path = token_path(pod_dir);
    let root_path = volume.join("istio/root-cert.pem");
    for (path, contents, mode) in [(&token_path, token, 0o600), (&root_path, root_pem, 0o644)] {
        if let Some(dir) = path.parent() {
            private_dir(dir, ROOT_UID, 0o555)?;
        }
        write_owned(path, contents, mode)?;
    }
    Ok(volume)
}

/// Creates `dir` (if missing) owned by `uid` with `mode`, and makes sure of both if it was
/// there already.
fn private_dir(dir: &Path, uid: u32, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    chown(dir, Some(uid), Some(uid))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Replaces `path` with `contents`, owned by the sidecar's uid, the file never having had a
/// mode wider than `mode`; written aside and renamed, so a sidecar re-reading a refreshed token
/// never sees half of one.
fn write_owned(path: &Path, contents: &str, mode: u32) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    match fs::remove_file(&aside) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&aside)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    fchown(&file, Some(PROXY_UID), Some(PROXY_UID))?;
    file.write_all(contents.as_bytes())?;
    fs::rename(&aside, path)
}

/// Makes sure the mount point exists on the host (binds need a directory to land on; the
/// bind itself only ever happens in a pod's private mount namespace).
pub fn ensure_mount_point() -> io::Result<()> {
    fs::create_dir_all(MOUNT_POINT)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_refreshed_token_replaces_the_old_one_whole_and_stays_the_sidecars() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "writing secrets owned by uid 1337 needs root; run the tests as root"
        );
        let pod = tempfile::tempdir().expect("pod dir");
        let volume = write(pod.path(), "first-token", "ROOT").expect("first write");
        write(pod.path(), "second-token", "ROOT").expect("refresh");
        let token = token_path(pod.path());
        assert_eq!(fs::read_to_string(&token).expect("token"), "second-token");
        let meta = fs::metadata(&token).expect("token metadata");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (PROXY_UID, 0o600));
        let guard = fs::metadata(guard_dir(pod.path())).expect("guard metadata");
        assert_eq!((guard.uid(), guard.mode() & 0o777), (ROOT_UID, 0o700));
        let bound = fs::metadata(&volume).expect("volume metadata");
        assert_eq!((bound.uid(), bound.mode() & 0o777), (ROOT_UID, 0o555));
        let leftovers: Vec<_> = fs::read_dir(token.parent().expect("tokens dir"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["istio-token"], "nothing left aside");
    }
}
