//! What the control plane keeps of one kind's objects: each object's reading (parsed and
//! checked, [`Read`]) and the little metadata Events and status conditions need, in the order
//! the catalog reads them (oldest first, then by namespace and name). The API's JSON is read
//! when it arrives and not kept, so a cluster costs its parsed objects, not their JSON as well;
//! an object delivered again at the same resourceVersion (a relist) is not read again.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::DynamicObject, ResourceExt};
use serde_json::Value;

use super::super::objects::Read;

/// Where an object comes in the catalog's order: its age, namespace and name.
pub(crate) type Order = (Option<Time>, String, String);

/// One object as kept.
pub(crate) struct Kept {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: String,
    pub(crate) generation: Option<i64>,
    /// Its `status`, for a kind whose conditions are written.
    pub(crate) status: Option<Value>,
    pub(crate) reads: Vec<Read>,
}

/// One kind's objects, and a count of the changes made to them.
#[derive(Default)]
pub(crate) struct Held {
    objects: BTreeMap<Order, Kept>,
    changes: u64,
}

/// `object`'s place in the catalog's order.
pub(crate) fn order_of(object: &DynamicObject) -> Order {
    let meta = &object.metadata;
    (
        meta.creation_timestamp.clone(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Held {
    /// How many changes were made so far: unchanged between two builds, nothing changed.
    pub(crate) fn changes(&self) -> u64 {
        self.changes
    }

    pub(crate) fn objects(&self) -> impl Iterator<Item = (&Order, &Kept)> {
        self.objects.iter()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The object `namespace/name`.
    pub(crate) fn find(&self, namespace: &str, name: &str) -> Option<&Kept> {
        self.objects
            .iter()
            .find(|((_, ns, n), _)| ns == namespace && n == name)
            .map(|(_, kept)| kept)
    }

    /// `object`, kept: its readings reused when it is held at the same resourceVersion, else
    /// made by `read`.
    pub(crate) fn keep(
        &self,
        object: &DynamicObject,
        with_status: bool,
        read: impl FnOnce() -> Vec<Read>,
    ) -> (Order, Kept) {
        let order = order_of(object);
        let resource_version = object.resource_version().unwrap_or_default();
        let reads = match self.objects.get(&order) {
            Some(held) if held.resource_version == resource_version => held.reads.clone(),
            _ => read(),
        };
        let kept = Kept {
            uid: object.uid(),
            resource_version,
            generation: object.metadata.generation,
            status: with_status
                .then(|| object.data.get("status").cloned())
                .flatten(),
            reads,
        };
        (order, kept)
    }

    /// An object added or edited.
    pub(crate) fn apply(&mut self, order: Order, kept: Kept) {
        self.objects.insert(order, kept);
        self.changes += 1;
    }

    /// An object deleted.
    pub(crate) fn delete(&mut self, order: &Order) {
        if self.objects.remove(order).is_some() {
            self.changes += 1;
        }
    }

    /// The whole kind, as listed again: a change only if some object or version differs.
    pub(crate) fn replace(&mut self, objects: BTreeMap<Order, Kept>) {
        let versions = |objects: &BTreeMap<Order, Kept>| -> Vec<(Order, String)> {
            objects
                .iter()
                .map(|(order, kept)| (order.clone(), kept.resource_version.clone()))
                .collect()
        };
        if versions(&self.objects) != versions(&objects) {
            self.changes += 1;
        }
        self.objects = objects;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(name: &str, version: &str, created: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": version,
                         "creationTimestamp": created, "generation": 2},
            "status": {"conditions": []},
        }))
        .expect("an object")
    }

    #[test]
    fn objects_are_read_once_per_version_in_the_catalogs_order() {
        let mut held = Held::default();
        let mut read = 0;
        for (name, version, created) in [
            ("b", "1", "2026-01-01T00:00:00Z"),
            ("a", "2", "2026-01-02T00:00:00Z"),
            ("c", "3", "2026-01-01T00:00:00Z"),
        ] {
            let (order, kept) = held.keep(&object(name, version, created), true, || {
                read += 1;
                Vec::new()
            });
            held.apply(order, kept);
        }
        assert_eq!(read, 3);
        // Oldest first, then by name.
        let names: Vec<&str> = held.objects().map(|((_, _, n), _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        let kept = held.find("default", "a").expect("held");
        assert_eq!(kept.generation, Some(2));
        assert_eq!(kept.status, Some(json!({"conditions": []})));

        // Listed again, one object edited: only that one is read, and it is a change.
        let changes = held.changes();
        let mut listed = BTreeMap::new();
        for (name, version, created) in [
            ("b", "1", "2026-01-01T00:00:00Z"),
            ("a", "4", "2026-01-02T00:00:00Z"),
            ("c", "3", "2026-01-01T00:00:00Z"),
        ] {
            let (order, kept) = held.keep(&object(name, version, created), false, || {
                read += 1;
                Vec::new()
            });
            listed.insert(order, kept);
        }
        assert_eq!(read, 4);
        held.replace(listed);
        assert!(held.changes() > changes);
        assert_eq!(
            held.find("default", "a").and_then(|k| k.status.clone()),
            None
        );

        // Listed again unchanged: no change. Deleted: a change, once.
        let changes = held.changes();
        let same: BTreeMap<Order, Kept> = held
            .objects()
            .map(|(order, kept)| {
                let again = Kept {
                    uid: kept.uid.clone(),
                    resource_version: kept.resource_version.clone(),
                    generation: kept.generation,
                    status: None,
                    reads: Vec::new(),
                };
                (order.clone(), again)
            })
            .collect();
        held.replace(same);
        assert_eq!(held.changes(), changes);
        let order = order_of(&object("c", "3", "2026-01-01T00:00:00Z"));
        held.delete(&order);
        held.delete(&order);
        assert_eq!(held.changes(), changes + 1);
        assert!(held.find("default", "c").is_none());
        assert!(!held.is_empty());
    }
}
