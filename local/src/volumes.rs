//! A pod's volumes as the kubelet provides them, on the host: emptyDirs, the projected
//! service-account token (audience `istio-ca`, minted by the launcher's token issuer), the
//! mesh root as ConfigMap `istio-ca-root-cert` would hold it, and downward-API files. Each
//! container mounts them at its `volumeMounts` in the private mount namespace it runs in
//! ([`bind_and_exec`]).
//!
//! Every sidecar runs as the same uid (1337) on the same file system, so ownership alone cannot
//! keep one pod's token from another pod's sidecar; the directory tree does. A pod's volumes
//! live in `<pod dir>/volumes/<volume>/` below `<pod dir>/volumes/`, which is root's with mode
//! 0700: no other uid can get through it from the host. (Through `/proc/<pid>/root` of another
//! sidecar it cannot either: `remora-proxy` makes itself non-dumpable.) A volume of files is
//! root's, mode 0555, so a container can neither change nor plant anything there; a token is
//! its mounting container's user's with mode 0600 from the moment it exists, written aside and
//! renamed (opened without following links), so a refresh is never seen half done. Root binds
//! each volume at its mount path before the container's process drops to its user, and a bind
//! mount is entered at the bound directory itself, so there, and only there, the container
//! reads its pod's files.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::{self, DirBuilder, OpenOptions},
    io::{self, Write},
    os::unix::fs::{chown, fchown, DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, PodSpec};

/// The only audience the launcher's token issuer mints for (Istio's CA's).
const TOKEN_AUDIENCE: &str = "istio-ca";
/// The ConfigMap holding the mesh root in every namespace, and its key.
const ROOT_CONFIG_MAP: (&str, &str) = ("istio-ca-root-cert", "root-cert.pem");
/// Istio's names for the sidecar's token volume and file.
const ISTIO_TOKEN: (&str, &str) = ("istio-token", "istio-token");
const ROOT_UID: u32 = 0;
/// Binds each `(source, target, rw|ro)` triple given before `--`, then becomes what follows
/// it. Run as root in the private mount namespace `ip netns exec` made.
const BIND_AND_EXEC: &str = r#"while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 1; fi; shift 3; done; shift; exec "$@""#;

/// A volume mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// One volume of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePlan {
    pub name: String,
    pub source: Source,
}

/// What a volume holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An empty directory every container of the pod may write.
    Empty,
    /// Files, at paths relative to the volume.
    Files(Vec<(String, File)>),
}

/// A file of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum File {
    /// The pod's service-account token (audience `istio-ca`), minted when written.
    Token,
    /// The mesh root certificate(s).
    Root,
    /// Known when planning (downward-API fields).
    Text(String),
}

/// What writing a pod's volumes needs besides the plan.
pub struct Secrets<'a> {
    /// Mints a token for the pod, once per write.
    pub mint: &'a dyn Fn() -> Result<String, String>,
    pub roots_pem: &'a str,
}

/// The volumes of `spec`, checked to be kinds the launcher provides; an error names the field
/// (below `spec.`) and what is wrong.
pub fn plan(pod: &Pod, spec: &PodSpec) -> Result<Vec<VolumePlan>, (String, String)> {
    spec.volumes
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, volume)| {
            let at = |field: &str, message: String| (format!("volumes[{i}].{field}"), message);
            let source = if volume.empty_dir.is_some() {
                Source::Empty
            } else if let Some(map) = &volume.config_map {
                Source::Files(config_map(&map.name, map.items.as_deref()).map_err(|m| at("configMap", m))?)
            } else if let Some(downward) = &volume.downward_api {
                let items = downward.items.as_deref().unwrap_or_default();
                Source::Files(downward_files(pod, items).map_err(|m| at("downwardAPI", m))?)
            } else if let Some(projected) = &volume.projected {
                let mut files = Vec::new();
                for (j, projection) in projected.sources.iter().flatten().enumerate() {
                    let at = |m| at(&format!("projected.sources[{j}]"), m);
                    if let Some(token) = &projection.service_account_token {
                        let audience = token.audience.as_deref().unwrap_or_default();
                        if audience != TOKEN_AUDIENCE {
                            return Err(at(format!(
                                "serviceAccountToken.audience: {audience:?}: only {TOKEN_AUDIENCE:?} is minted locally"
                            )));
                        }
                        files.push((relative(&token.path).map_err(at)?, File::Token));
                    } else if let Some(map) = &projection.config_map {
                        files.extend(config_map(&map.name, map.items.as_deref()).map_err(at)?);
                    } else if let Some(downward) = &projection.downward_api {
                        let items = downward.items.as_deref().unwrap_or_default();
                        files.extend(downward_files(pod, items).map_err(at)?);
                    } else {
                        return Err(at(
                            "only serviceAccountToken, configMap and downwardAPI are projected locally"
                                .to_owned(),
                        ));
                    }
                }
                Source::Files(files)
            } else {
                return Err((
                    format!("volumes[{i}]"),
                    format!(
                        "{:?}: only emptyDir, projected, configMap {:?} and downwardAPI volumes \
                         are available locally",
                        volume.name, ROOT_CONFIG_MAP.0
                    ),
                ));
            };
            Ok(VolumePlan {
                name: volume.name.clone(),
                source,
            })
        })
        .collect()
}

/// The files of ConfigMap `name`: only the mesh root's exists locally.
fn config_map(name: &str, items: Option<&[KeyToPath]>) -> Result<Vec<(String, File)>, String> {
    let (root_map, root_key) = ROOT_CONFIG_MAP;
    if name != root_map {
        return Err(format!(
            "ConfigMap {name:?}: only {root_map:?} (the mesh root) exists locally"
        ));
    }
    match items {
        None => Ok(vec![(root_key.to_owned(), File::Root)]),
        Some(items) => items
            .iter()
            .map(|item| {
                if item.key != root_key {
                    return Err(format!(
                        "key {:?}: {root_map} holds only {root_key:?}",
                        item.key
                    ));
                }
                Ok((relative(&item.path)?, File::Root))
            })
            .collect(),
    }
}

/// Downward-API files: labels and annotations as the kubelet writes them (`key="value"` lines,
/// sorted), or one field's value.
fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
) -> Result<Vec<(String, File)>, String> {
    let meta = &pod.metadata;
    let lines = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}\n", quoted(v)))
            .collect::<String>()
    };
    items
        .iter()
        .map(|item| {
            let field = item.field_ref.as_ref().map(|f| f.field_path.as_str());
            let text = match field {
                Some("metadata.labels") => lines(meta.labels.as_ref()),
                Some("metadata.annotations") => lines(meta.annotations.as_ref()),
                Some("metadata.name") => meta.name.clone().unwrap_or_default(),
                Some("metadata.namespace") => meta.namespace.clone().unwrap_or_default(),
                Some("metadata.uid") => meta.uid.clone().unwrap_or_default(),
                other => {
                    return Err(format!(
                        "items {:?}: {other:?}: only the fieldRefs metadata.labels, \
                         metadata.annotations, metadata.name, metadata.namespace and \
                         metadata.uid are written locally",
                        item.path
                    ))
                }
            };
            Ok((relative(&item.path)?, File::Text(text)))
        })
        .collect()
}

/// `value` in double quotes, escaped as Go's `%q` escapes it.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path inside a volume: relative, without `..`.
fn relative(path: &str) -> Result<String, String> {
    let inside = !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    inside
        .then(|| path.to_owned())
        .ok_or_else(|| format!("path {path:?}: must be relative and stay inside the volume"))
}

/// The directory below `pod_dir` that only root may enter.
fn guard_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// Where volume `name` of the pod of `pod_dir` is on the host.
fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    guard_dir(pod_dir).join(name)
}

/// Where an injected pod's service-account token is on the host (readable by root only; its
/// sidecar sees it at `/var/run/secrets/tokens/istio-token`).
pub fn token_path(pod_dir: &Path) -> PathBuf {
    let (volume, file) = ISTIO_TOKEN;
    volume_dir(pod_dir, volume).join(file)
}

/// Writes (or rewrites: a fresh token, the current root) every volume of `volumes` for the pod
/// of `pod_dir`; a volume's files belong to `owner(volume)` (root when `None`).
pub fn write(
    pod_dir: &Path,
    volumes: &[VolumePlan],
    owner: impl Fn(&str) -> Option<u32>,
    secrets: &Secrets<'_>,
) -> io::Result<()> {
    private_dir(&guard_dir(pod_dir), ROOT_UID, 0o700)?;
    for volume in volumes {
        let owner = owner(&volume.name).unwrap_or(ROOT_UID);
        let dir = volume_dir(pod_dir, &volume.name);
        match &volume.source {
            Source::Empty => private_dir(&dir, owner, 0o777)?,
            Source::Files(files) => {
                private_dir(&dir, ROOT_UID, 0o555)?;
                for (path, file) in files {
                    let path = dir.join(path);
                    if let Some(parent) = path.parent().filter(|p| *p != dir) {
                        fs::create_dir_all(parent)?;
                        private_dir(parent, ROOT_UID, 0o555)?;
                    }
                    let (contents, mode) = match file {
                        File::Token => ((secrets.mint)().map_err(io::Error::other)?, 0o600),
                        File::Root => (secrets.roots_pem.to_owned(), 0o644),
                        File::Text(text) => (text.clone(), 0o644),
                    };
                    write_owned(&path, &contents, mode, owner)?;
                }
            }
        }
    }
    Ok(())
}

/// Whether any volume holds a token, which must be refreshed before it expires.
pub fn has_token(volumes: &[VolumePlan]) -> bool {
    volumes.iter().any(|volume| match &volume.source {
        Source::Files(files) => files.iter().any(|(_, file)| *file == File::Token),
        Source::Empty => false,
    })
}

/// `argv` prefixed so that, run as root in a private mount namespace, it first binds `mounts`,
/// volumes of the pod of `pod_dir`, at their mount paths (created on the host if
/// missing: a bind needs a directory to land on, and the bind itself happens only in the
/// container's namespace).
pub fn bind_and_exec(
    pod_dir: &Path,
    mounts: &[Mount],
    argv: Vec<OsString>,
) -> io::Result<Vec<OsString>> {
    if mounts.is_empty() {
        return Ok(argv);
    }
    let mut out: Vec<OsString> = vec!["sh".into(), "-c".into(), BIND_AND_EXEC.into(), "sh".into()];
    for mount in mounts {
        fs::create_dir_all(&mount.path)?;
        out.push(volume_dir(pod_dir, &mount.volume).into());
        out.push(mount.path.clone().into());
        out.push(if mount.read_only { "ro" } else { "rw" }.into());
    }
    out.push("--".into());
    out.extend(argv);
    Ok(out)
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

/// Replaces `path` with `contents`, owned by `uid`, the file never having had a mode wider
/// than `mode`; written aside and renamed, so a reader never sees half of it.
fn write_owned(path: &Path, contents: &str, mode: u32, uid: u32) -> io::Result<()> {
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
    fchown(&file, Some(uid), Some(uid))?;
    file.write_all(contents.as_bytes())?;
    fs::rename(&aside, path)
}

#[cfg(test)]
mod tests;
