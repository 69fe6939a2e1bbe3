//! File writes the control plane can watch safely: the launcher writes records into a
//! directory the control plane re-reads on change, so a half-written file must never be seen.
//! Each write goes to a hidden temporary file in the same directory (the directory source
//! skips hidden files) and is renamed into place, which is atomic within a filesystem.

use std::{
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
};

/// Writes `contents` to `path` atomically (readers see the old file or the new one).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = hidden_temp(path);
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// `dir/.name.tmp` for `dir/name`.
fn hidden_temp(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_through_a_hidden_temporary() {
        assert_eq!(
            hidden_temp(Path::new("/s/cluster/pod-a.yaml")),
            Path::new("/s/cluster/.pod-a.yaml.tmp")
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pod.yaml");
        write_atomic(&path, b"one").expect("first write");
        write_atomic(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["pod.yaml"], "no temporary left behind");
    }
}
