//! The directory of records the control plane reads (`<state>/cluster/`): one file per Pod and
//! one per Service's EndpointSlices. A file is rewritten only when its contents change (every
//! write wakes the control plane's watcher) and removed when its object is gone.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use remora_injector::config::well_known::namespace_of;
use serde::Serialize;

use super::files::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("serializing a record: {0}")]
    Serialize(String),
    #[error("record {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The records directory and what was last written to each file in it.
#[derive(Debug)]
pub struct RecordDir {
    dir: PathBuf,
    pods: Written,
    slices: Written,
}

/// Files of one kind and what was last written to each.
#[derive(Debug, Default)]
struct Written(BTreeMap<PathBuf, String>);

impl RecordDir {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            pods: Written::default(),
            slices: Written::default(),
        }
    }

    /// Makes the directory hold exactly `pods` and, per Service (namespace, name), its slices.
    ///
    /// The control plane may read the directory between any two writes, so the order keeps
    /// every state it can see consistent: a Pod is written before the EndpointSlices that may
    /// list it, and removed only after the slices that listed it were rewritten.
    pub fn sync(
        &mut self,
        pods: &[Pod],
        slices: &[((String, String), Vec<EndpointSlice>)],
    ) -> Result<(), RecordError> {
        let mut pod_files = BTreeMap::new();
        for pod in pods {
            let file = format!(
                "pod-{}-{}.yaml",
                namespace_of(&pod.metadata),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            pod_files.insert(self.dir.join(file), to_yaml(&[pod])?);
        }
        let mut slice_files = BTreeMap::new();
        for ((namespace, name), slices) in slices {
            let file = format!("endpointslices-{namespace}-{name}.yaml");
            slice_files.insert(self.dir.join(file), to_yaml(slices)?);
        }
        self.pods.write_changed(&pod_files)?;
        self.slices.write_changed(&slice_files)?;
        self.slices.remove_unwanted(&slice_files)?;
        self.pods.remove_unwanted(&pod_files)
    }
}

impl Written {
    /// Writes each of `files` whose contents differ from what was last written.
    fn write_changed(&mut self, files: &BTreeMap<PathBuf, String>) -> Result<(), RecordError> {
        for (path, text) in files {
            if self.0.get(path) != Some(text) {
                write_atomic(path, text.as_bytes()).map_err(io_error(path))?;
                self.0.insert(path.clone(), text.clone());
            }
        }
        Ok(())
    }

    /// Removes every file written earlier that is not among `wanted`.
    fn remove_unwanted(&mut self, wanted: &BTreeMap<PathBuf, String>) -> Result<(), RecordError> {
        let gone: Vec<PathBuf> = self
            .0
            .keys()
            .filter(|path| !wanted.contains_key(*path))
            .cloned()
            .collect();
        for path in gone {
            fs::remove_file(&path).map_err(io_error(&path))?;
            self.0.remove(&path);
        }
        Ok(())
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RecordError {
    let path = path.to_owned();
    move |source| RecordError::Io { path, source }
}

/// Objects as one multi-document YAML stream.
fn to_yaml<T: Serialize>(objects: &[T]) -> Result<String, RecordError> {
    objects
        .iter()
        .map(|object| {
            serde_saphyr::to_string(object).map_err(|e| RecordError::Serialize(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|documents| documents.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        serde_saphyr::from_str(&format!("metadata: {{name: {name}, namespace: demo}}"))
            .expect("test Pod")
    }

    #[test]
    fn writes_what_changed_and_removes_what_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut records = RecordDir::new(dir.path().to_owned());
        records
            .sync(&[pod("a-0"), pod("b-0")], &[])
            .expect("first sync");
        let a = dir.path().join("pod-demo-a-0.yaml");
        let before = fs::metadata(&a)
            .expect("a written")
            .modified()
            .expect("mtime");
        let text = fs::read_to_string(&a).expect("a");
        assert!(
            text.contains("kind: Pod") && text.contains("name: a-0"),
            "{text}"
        );

        std::thread::sleep(std::time::Duration::from_millis(20));
        records.sync(&[pod("a-0")], &[]).expect("second sync");
        let after = fs::metadata(&a).expect("a kept").modified().expect("mtime");
        assert_eq!(before, after, "unchanged records are not rewritten");
        assert!(!dir.path().join("pod-demo-b-0.yaml").exists(), "gone");
    }
}
