//! What the fake API server holds for directories of manifests: the objects `kubectl apply`
//! would have created from them, as the control plane's directory source reads the same files
//! (`mesh.yaml` becomes the `istio` ConfigMap, `injection.yaml` the `istio-sidecar-injector`
//! one), and a Namespace for every namespace they use, as a cluster would need.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use remora_injector::config::{Body, Document};
use serde_json::{json, Value};

use super::store::{Place, Resource};

/// Kinds without a namespace.
const CLUSTER_SCOPED: [&str; 6] = [
    "Namespace",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
];
/// The control plane's namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Every object of the files, by resource and place.
pub type Objects = BTreeMap<(Resource, Place), Value>;

/// The `(path, text)` of every manifest under `dirs`, in path order (hidden files skipped).
pub fn read(dirs: &[PathBuf]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in dirs {
        walk(dir, &mut files);
    }
    files
}

fn walk(dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Ok(text) = fs::read_to_string(&path) {
                files.push((path.display().to_string(), text));
            }
        }
    }
}

/// The objects the files hold (the first of duplicates wins, as the directory source keeps
/// it); what is not an object with a name is left out, as `kubectl apply` would refuse it.
pub fn objects(files: &[(String, String)]) -> Objects {
    let mut objects = Objects::new();
    let mut namespaces = BTreeSet::from(["default".to_owned(), ROOT_NAMESPACE.to_owned()]);
    for (path, text) in files {
        let documents = match Document::split(path, text) {
            Ok(documents) => documents,
            Err(rejection) => {
                eprintln!(
                    "fake API server: {}: {}",
                    rejection.object, rejection.reason
                );
                continue;
            }
        };
        for Document { body, .. } in documents {
            for object in values(body) {
                let Some((resource, place)) = locate(&object) else {
                    continue;
                };
                if !place.0.is_empty() {
                    namespaces.insert(place.0.clone());
                }
                objects.entry((resource, place)).or_insert(object);
            }
        }
    }
    for namespace in namespaces {
        let object = json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": namespace}});
        if let Some((resource, place)) = locate(&object) {
            objects.entry((resource, place)).or_insert(object);
        }
    }
    objects
}

/// The objects of a document: itself, a List's items, or the ConfigMap a bare mesh config or
/// injection values file stands for.
fn values(body: Body) -> Vec<Value> {
    let config_map = |name: &str, key: &str, text: String| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": ROOT_NAMESPACE},
               "data": {key: text}})
    };
    match body {
        Body::MeshConfig(text) => vec![config_map("istio", "mesh", text)],
        Body::InjectionValues(text) => vec![config_map("istio-sidecar-injector", "values", text)],
        Body::Object(mut value) => match value.get_mut("items").map(Value::take) {
            Some(Value::Array(items))
                if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) =>
            {
                items
            }
            _ => vec![value],
        },
    }
}

/// Where `object` is stored: its resource (group and plural) and place; `None` when it has no
/// `apiVersion`, `kind` or name.
pub fn locate(object: &Value) -> Option<(Resource, Place)> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let name = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource =
        kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(group, version, kind));
    let namespace = if CLUSTER_SCOPED.contains(&kind) {
        String::new()
    } else {
        object["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned()
    };
    Some((
        (group.to_owned(), resource.plural),
        (namespace, name.to_owned()),
    ))
}
