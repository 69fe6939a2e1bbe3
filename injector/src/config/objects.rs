//! Kubernetes manifests (multi-document YAML) to typed objects, one document at a time.
//!
//! A config source holds many objects written by different people; one bad document must not
//! take the others down, and must not be half-applied either. So every document is parsed and
//! checked on its own and either kept whole or turned into a [`Rejection`] that names the
//! object, where it came from and the field at fault, the way `kubectl apply` would complain.
//! A List (what `kubectl get -o yaml` prints) stands for its items, each read as a document of
//! its own, as `kubectl apply` reads it.
//!
//! Sources hand over parsed [`Document`]s, each with its origin (a file and the document's
//! position in it, or an API object and its resourceVersion), not text: the directory source
//! splits its files with [`Document::split`], a source watching the API server hands over the
//! objects it holds, and both feed the same per-kind checks ([`Objects::from_documents`]).

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount, ServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::inject::{selector, InjectionPolicy, Values};

use super::{
    mesh::MeshConfig,
    routing::{self, RoutingObject},
    scope::{self, Scope},
    security::{self, SecurityPolicy},
    service_entry::{self, ServiceEntry},
    telemetry::{self, Telemetry},
    well_known::{DEFAULT_NAMESPACE, INJECTION_FILE, MESH_FILE},
    yaml::{self, YamlError},
};

/// A document that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejection {
    /// What and where, e.g. `Service default/httpbin in /dir/app.yaml (document 2)`.
    pub object: String,
    /// What is wrong, naming the field, e.g. `spec.ports[0].port: invalid type ...`.
    pub reason: String,
    /// Which object it was, as far as can be told.
    pub subject: Subject,
}

/// What a rejection was about: what lets a reader keep the object's last good version
/// (the local launcher keeps a rejected Deployment's pods running).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// One object; `namespace` is empty for cluster-scoped kinds.
    Object {
        kind: String,
        namespace: String,
        name: String,
    },
    /// A file, document or List whose objects could not be told apart: it may have held any
    /// object of file `origin`.
    Unidentified { origin: String },
}

impl Rejection {
    /// The rejection of a file, document or List of file `origin` whose objects could not be
    /// told apart.
    pub(crate) fn unidentified(origin: &str, object: String, reason: String) -> Self {
        Self {
            object,
            reason,
            subject: Subject::Unidentified {
                origin: origin.to_owned(),
            },
        }
    }

    /// The rejection of object `kind` `key` of file `origin`, labelled `object`.
    pub(crate) fn of(kind: &str, key: &Key, origin: &str, object: String, reason: String) -> Self {
        let (namespace, name) = key.clone();
        let subject = if name.is_empty() && kind != "MeshConfig" {
            Subject::Unidentified {
                origin: origin.to_owned(),
            }
        } else {
            Subject::Object {
                kind: kind.to_owned(),
                namespace,
                name,
            }
        };
        Self {
            object,
            reason,
            subject,
        }
    }

    /// Whether this may be the rejection of object `kind` `namespace/name`, last read from
    /// file `origin`.
    pub fn may_concern(&self, kind: &str, namespace: &str, name: &str, origin: &str) -> bool {
        match &self.subject {
            Subject::Unidentified { origin: file } => file == origin,
            Subject::Object {
                kind: k,
                namespace: ns,
                name: n,
            } => (k.as_str(), ns.as_str(), n.as_str()) == (kind, namespace, name),
        }
    }
}

/// `(namespace, name)`.
pub(crate) type Key = (String, String);

/// One object (or List of them) as a source read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from, which rejections of objects that cannot be told apart name: a file's
    /// path, or for an API object, the API it was read from.
    pub origin: String,
    /// Where in it: `document 2` of a file, `resourceVersion 812` of an API object.
    pub position: String,
    pub body: Body,
}

/// What a document holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A Kubernetes object, or a List of them.
    Object(Value),
    /// A bare Istio `MeshConfig` (a `mesh.yaml` file).
    MeshConfig(String),
    /// Injection values (an `injection.yaml` file).
    InjectionValues(String),
}

/// The documents of `(path, text)` files in order, each file that is not YAML as its
/// rejection in its place.
pub(crate) fn documents_of<P: AsRef<str>, T: AsRef<str>>(
    files: &[(P, T)],
) -> Vec<Result<Document, Rejection>> {
    files
        .iter()
        .flat_map(
            |(path, text)| match Document::split(path.as_ref(), text.as_ref()) {
                Ok(documents) => documents.into_iter().map(Ok).collect(),
                Err(rejection) => vec![Err(rejection)],
            },
        )
        .collect()
}

impl Document {
    /// The documents of file `path` holding `text`: multi-document Kubernetes YAML, except a
    /// file named `mesh.yaml` (a bare `MeshConfig`) or `injection.yaml` (injection values);
    /// text that is not YAML is the file's rejection.
    pub fn split(path: &str, text: &str) -> Result<Vec<Document>, Rejection> {
        let named = |file: &str| Path::new(path).file_name().is_some_and(|name| name == file);
        let whole = |body| {
            vec![Document {
                origin: path.to_owned(),
                position: String::new(),
                body,
            }]
        };
        if named(MESH_FILE) {
            return Ok(whole(Body::MeshConfig(text.to_owned())));
        }
        if named(INJECTION_FILE) {
            return Ok(whole(Body::InjectionValues(text.to_owned())));
        }
        let values = yaml::documents(text)
            .map_err(|e| Rejection::unidentified(path, path.to_owned(), e.to_string()))?;
        Ok(values
            .into_iter()
            .enumerate()
            .map(|(index, value)| Document {
                origin: path.to_owned(),
                position: format!("document {}", index + 1),
                body: Body::Object(value),
            })
            .collect())
    }
}

impl Document {
    /// Its objects, each read and checked on its own: one, or a List's items (`kind: List` as
    /// `kubectl get -o yaml` writes it, or a typed one such as `ServiceList`), which `kubectl
    /// apply` reads one by one, each named by its position (`document 1, items[2]`). Lists in
    /// lists are flattened, and a List without items is empty, as kubectl reads them.
    pub(crate) fn read(self) -> Vec<Read> {
        let Document {
            origin,
            position,
            body,
        } = self;
        let parsed = |kind: &str, label: String, parsed: Result<Kept, String>| {
            let id = Identity {
                api_version: String::new(),
                kind: kind.to_owned(),
                key: Key::default(),
                label,
            };
            vec![Read::object(id, &origin, Parsed::Builtin(parsed))]
        };
        match body {
            Body::Object(value) => {
                let mut reads = Vec::new();
                read_value(value, &origin, &position, &mut reads);
                reads
            }
            Body::MeshConfig(text) => parsed(
                "MeshConfig",
                format!("MeshConfig in {origin}"),
                MeshConfig::parse(&text)
                    .map(|mesh| Kept::Mesh(Box::new(mesh)))
                    .map_err(|e| e.to_string()),
            ),
            Body::InjectionValues(text) => parsed(
                "InjectionValues",
                format!("injection values in {origin}"),
                Values::parse(&text)
                    .map(|values| Kept::Injection(Box::new((values, InjectionPolicy::default())))),
            ),
        }
    }
}

/// One object of a document, read and checked on its own but not yet kept (whether it is
/// depends on the objects before it: a later duplicate is rejected). A source may keep it and
/// hand it over again while the object is unchanged: a cluster's objects are read once per
/// resourceVersion, not on every rebuild.
#[derive(Clone)]
pub(crate) struct Read(Reading);

#[derive(Clone)]
enum Reading {
    /// A file, document or object that cannot be told apart from others: its rejection.
    Unidentified(Rejection),
    /// A kind the control plane does not read.
    Ignored,
    Object(Box<ReadObject>),
}

#[derive(Clone)]
struct ReadObject {
    id: Identity,
    origin: String,
    parsed: Parsed,
}

/// What reading an identified object gave, by kind.
#[derive(Clone)]
enum Parsed {
    /// A security policy, in its most restrictive form when rejected.
    Security(&'static str, security::Read),
    Routing(&'static str, Result<RoutingObject, String>),
    ServiceEntry(Result<ServiceEntry, String>),
    Sidecar(Result<Scope, String>),
    Telemetry(Result<Telemetry, String>),
    /// Kubernetes' own kinds, the mesh config and the injection values.
    Builtin(Result<Kept, String>),
}

impl Read {
    fn object(id: Identity, origin: &str, parsed: Parsed) -> Self {
        Self(Reading::Object(Box::new(ReadObject {
            id,
            origin: origin.to_owned(),
            parsed,
        })))
    }
}

/// The objects of `value`, found at `position` of `origin`: one, or a List's items.
fn read_value(value: Value, origin: &str, position: &str, reads: &mut Vec<Read>) {
    let place = format!("{origin} ({position})");
    if !is_list(&value) {
        reads.push(read_object(value, origin, &place));
        return;
    }
    match yaml::from_value::<List>(value) {
        Ok(list) => {
            for (index, item) in list.items.into_iter().flatten().enumerate() {
                read_value(item, origin, &format!("{position}, items[{index}]"), reads);
            }
        }
        Err(e) => reads.push(Read(Reading::Unidentified(Rejection::unidentified(
            origin,
            format!("List in {place}"),
            e.to_string(),
        )))),
    }
}

/// One object of file `origin`, found at `place`, read by its kind's checks.
fn read_object(value: Value, origin: &str, place: &str) -> Read {
    let Some(id) = Identity::of(&value, place) else {
        return Read(Reading::Unidentified(Rejection::unidentified(
            origin,
            place.to_owned(),
            "apiVersion and kind are required".to_owned(),
        )));
    };
    let (namespace, name) = (id.key.0.as_str(), id.key.1.as_str());
    let parsed = if let Some(kind) = security_kind(&id) {
        Parsed::Security(kind, security::read(kind, value, namespace, name))
    } else if let Some(kind) = routing::routing_kind(&id.api_version, &id.kind) {
        Parsed::Routing(kind, routing::read(kind, value, namespace, name))
    } else if service_entry::is_service_entry(&id.api_version, &id.kind) {
        Parsed::ServiceEntry(service_entry::read(value, namespace))
    } else if scope::is_sidecar(&id.api_version, &id.kind) {
        Parsed::Sidecar(scope::read(value, namespace, name))
    } else if telemetry::is_telemetry(&id.api_version, &id.kind) {
        Parsed::Telemetry(telemetry::read(value, namespace, name))
    } else if let Some(reason) = unknown_builtin_kind(&id) {
        // Whatever it was meant to be (a Deployment with a typo?), it may be any object.
        return Read(Reading::Unidentified(Rejection::unidentified(
            origin, id.label, reason,
        )));
    } else if let Some(checked) = checked(value, &id) {
        Parsed::Builtin(checked)
    } else {
        tracing::debug!(object = %id.label, "ignoring a kind the control plane does not read");
        return Read(Reading::Ignored);
    };
    Read::object(id, origin, parsed)
}

/// A kept object and the description of where it came from, for rejections found later.
#[derive(Debug)]
pub(crate) struct Labelled<T> {
    pub(crate) label: String,
    /// The file it was read from.
    pub(crate) origin: String,
    pub(crate) object: T,
}

impl<T> Labelled<T> {
    fn new(label: &str, origin: &str, object: T) -> Self {
        Self {
            label: label.to_owned(),
            origin: origin.to_owned(),
            object,
        }
    }

    /// The rejection of this object (a `kind` keyed `key`), found after it was kept.
    pub(crate) fn rejection(&self, kind: &str, key: &Key, reason: String) -> Rejection {
        Rejection::of(kind, key, &self.origin, self.label.clone(), reason)
    }
}

/// The accepted objects, keyed by `(namespace, name)` (a Namespace's namespace is empty): what
/// the translation reads, and the Namespaces and Deployments the local launcher runs.
/// ServiceAccounts are checked (so mistakes surface) but not kept: nothing reads them yet.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    pub(crate) namespaces: BTreeMap<Key, Labelled<Arc<Namespace>>>,
    pub(crate) deployments: BTreeMap<Key, Labelled<Deployment>>,
    pub(crate) pods: BTreeMap<Key, Labelled<Arc<Pod>>>,
    pub(crate) services: BTreeMap<Key, Labelled<Arc<Service>>>,
    pub(crate) endpoint_slices: BTreeMap<Key, Labelled<Arc<EndpointSlice>>>,
    /// PeerAuthentications, AuthorizationPolicies and RequestAuthentications, by kind and key;
    /// a rejected one in its most restrictive form.
    pub(crate) security: BTreeMap<(&'static str, Key), Labelled<SecurityPolicy>>,
    /// HTTPRoutes, GRPCRoutes, ReferenceGrants, VirtualServices and DestinationRules, by kind
    /// and key.
    pub(crate) routing: BTreeMap<(&'static str, Key), Labelled<RoutingObject>>,
    pub(crate) service_entries: BTreeMap<Key, Labelled<ServiceEntry>>,
    /// Istio `Sidecar`s: which Services each workload is sent.
    pub(crate) scopes: BTreeMap<Key, Labelled<Scope>>,
    /// Telemetry resources (those naming a provider the mesh lacks are rejected once the mesh
    /// config is known, by the catalog).
    pub(crate) telemetry: BTreeMap<Key, Labelled<Telemetry>>,
    /// MutatingWebhookConfigurations (cluster-scoped: the key's namespace is empty), which say
    /// which pods the API server sends to the injection webhook.
    pub(crate) webhook_configurations: BTreeMap<Key, Labelled<MutatingWebhookConfiguration>>,
    pub(crate) mesh: Option<MeshConfig>,
    /// The injection values and policy (`injection.yaml`, which holds values only, or the
    /// `istio-sidecar-injector` ConfigMap's `values` and `config`).
    pub(crate) injection: Option<(Values, InjectionPolicy)>,
    /// `(kind, namespace, name)` of everything kept, with its label, to reject duplicates.
    seen: BTreeMap<(&'static str, Key), String>,
}

/// istiod reads the mesh config from the `mesh` key of this ConfigMap in its own namespace.
const MESH_CONFIG_MAP: (&str, &str) = ("istio-system", "istio");
/// ... and the injection values from the `values` key of this one.
const INJECTOR_CONFIG_MAP: (&str, &str) = ("istio-system", "istio-sidecar-injector");

impl Objects {
    /// Checks and keeps `documents` in order (a source's rejection of a whole file takes its
    /// place among them); a later object with the same kind, namespace and name as a kept one
    /// is rejected.
    pub(crate) fn from_documents(
        documents: impl IntoIterator<Item = Result<Document, Rejection>>,
    ) -> (Self, Vec<Rejection>) {
        Self::from_reads(documents.into_iter().flat_map(|document| match document {
            Ok(document) => document.read(),
            Err(rejection) => vec![Read(Reading::Unidentified(rejection))],
        }))
    }

    /// Keeps the objects `reads` hold, in order: each valid one unless an earlier one has its
    /// kind, namespace and name; the rest are rejected.
    pub(crate) fn from_reads(reads: impl IntoIterator<Item = Read>) -> (Self, Vec<Rejection>) {
        let mut objects = Self::default();
        let mut rejected = Vec::new();
        for Read(reading) in reads {
            match reading {
                Reading::Unidentified(rejection) => rejected.push(rejection),
                Reading::Ignored => {}
                Reading::Object(object) => {
                    let ReadObject { id, origin, parsed } = *object;
                    objects.keep_parsed(id, &origin, parsed, &mut rejected);
                }
            }
        }
        (objects, rejected)
    }

    /// One object, read as `parsed`, kept or rejected.
    fn keep_parsed(
        &mut self,
        id: Identity,
        origin: &str,
        parsed: Parsed,
        rejected: &mut Vec<Rejection>,
    ) {
        let kept = match parsed {
            Parsed::Security(kind, read) => {
                self.add_security(kind, read, id, origin, rejected);
                return;
            }
            Parsed::Routing(kind, read) => {
                self.add_routing(kind, read, id, origin, rejected);
                return;
            }
            Parsed::ServiceEntry(read) => {
                self.add_read("ServiceEntry", id, origin, rejected, read, |o| {
                    &mut o.service_entries
                });
                return;
            }
            Parsed::Sidecar(read) => {
                self.add_read("Sidecar", id, origin, rejected, read, |o| &mut o.scopes);
                return;
            }
            Parsed::Telemetry(read) => {
                self.add_read("Telemetry", id, origin, rejected, read, |o| {
                    &mut o.telemetry
                });
                return;
            }
            Parsed::Builtin(Ok(kept)) => kept,
            Parsed::Builtin(Err(reason)) => {
                rejected.push(Rejection::of(&id.kind, &id.key, origin, id.label, reason));
                return;
            }
        };
        let (key, label) = (id.key, id.label);
        match kept {
            Kept::Mesh(mesh) => self.keep_mesh(*mesh, label, origin, rejected),
            Kept::Injection(injection) => self.keep_injection(*injection, label, origin, rejected),
            Kept::Other(kind) => {
                self.first_of(kind, &key, &label, origin, rejected);
            }
            Kept::Namespace(namespace) => {
                let object = Labelled::new(&label, origin, namespace);
                self.keep("Namespace", key, object, |o| &mut o.namespaces, rejected);
            }
            Kept::Deployment(deployment) => {
                let object = Labelled::new(&label, origin, *deployment);
                self.keep("Deployment", key, object, |o| &mut o.deployments, rejected);
            }
            Kept::Pod(pod) => {
                let object = Labelled::new(&label, origin, pod);
                self.keep("Pod", key, object, |o| &mut o.pods, rejected);
            }
            Kept::Service(service) => {
                let object = Labelled::new(&label, origin, service);
                self.keep("Service", key, object, |o| &mut o.services, rejected);
            }
            Kept::WebhookConfiguration(configuration) => {
                let object = Labelled::new(&label, origin, *configuration);
                self.keep(
                    "MutatingWebhookConfiguration",
                    key,
                    object,
                    |o| &mut o.webhook_configurations,
                    rejected,
                );
            }
            Kept::EndpointSlice(slice) => {
                let object = Labelled::new(&label, origin, slice);
                self.keep(
                    "EndpointSlice",
                    key,
                    object,
                    |o| &mut o.endpoint_slices,
                    rejected,
                );
            }
        }
    }

    /// A security policy: kept even when rejected (in its most restrictive form, so a mistake
    /// never widens access), unless it cannot be told apart from others.
    fn add_security(
        &mut self,
        kind: &'static str,
        read: security::Read,
        id: Identity,
        origin: &str,
        rejected: &mut Vec<Rejection>,
    ) {
        if !self.named_first(kind, &id, origin, rejected) {
            return;
        }
        if let Some(problem) = read.problem {
            rejected.push(Rejection::of(
                kind,
                &id.key,
                origin,
                id.label.clone(),
                problem,
            ));
        }
        self.security
            .insert((kind, id.key), Labelled::new(&id.label, origin, read.kept));
    }

    /// A traffic management object: kept when valid, rejected alone otherwise (the Service it
    /// would route keeps its default route).
    fn add_routing(
        &mut self,
        kind: &'static str,
        read: Result<RoutingObject, String>,
        id: Identity,
        origin: &str,
        rejected: &mut Vec<Rejection>,
    ) {
        if !self.named_first(kind, &id, origin, rejected) {
            return;
        }
        match read {
            Ok(object) => {
                self.routing
                    .insert((kind, id.key), Labelled::new(&id.label, origin, object));
            }
            Err(reason) => rejected.push(Rejection::of(kind, &id.key, origin, id.label, reason)),
        }
    }

    /// A namespaced object of `kind` checked alone as `read`: kept in the map `into` gives
    /// when valid (and the first of its name), rejected alone otherwise.
    fn add_read<T>(
        &mut self,
        kind: &'static str,
        id: Identity,
        origin: &str,
        rejected: &mut Vec<Rejection>,
        read: Result<T, String>,
        into: fn(&mut Self) -> &mut BTreeMap<Key, Labelled<T>>,
    ) {
        if !self.named_first(kind, &id, origin, rejected) {
            return;
        }
        match read {
            Ok(object) => {
                into(self).insert(id.key, Labelled::new(&id.label, origin, object));
            }
            Err(reason) => rejected.push(Rejection::of(kind, &id.key, origin, id.label, reason)),
        }
    }

    /// Whether an object of `kind` read as `id` has a name and is the first of that name; it is
    /// rejected otherwise.
    fn named_first(
        &mut self,
        kind: &'static str,
        id: &Identity,
        origin: &str,
        rejected: &mut Vec<Rejection>,
    ) -> bool {
        if id.key.1.is_empty() {
            let reason = "metadata.name: required".to_owned();
            rejected.push(Rejection::of(
                kind,
                &id.key,
                origin,
                id.label.clone(),
                reason,
            ));
            return false;
        }
        self.first_of(kind, &id.key, &id.label, origin, rejected)
    }

    /// Keeps `object` in the map `kept` selects, unless it is a duplicate.
    fn keep<T>(
        &mut self,
        kind: &'static str,
        key: Key,
        object: Labelled<T>,
        kept: fn(&mut Self) -> &mut BTreeMap<Key, Labelled<T>>,
        rejected: &mut Vec<Rejection>,
    ) {
        if self.first_of(kind, &key, &object.label, &object.origin, rejected) {
            kept(self).insert(key, object);
        }
    }

    /// Records `(kind, key)`, or rejects it as a duplicate; whether it is the first.
    fn first_of(
        &mut self,
        kind: &'static str,
        key: &Key,
        label: &str,
        origin: &str,
        rejected: &mut Vec<Rejection>,
    ) -> bool {
        if let Some(first) = self.seen.get(&(kind, key.clone())) {
            let reason = format!("duplicate: the same {kind} is already defined as {first}");
            rejected.push(Rejection::of(kind, key, origin, label.to_owned(), reason));
            return false;
        }
        self.seen.insert((kind, key.clone()), label.to_owned());
        true
    }

    fn keep_mesh(
        &mut self,
        mesh: MeshConfig,
        label: String,
        origin: &str,
        rejected: &mut Vec<Rejection>,
    ) {
        if self.first_of("MeshConfig", &Key::default(), &label, origin, rejected) {
            self.mesh = Some(mesh);
        }
    }

    fn keep_injection(
        &mut self,
        values: (Values, InjectionPolicy),
        label: String,
        origin: &str,
        rejected: &mut Vec<Rejection>,
    ) {
        if self.first_of("InjectionValues", &Key::default(), &label, origin, rejected) {
            self.injection = Some(values);
        }
    }
}

/// A List, of which only the items matter.
#[derive(serde::Deserialize)]
struct List {
    #[serde(default)]
    items: Option<Vec<Value>>,
}

/// Whether `value` is a List: `kind: List`, or a typed list (`ServiceList`) with `items`.
fn is_list(value: &Value) -> bool {
    match value.get("kind").and_then(Value::as_str) {
        Some("List") => true,
        Some(kind) => kind.ends_with("List") && value.get("items").is_some(),
        None => false,
    }
}

/// What a document claims to be, read before it is checked so even a rejection can name it.
#[derive(Clone)]
struct Identity {
    api_version: String,
    kind: String,
    /// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
    key: Key,
    /// e.g. `Service default/httpbin in /dir/app.yaml (document 2)`.
    label: String,
}

impl Identity {
    fn of(value: &Value, place: &str) -> Option<Self> {
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        let meta = |field: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (api_version, kind) = (text("apiVersion")?, text("kind")?);
        let name = meta("name");
        let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
            String::new()
        } else {
            // Kubernetes puts an object with no (or an empty) namespace in `default`.
            meta("namespace")
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
        };
        let label = match (&name, namespace.is_empty()) {
            (Some(name), true) => format!("{kind} {name} in {place}"),
            (Some(name), false) => format!("{kind} {namespace}/{name} in {place}"),
            (None, _) => format!("{kind} in {place}"),
        };
        Some(Self {
            api_version,
            kind,
            key: (namespace, name.unwrap_or_default()),
            label,
        })
    }
}

/// The kinds read that belong to no namespace.
const CLUSTER_SCOPED: [&str; 2] = ["Namespace", "MutatingWebhookConfiguration"];

/// Checks a document of a kind the control plane reads; `None` for any other kind.
fn checked(value: Value, id: &Identity) -> Option<Result<Kept, String>> {
    let (namespace, name) = (id.key.0.as_str(), id.key.1.as_str());
    Some(match (id.api_version.as_str(), id.kind.as_str()) {
        ("v1", "Namespace") => check(value, |_: &Namespace, _| {})
            .map(|namespace| Kept::Namespace(Arc::new(namespace))),
        ("v1", "ServiceAccount") => {
            check(value, |_: &ServiceAccount, _| {}).map(|_| Kept::Other("ServiceAccount"))
        }
        ("apps/v1", "Deployment") => {
            check(value, check_deployment).map(|deployment| Kept::Deployment(Box::new(deployment)))
        }
        ("v1", "Pod") => check(value, check_pod).map(|pod| Kept::Pod(Arc::new(pod))),
        ("v1", "Service") => {
            check(value, check_service).map(|service| Kept::Service(Arc::new(service)))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            check(value, check_endpoint_slice).map(|slice| Kept::EndpointSlice(Arc::new(slice)))
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            check(value, check_webhook_configuration)
                .map(|configuration| Kept::WebhookConfiguration(Box::new(configuration)))
        }
        ("v1", "ConfigMap") if (namespace, name) == MESH_CONFIG_MAP => mesh_config_map(value),
        ("v1", "ConfigMap") if (namespace, name) == INJECTOR_CONFIG_MAP => {
            injector_config_map(value)
        }
        _ => return None,
    })
}

/// The security kind `id` is, spelled statically, if it is one in an API version that has it.
fn security_kind(id: &Identity) -> Option<&'static str> {
    if !security::API_VERSIONS.contains(&id.api_version.as_str()) {
        return None;
    }
    [
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
    ]
    .into_iter()
    .find(|kind| *kind == id.kind)
}

/// The kinds Kubernetes itself serves in the API versions the control plane reads.
const BUILTIN_KINDS: &[(&str, &[&str])] = &[
    (
        "v1",
        &[
            "Binding",
            "ComponentStatus",
            "ConfigMap",
            "Endpoints",
            "Event",
            "LimitRange",
            "List",
            "Namespace",
            "Node",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Pod",
            "PodTemplate",
            "ReplicationController",
            "ResourceQuota",
            "Secret",
            "Service",
            "ServiceAccount",
        ],
    ),
    (
        "apps/v1",
        &[
            "ControllerRevision",
            "DaemonSet",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
        ],
    ),
    ("discovery.k8s.io/v1", &["EndpointSlice"]),
];

/// Why Kubernetes would refuse a document whose kind its API version does not have (a typo
/// such as `kind: Deploymnet`); other API versions' kinds (CRDs, Istio's) are not judged.
fn unknown_builtin_kind(id: &Identity) -> Option<String> {
    let (_, kinds) = BUILTIN_KINDS
        .iter()
        .find(|(version, _)| *version == id.api_version)?;
    (!kinds.contains(&id.kind.as_str())).then(|| {
        format!(
            "kind: no kind {:?} in {}, as Kubernetes would say (no matches for kind)",
            id.kind, id.api_version
        )
    })
}

/// A document that passed its checks. What a cluster has many of is shared, so a kept read
/// is cheap to hand over again.
#[derive(Clone)]
enum Kept {
    Namespace(Arc<Namespace>),
    Deployment(Box<Deployment>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    WebhookConfiguration(Box<MutatingWebhookConfiguration>),
    Mesh(Box<MeshConfig>),
    Injection(Box<(Values, InjectionPolicy)>),
    /// Checked for mistakes and duplicates, not kept.
    Other(&'static str),
}

/// Something that has Kubernetes object metadata.
trait Object: DeserializeOwned {
    fn metadata(&self) -> &ObjectMeta;
}

macro_rules! object {
    ($($kind:ty),*) => {
        $(impl Object for $kind {
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
        })*
    };
}

object!(
    Namespace,
    ServiceAccount,
    Deployment,
    Pod,
    Service,
    EndpointSlice,
    ConfigMap,
    MutatingWebhookConfiguration
);

/// Deserializes `value` (naming the field on error) and runs the checks every object gets plus
/// the kind's own, reporting all problems found together.
fn check<T: Object>(value: Value, kind_checks: impl Fn(&T, &mut Vec<String>)) -> Result<T, String> {
    let object: T = yaml::from_value(value).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    if object
        .metadata()
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        problems.push("metadata.name: required".to_owned());
    }
    kind_checks(&object, &mut problems);
    if problems.is_empty() {
        Ok(object)
    } else {
        Err(problems.join("; "))
    }
}

fn check_port(port: i32, path: &str, problems: &mut Vec<String>) {
    if !(1..=65535).contains(&port) {
        problems.push(format!("{path}: {port} is not a port number (1-65535)"));
    }
}

fn check_ip(text: &str, path: &str, problems: &mut Vec<String>) {
    if text.parse::<IpAddr>().is_err() {
        problems.push(format!("{path}: {text:?} is not an IP address"));
    }
}

fn check_pod(pod: &Pod, problems: &mut Vec<String>) {
    for (c, container) in pod
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .enumerate()
    {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            check_port(
                port.container_port,
                &format!("spec.containers[{c}].ports[{p}].containerPort"),
                problems,
            );
        }
    }
    if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        check_ip(ip, "status.podIP", problems);
    }
}

/// Kubernetes refuses a Deployment whose selector does not select its own pod template.
fn check_deployment(deployment: &Deployment, problems: &mut Vec<String>) {
    let Some(spec) = &deployment.spec else {
        problems.push("spec: required".to_owned());
        return;
    };
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let selected = spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.and_then(|labels| labels.get(key)) == Some(value));
    if labels.is_none() || !selected {
        problems
            .push("spec.template.metadata.labels: must match spec.selector.matchLabels".to_owned());
    }
}

/// The Service checks Kubernetes makes on its ports, so a bad Service is refused here, naming
/// its field, instead of surfacing later in the EndpointSlices computed from it.
fn check_service(service: &Service, problems: &mut Vec<String>) {
    let Some(spec) = &service.spec else {
        return;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let protocol = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
    for (i, port) in ports.iter().enumerate() {
        let path = |field: &str| format!("spec.ports[{i}].{field}");
        let earlier = &ports[..i];
        check_port(port.port, &path("port"), problems);
        if earlier
            .iter()
            .any(|e| e.port == port.port && protocol(e) == protocol(port))
        {
            problems.push(format!("{}: {} is listed twice", path("port"), port.port));
        }
        match port.name.as_deref().filter(|name| !name.is_empty()) {
            None if ports.len() > 1 => problems.push(format!(
                "{}: required when a Service has more than one port",
                path("name")
            )),
            Some(name) if earlier.iter().any(|e| e.name.as_deref() == Some(name)) => {
                problems.push(format!("{}: {name:?} is listed twice", path("name")));
            }
            _ => {}
        }
        // 0 and "" are unset: Kubernetes defaults them to `port`.
        match &port.target_port {
            Some(IntOrString::Int(number)) if *number != 0 => {
                check_port(*number, &path("targetPort"), problems);
            }
            Some(IntOrString::String(name)) if !name.is_empty() && !is_port_name(name) => {
                problems.push(format!(
                    "{}: {name:?} is not a port name (IANA_SVC_NAME: at most 15 lowercase \
                     letters, digits and '-', at least one letter, no '-' at either end or \
                     twice in a row)",
                    path("targetPort")
                ));
            }
            _ => {}
        }
    }
    match spec.cluster_ip.as_deref() {
        None | Some("" | "None") => {}
        Some(ip) => check_ip(ip, "spec.clusterIP", problems),
    }
}

/// Whether `name` is a valid IANA_SVC_NAME (RFC 6335), which Kubernetes requires of a named
/// `targetPort` and of container port names.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Every webhook's selectors must be well formed: the API server refuses the object otherwise.
fn check_webhook_configuration(
    configuration: &MutatingWebhookConfiguration,
    problems: &mut Vec<String>,
) {
    for (i, webhook) in configuration.webhooks.iter().flatten().enumerate() {
        for (field, selector) in [
            ("namespaceSelector", &webhook.namespace_selector),
            ("objectSelector", &webhook.object_selector),
        ] {
            if let Some(Err(problem)) = selector.as_ref().map(selector::check) {
                problems.push(format!("webhooks[{i}].{field}.{problem}"));
            }
        }
    }
}

fn check_endpoint_slice(slice: &EndpointSlice, problems: &mut Vec<String>) {
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(number) = port.port {
            check_port(number, &format!("ports[{i}].port"), problems);
        }
    }
    if matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        for (e, endpoint) in slice.endpoints.iter().enumerate() {
            for (a, address) in endpoint.addresses.iter().enumerate() {
                check_ip(address, &format!("endpoints[{e}].addresses[{a}]"), problems);
            }
        }
    }
}

fn mesh_config_map(value: Value) -> Result<Kept, String> {
    let config_map: ConfigMap = check(value, |_: &ConfigMap, _| {})?;
    let text = config_map
        .data
        .as_ref()
        .and_then(|data| data.get("mesh"))
        .map(String::as_str)
        .unwrap_or_default();
    MeshConfig::parse(text)
        .map(|mesh| Kept::Mesh(Box::new(mesh)))
        .map_err(|e| match e {
            YamlError::Field { path, message } => format!("data.mesh: {path}: {message}"),
            syntax => format!("data.mesh: {syntax}"),
        })
}

/// The `values` and `config` of the `istio-sidecar-injector` ConfigMap (Istio's templates in
/// `config` are not used: Remora injects its own sidecar).
fn injector_config_map(value: Value) -> Result<Kept, String> {
    let config_map: ConfigMap = check(value, |_: &ConfigMap, _| {})?;
    let key = |name: &str| {
        config_map
            .data
            .as_ref()
            .and_then(|data| data.get(name))
            .map(String::as_str)
            .unwrap_or_default()
    };
    let values = Values::parse(key("values")).map_err(|e| format!("data.values: {e}"))?;
    let policy = InjectionPolicy::parse(key("config")).map_err(|e| format!("data.config: {e}"))?;
    for note in policy.unused() {
        tracing::info!(%note, "istio-sidecar-injector ConfigMap");
    }
    Ok(Kept::Injection(Box::new((values, policy))))
}

#[cfg(test)]
mod tests;
