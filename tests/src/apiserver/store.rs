//! The fake API server's objects: one map per resource, a global resourceVersion, and the log
//! of changes watches resume from (the oldest part is compacted away, as etcd's is, so a watch
//! from too old a version gets `410 Gone`).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};

/// How many changes are kept for watches to resume from.
const LOG: usize = 10_000;

/// A resource: API group and plural (served in any version of its group).
pub type Resource = (String, String);

/// An object's place: `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type Place = (String, String);

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
pub struct Change {
    pub version: u64,
    pub resource: Resource,
    pub kind: &'static str,
    pub object: Value,
}

/// Why a write was refused: an HTTP status and Kubernetes' reason.
#[derive(Debug)]
pub struct Refused(pub u16, pub &'static str, pub String);

#[derive(Default)]
pub struct Store {
    objects: BTreeMap<Resource, BTreeMap<Place, Value>>,
    version: u64,
    log: VecDeque<Change>,
    /// The last version compacted out of the log: a watch must start at or after it.
    compacted: u64,
    uids: u64,
}

impl Store {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The objects of `resource` in `namespace` (all when `None`) that `select` keeps.
    pub fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        select: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.objects
            .get(resource)
            .into_iter()
            .flatten()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object)
            .filter(|object| select(object))
            .cloned()
            .collect()
    }

    pub fn get(&self, resource: &Resource, place: &Place) -> Option<&Value> {
        self.objects.get(resource)?.get(place)
    }

    /// The changes after `version`, or `None` if the log no longer reaches back that far.
    pub fn changes_since(&self, version: u64) -> Option<Vec<Change>> {
        if version < self.compacted {
            return None;
        }
        Some(
            self.log
                .iter()
                .filter(|change| change.version > version)
                .cloned()
                .collect(),
        )
    }

    /// Creates `object` at `place`; refused if it exists.
    pub fn create(
        &mut self,
        resource: &Resource,
        place: Place,
        mut object: Value,
    ) -> Result<Value, Refused> {
        if self.get(resource, &place).is_some() {
            return Err(Refused(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", resource.1, place.1),
            ));
        }
        self.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012}", self.uids);
        let meta = &mut object["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        if !place.0.is_empty() {
            meta["namespace"] = json!(place.0);
        }
        Ok(self.write(resource, place, object, "ADDED"))
    }

    /// Replaces the object at `place`; refused if absent, or if `object` names a
    /// resourceVersion other than the stored one (someone wrote in between).
    pub fn replace(
        &mut self,
        resource: &Resource,
        place: Place,
        mut object: Value,
    ) -> Result<Value, Refused> {
        let Some(stored) = self.get(resource, &place) else {
            return Err(not_found(resource, &place));
        };
        let wanted = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        let current = stored["metadata"]["resourceVersion"].clone();
        if !wanted.is_empty() && Some(wanted) != current.as_str() {
            return Err(Refused(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified",
                    resource.1, place.1
                ),
            ));
        }
        // As for a kind with a status subresource: what is neither metadata nor status is the
        // spec, whose every change is a new generation.
        let generation = stored["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation =
            if without_metadata_and_status(stored) == without_metadata_and_status(&object) {
                generation
            } else {
                generation + 1
            };
        for field in ["uid", "creationTimestamp"] {
            object["metadata"][field] = stored["metadata"][field].clone();
        }
        object["metadata"]["generation"] = json!(generation);
        if !place.0.is_empty() {
            object["metadata"]["namespace"] = json!(place.0);
        }
        Ok(self.write(resource, place, object, "MODIFIED"))
    }

    pub fn delete(&mut self, resource: &Resource, place: &Place) -> Result<Value, Refused> {
        let Some(object) = self
            .objects
            .get_mut(resource)
            .and_then(|objects| objects.remove(place))
        else {
            return Err(not_found(resource, place));
        };
        self.version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.record(resource, "DELETED", object.clone());
        Ok(object)
    }

    fn write(
        &mut self,
        resource: &Resource,
        place: Place,
        mut object: Value,
        kind: &'static str,
    ) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.objects
            .entry(resource.clone())
            .or_default()
            .insert(place, object.clone());
        self.record(resource, kind, object.clone());
        object
    }

    fn record(&mut self, resource: &Resource, kind: &'static str, object: Value) {
        if self.log.len() == LOG {
            if let Some(oldest) = self.log.pop_front() {
                self.compacted = oldest.version;
            }
        }
        self.log.push_back(Change {
            version: self.version,
            resource: resource.clone(),
            kind,
            object,
        });
    }
}

fn without_metadata_and_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(fields) = object.as_object_mut() {
        for field in ["metadata", "status", "apiVersion", "kind"] {
            fields.remove(field);
        }
    }
    object
}

pub fn not_found(resource: &Resource, place: &Place) -> Refused {
    Refused(
        404,
        "NotFound",
        format!("{} {:?} not found", resource.1, place.1),
    )
}

/// Now in RFC 3339, as Kubernetes writes timestamps.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| "1970-01-01T00:00:00Z".to_owned(), |t| t.to_string())
}
