//! A cluster's config source: the Kubernetes API, watched once per kind by a reflector, the
//! whole world rebuilt into one [`Catalog`] after each burst of changes.
//!
//! The world is rebuilt rather than patched object by object so a cluster and a directory give
//! the same catalog for the same objects: both hand [`Catalog::from_documents`] parsed
//! [`Document`]s (here an API object with its resourceVersion), which runs the same per-kind
//! checks and rejections. Nothing is published until every kind has been listed once (or is
//! known not to be installed), so sidecars never see a half-read cluster; a kind whose CRD is
//! missing is logged once and looked for again, and its objects arrive when it is installed.
//! New rejections are also written where users look, as an Event on the object, and with
//! `--write-status` in Istio objects' `status.conditions` ([`status`]).
//!
//! Each object is read (parsed and checked) when it arrives, once per resourceVersion, and only
//! its reading is kept ([`held`]), not its JSON: a rebuild after one endpoint changed reads
//! nothing again, and a cluster costs its parsed objects.

mod held;
mod kinds;
mod status;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    api::{Api, ApiResource, DynamicObject},
    runtime::{watcher, WatchStreamExt},
    ResourceExt,
};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;

use held::{order_of, Held};
use kinds::{Kind, Scope, KINDS};
use status::{Judged, StatusWriter, Verdict};

use super::{
    source::{log_new_rejections, new_rejections, seen, settle, Seen, Watching},
    translate::Memo,
    Body, Catalog, Document, Source, SourceError, Subject,
};

/// Where rejections of API objects say they were read.
pub const ORIGIN: &str = "the Kubernetes API";
/// How often a kind the API server does not serve is looked for again.
const RECHECK: Duration = Duration::from_secs(10);
/// The annotation `kubectl apply` keeps a whole copy of the object in: never read, so not kept.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Watches the kinds the control plane reads through `client`, the mesh and injection
/// ConfigMaps in `root_namespace`.
pub struct KubernetesSource {
    client: kube::Client,
    root_namespace: String,
    /// Who writes the Events on rejected objects (the control plane's pod).
    reporter: Reporter,
    /// Writes Istio objects' `status.conditions`, when asked to.
    status: Option<StatusWriter>,
}

impl KubernetesSource {
    pub fn new(client: kube::Client, root_namespace: &str, instance: Option<String>) -> Self {
        Self {
            client: client.clone(),
            root_namespace: root_namespace.to_owned(),
            reporter: Reporter {
                client: client.clone(),
                instance: instance.unwrap_or_else(|| CONTROLLER.to_owned()),
            },
            status: None,
        }
    }

    /// Also keeps a condition in every Istio object's `status` saying whether it was taken
    /// (istiod's `PILOT_ENABLE_STATUS`).
    pub fn writing_status(mut self) -> Self {
        self.status = Some(StatusWriter::new(self.client.clone()));
        self
    }
}

impl Source for KubernetesSource {
    fn watch(self: Box<Self>) -> Watching {
        Box::pin(async move {
            let (signals, signalled) = mpsc::unbounded_channel();
            let mut stores = Vec::with_capacity(KINDS.len());
            for index in 0..KINDS.len() {
                let store = Store::default();
                stores.push(store.clone());
                let api = Apis {
                    client: self.client.clone(),
                    root_namespace: self.root_namespace.clone(),
                };
                tokio::spawn(reflect(index, api, store, signals.clone()));
            }
            drop(signals);
            let writers = Writers {
                events: Arc::new(self.reporter),
                status: self.status.map(Arc::new),
            };
            let (first, published) = oneshot::channel();
            tokio::spawn(rebuild(stores, signalled, writers, first));
            published.await.map_err(|_| SourceError::Stopped)
        })
    }
}

/// Where a kind's objects are read.
struct Apis {
    client: kube::Client,
    root_namespace: String,
}

impl Apis {
    fn of(&self, kind: &Kind, resource: &ApiResource) -> Api<DynamicObject> {
        match kind.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), resource),
            Scope::RootNamespace => {
                Api::namespaced_with(self.client.clone(), &self.root_namespace, resource)
            }
        }
    }
}

/// Drops what the catalog never reads and can be large, before an object is read: managed
/// fields and `kubectl apply`'s copy of the object, and of a Pod all but what says who it is,
/// where and on which ports (its volumes, environment, probes and container statuses are most
/// of a real pod, and a cluster has thousands).
/// (List items carry no `kind`: the kind watched says whether it is a Pod.)
fn prune(object: &mut DynamicObject, is_pod: bool) {
    object.metadata.managed_fields = None;
    object.annotations_mut().remove(LAST_APPLIED);
    if is_pod {
        prune_pod(&mut object.data);
    }
}

/// The Pod fields the catalog reads (`config::translate`, `Catalog::workload`).
const POD_SPEC: [&str; 4] = [
    "serviceAccountName",
    "serviceAccount",
    "hostNetwork",
    "containers",
];
const POD_CONTAINER: [&str; 2] = ["name", "ports"];
const POD_STATUS: [&str; 3] = ["phase", "podIP", "podIPs"];

fn prune_pod(data: &mut Value) {
    let keep_only = |value: Option<&mut Value>, fields: &[&str]| {
        if let Some(Value::Object(map)) = value {
            map.retain(|field, _| fields.contains(&field.as_str()));
        }
    };
    keep_only(data.get_mut("status"), &POD_STATUS);
    let spec = data.get_mut("spec");
    if let Some(Value::Object(spec)) = spec {
        spec.retain(|field, _| POD_SPEC.contains(&field.as_str()));
        if let Some(Value::Array(containers)) = spec.get_mut("containers") {
            for container in containers {
                keep_only(Some(container), &POD_CONTAINER);
            }
        }
    }
}

/// What a kind's reflector says to the rebuild.
#[derive(Debug)]
enum Signal {
    /// Listed (again) in one of its versions: its store holds the whole kind.
    Listed(usize, &'static str),
    /// An object was added, edited or deleted.
    Changed,
    /// Its CRD is not installed.
    Absent(usize),
}

/// One kind's objects, shared by its watch (which writes) and the rebuild (which reads).
type Store = Arc<Mutex<Held>>;

/// Runs kind `index`'s watch until the rebuild stops listening, keeping what it reads in
/// `store`: watched in the newest of its versions the API server serves; when it serves none
/// (a CRD not installed, or deleted: its objects are gone), looked for again every [`RECHECK`].
async fn reflect(index: usize, apis: Apis, store: Store, signals: mpsc::UnboundedSender<Signal>) {
    let kind = &KINDS[index];
    let mut absent = false;
    loop {
        for version in kind.versions {
            let api = apis.of(kind, &kind.resource_in(version));
            let events = watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(move |object| prune(object, kind.kind == "Pod"));
            let mut events = std::pin::pin!(events);
            // A (re)list's objects, kept whole once it is done.
            let mut listed: Option<BTreeMap<held::Order, held::Kept>> = None;
            while let Some(event) = events.next().await {
                let signal = match event {
                    Ok(watcher::Event::Init) => {
                        listed = Some(BTreeMap::new());
                        continue;
                    }
                    Ok(watcher::Event::InitApply(object)) => {
                        let (order, kept) = keep(&store, index, &object);
                        listed.get_or_insert_default().insert(order, kept);
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => {
                        store.lock().replace(listed.take().unwrap_or_default());
                        if std::mem::take(&mut absent) {
                            tracing::info!(kind = %kind, version, "now served: reading it");
                        } else if version != &kind.versions[0] {
                            tracing::warn!(kind = %kind, version, "served only in this older version: reading it there");
                        }
                        Signal::Listed(index, version)
                    }
                    Ok(watcher::Event::Apply(object)) => {
                        let (order, kept) = keep(&store, index, &object);
                        store.lock().apply(order, kept);
                        Signal::Changed
                    }
                    Ok(watcher::Event::Delete(object)) => {
                        store.lock().delete(&order_of(&object));
                        Signal::Changed
                    }
                    Err(e) if not_installed(&e) => break,
                    Err(e) => {
                        tracing::warn!(kind = %kind, error = %e, "watching the Kubernetes API; retrying");
                        continue;
                    }
                };
                if signals.send(signal).is_err() {
                    return;
                }
            }
        }
        // Served in none of its versions: whatever was stored is gone with it.
        let had_objects = !store.lock().is_empty();
        store.lock().replace(BTreeMap::new());
        if !std::mem::replace(&mut absent, true) {
            tracing::info!(kind = %kind, "not served by this cluster (CRD not installed): skipped until it is");
            if signals.send(Signal::Absent(index)).is_err() {
                return;
            }
        } else if had_objects && signals.send(Signal::Changed).is_err() {
            return;
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// `object` of kind `index` as `store` should keep it: read now, unless held at this version.
fn keep(store: &Store, index: usize, object: &DynamicObject) -> (held::Order, held::Kept) {
    let with_status = KINDS[index].is_istio();
    store.lock().keep(object, with_status, || {
        document(index, object)
            .map(Document::read)
            .unwrap_or_default()
    })
}

/// Whether a watch failed because the API server does not serve the kind (a CRD not installed).
fn not_installed(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

/// Whether each kind has been listed (or found missing).
struct World {
    stores: Vec<Store>,
    /// The version each kind is read in, once listed (or `None`: not served).
    ready: Vec<Option<Option<&'static str>>>,
}

/// What builds catalogs (on a blocking thread): the stores, what the last build saw of them,
/// and what it made of each pod.
struct Builder {
    stores: Vec<Store>,
    last: Vec<u64>,
    memo: Memo,
}

/// A build's outcome: the change counts it saw, and the catalog unless nothing had changed.
type Built = (Builder, Vec<u64>, Option<Catalog>);

impl Builder {
    fn counts(&self) -> Vec<u64> {
        self.stores.iter().map(|s| s.lock().changes()).collect()
    }

    /// A catalog of the stores as they are now; none when nothing changed since the last
    /// build, unless `first`.
    fn build(mut self, first: bool) -> Built {
        let counts = self.counts();
        if !first && counts == self.last {
            return (self, counts, None);
        }
        let mut reads = Vec::new();
        for store in &self.stores {
            let store = store.lock();
            for (_, kept) in store.objects() {
                reads.extend(kept.reads.iter().cloned());
            }
        }
        self.last.clone_from(&counts);
        let catalog = Catalog::from_reads(reads, &mut self.memo);
        (self, counts, Some(catalog))
    }
}

/// Where rejections and conditions are written.
struct Writers {
    events: Arc<Reporter>,
    status: Option<Arc<StatusWriter>>,
}

/// Rebuilds the catalog after each burst of signals once every kind is ready; the first catalog
/// goes to `first` with the channel later ones are published on.
async fn rebuild(
    stores: Vec<Store>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    writers: Writers,
    first: oneshot::Sender<watch::Receiver<Arc<Catalog>>>,
) {
    let ready = vec![None; stores.len()];
    // Away (building) only while a burst settles.
    let mut builder = Some(Builder {
        stores: stores.clone(),
        last: Vec::new(),
        memo: Memo::default(),
    });
    let mut world = World { stores, ready };
    let mut first = Some(first);
    let mut publish: Option<watch::Sender<Arc<Catalog>>> = None;
    while let Some(signal) = signals.recv().await {
        world.note(signal);
        // Once every kind is read, building starts with the burst rather than after it: most
        // bursts are one change, whose catalog is then ready when the burst has settled (it
        // is built again if more changes came meanwhile). Building is long enough at scale to
        // keep off the runtime's threads.
        let fresh = publish.is_none();
        let early = start(&mut builder, &world, fresh);
        if !settle(&mut signals, |signal| world.note(signal)).await {
            return;
        }
        // Every kind read only while the burst settled: building starts now.
        let Some(building) = early.or_else(|| start(&mut builder, &world, fresh)) else {
            continue;
        };
        let started = std::time::Instant::now();
        let Ok((mut returned, counts, mut catalog)) = building.await else {
            tracing::error!("building the config catalog failed; no more config is read");
            return;
        };
        if counts != returned.counts() {
            let Ok((again, _, rebuilt)) =
                tokio::task::spawn_blocking(move || returned.build(fresh)).await
            else {
                tracing::error!("building the config catalog failed; no more config is read");
                return;
            };
            (returned, catalog) = (again, rebuilt);
        }
        builder = Some(returned);
        let Some(catalog) = catalog else { continue };
        let before = publish
            .as_ref()
            .map(|p| seen(&p.borrow()))
            .unwrap_or_default();
        log_new_rejections(&catalog, &before);
        let events = world.events(&catalog, &before);
        let judged = writers.status.as_ref().map(|_| world.judged(&catalog));
        tracing::info!(
            objects = world
                .stores
                .iter()
                .map(|s| s.lock().objects().count())
                .sum::<usize>(),
            rejected = catalog.rejected.len(),
            waited_ms = started.elapsed().as_millis(),
            "config rebuilt from the Kubernetes API"
        );
        let catalog = Arc::new(catalog);
        match &publish {
            Some(sender) => {
                if sender.receiver_count() == 0 {
                    return;
                }
                let old = sender.send_replace(catalog);
                // The last holder of a whole-cluster catalog pays for freeing it.
                tokio::task::spawn_blocking(move || drop(old));
            }
            None => {
                let (sender, receiver) = watch::channel(catalog);
                let Some(first) = first.take() else { return };
                if first.send(receiver).is_err() {
                    return;
                }
                publish = Some(sender);
            }
        }
        // After publishing: an API server slow to take Events must not hold config back.
        if !events.is_empty() {
            tokio::spawn(report(writers.events.clone(), events));
        }
        if let (Some(writer), Some(judged)) = (&writers.status, judged) {
            if !judged.is_empty() {
                tokio::spawn(writer.clone().write(world.stores.clone(), judged));
            }
        }
    }
}

/// Starts a build once every kind is read (`builder` is away until it is done).
fn start(
    builder: &mut Option<Builder>,
    world: &World,
    fresh: bool,
) -> Option<tokio::task::JoinHandle<Built>> {
    let ready = builder.take_if(|_| world.ready.iter().all(Option::is_some))?;
    Some(tokio::task::spawn_blocking(move || ready.build(fresh)))
}

impl World {
    fn note(&mut self, signal: Signal) {
        match signal {
            Signal::Listed(index, version) => self.ready[index] = Some(Some(version)),
            Signal::Absent(index) => self.ready[index] = Some(None),
            Signal::Changed => {}
        }
    }

    /// The objects newly rejected in `catalog`, as Events refer to them, and why.
    fn events(&self, catalog: &Catalog, before: &Seen) -> Vec<(ObjectReference, String)> {
        new_rejections(catalog, before)
            .filter_map(|r| Some((self.reference(&r.subject)?, r.reason.clone())))
            .collect()
    }

    /// What `catalog` made of each Istio object: its rejections' reasons, or none.
    fn judged(&self, catalog: &Catalog) -> Vec<Judged> {
        let mut reasons: HashMap<(&str, &str, &str), Vec<&str>> = HashMap::new();
        for rejection in &catalog.rejected {
            if let Subject::Object {
                kind,
                namespace,
                name,
            } = &rejection.subject
            {
                reasons
                    .entry((kind, namespace, name))
                    .or_default()
                    .push(&rejection.reason);
            }
        }
        let mut judged = Vec::new();
        for (index, kind) in KINDS.iter().enumerate() {
            let Some(Some(version)) = self.ready[index].filter(|_| kind.is_istio()) else {
                continue;
            };
            let store = self.stores[index].lock();
            for ((_, namespace, name), kept) in store.objects() {
                let verdict: Verdict = match reasons.get(&(kind.kind, namespace, name)) {
                    Some(reasons) => Err(reasons.join("; ")),
                    None => Ok(()),
                };
                if status::differs(kept.status.as_ref(), kept.generation, &verdict) {
                    judged.push(Judged {
                        kind: index,
                        version,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        verdict,
                    });
                }
            }
        }
        judged
    }

    /// The stored object a rejection is about, as an Event refers to it.
    fn reference(&self, subject: &Subject) -> Option<ObjectReference> {
        let Subject::Object {
            kind,
            namespace,
            name,
        } = subject
        else {
            return None;
        };
        let (index, _) = KINDS
            .iter()
            .enumerate()
            .find(|(_, k)| k.kind == kind.as_str())?;
        let store = self.stores[index].lock();
        let object = store.find(namespace, name)?;
        let resource = KINDS[index].resource();
        Some(ObjectReference {
            api_version: Some(resource.api_version),
            kind: Some(resource.kind),
            namespace: (!namespace.is_empty()).then(|| namespace.clone()),
            name: Some(name.clone()),
            uid: object.uid.clone(),
            resource_version: Some(object.resource_version.clone()),
            field_path: None,
        })
    }
}

/// An object of kind `index` as the document a catalog is built from. List items carry no
/// `apiVersion` and `kind`; the kind watched says what they are.
fn document(index: usize, object: &DynamicObject) -> Option<Document> {
    let mut value = serde_json::to_value(object).ok()?;
    let resource = KINDS[index].resource();
    let fields = value.as_object_mut()?;
    fields.insert("apiVersion".into(), Value::String(resource.api_version));
    fields.insert("kind".into(), Value::String(resource.kind));
    Some(Document {
        origin: ORIGIN.to_owned(),
        position: format!(
            "resourceVersion {}",
            object.resource_version().unwrap_or_default()
        ),
        body: Body::Object(value),
    })
}

/// Writes the rejections' Events.
struct Reporter {
    client: kube::Client,
    /// The control plane's pod.
    instance: String,
}

/// Who Events say wrote them.
const CONTROLLER: &str = "remora-injector";

/// Writes a Warning Event on each object newly rejected, why in its note: `kubectl describe`
/// shows it. Each is a new Event (never a patch of an earlier one, whose note would be stale).
async fn report(reporter: Arc<Reporter>, events: Vec<(ObjectReference, String)>) {
    for (reference, reason) in events {
        let namespace = reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = k8s_openapi::api::events::v1::Event {
            metadata: kube::core::ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    reference.name.as_deref().unwrap_or(CONTROLLER),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                now,
            )),
            type_: Some("Warning".to_owned()),
            reason: Some("Rejected".to_owned()),
            action: Some("Validate".to_owned()),
            note: Some(truncate(&reason, 1000)),
            regarding: Some(reference),
            reporting_controller: Some(CONTROLLER.to_owned()),
            reporting_instance: Some(reporter.instance.clone()),
            ..Default::default()
        };
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(reporter.client.clone(), &namespace);
        if let Err(e) = events
            .create(&kube::api::PostParams::default(), &event)
            .await
        {
            let name = event.regarding.and_then(|r| r.name).unwrap_or_default();
            tracing::warn!(object = %name, error = %e, "cannot write the rejection's Event");
        }
    }
}

/// `text` cut to at most `limit` bytes on a character boundary (an Event's note is ≤ 1 kB).
fn truncate(text: &str, limit: usize) -> String {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
