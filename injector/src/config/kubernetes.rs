//! A cluster's config source: the Kubernetes API, watched once per kind by a reflector, the
//! whole world rebuilt into one [`Catalog`] after each burst of changes.
//!
//! The world is rebuilt rather than patched object by object so a cluster and a directory give
//! the same catalog for the same objects: both hand [`Catalog::from_documents`] parsed
//! [`Document`]s (here an API object with its resourceVersion), which runs the same per-kind
//! checks and rejections. Nothing is published until every kind has been listed once (or is
//! known not to be installed), so sidecars never see a half-read cluster; a kind whose CRD is
//! missing is logged once and watched on, and its objects arrive when it is installed.
//! Rejections of new objects are also written where users look, as an Event on the object.

mod kinds;
#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    api::{Api, DynamicObject},
    runtime::{
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    ResourceExt,
};
use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_stream::{Stream, StreamExt};

use kinds::KINDS;

use super::{
    source::{log_new_rejections, Watching},
    Body, Catalog, Document, Rejection, Source, SourceError, Subject,
};

/// Where rejections of API objects say they were read.
pub const ORIGIN: &str = "the Kubernetes API";
/// How long the API must stay quiet before the world is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a rebuild waits after the first change of a burst, however busy the API stays.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// The annotation `kubectl apply` keeps a whole copy of the object in: never read, so not kept.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Watches the kinds the control plane reads through `client`, the mesh and injection
/// ConfigMaps in `root_namespace`.
pub struct KubernetesSource {
    client: kube::Client,
    root_namespace: String,
    /// Who writes the Events on rejected objects (the control plane's pod).
    reporter: Reporter,
}

impl KubernetesSource {
    pub fn new(client: kube::Client, root_namespace: &str, instance: Option<String>) -> Self {
        Self {
            client,
            root_namespace: root_namespace.to_owned(),
            reporter: Reporter {
                controller: "remora-injector".to_owned(),
                instance,
            },
        }
    }
}

impl Source for KubernetesSource {
    fn watch(self: Box<Self>) -> Watching {
        Box::pin(async move {
            let (signals, signalled) = mpsc::unbounded_channel();
            let mut stores = Vec::with_capacity(KINDS.len());
            for (index, kind) in KINDS.iter().enumerate() {
                let resource = kind.resource();
                let api: Api<DynamicObject> = match kind.scope {
                    kinds::Scope::Cluster => Api::all_with(self.client.clone(), &resource),
                    kinds::Scope::RootNamespace => {
                        Api::namespaced_with(self.client.clone(), &self.root_namespace, &resource)
                    }
                };
                let writer = reflector::store::Writer::new(resource);
                let store = writer.as_reader();
                let events = reflector(writer, watcher(api, watcher::Config::default()));
                tokio::spawn(reflect(index, events, signals.clone()));
                stores.push(store);
            }
            drop(signals);
            let recorder = Recorder::new(self.client, self.reporter);
            let (first, published) = oneshot::channel();
            tokio::spawn(rebuild(stores, signalled, recorder, first));
            published.await.map_err(|_| SourceError::Stopped)
        })
    }
}

/// One kind's events, pruned of what is never read and stored by its reflector.
fn reflector(
    writer: reflector::store::Writer<DynamicObject>,
    events: impl Stream<Item = watcher::Result<watcher::Event<DynamicObject>>> + Send + 'static,
) -> impl Stream<Item = watcher::Result<watcher::Event<DynamicObject>>> + Send {
    reflector::reflector(writer, events.default_backoff().modify(prune))
}

/// Drops what the catalog never reads and can be large: managed fields and `kubectl apply`'s
/// copy of the object.
fn prune(object: &mut DynamicObject) {
    object.metadata.managed_fields = None;
    object.annotations_mut().remove(LAST_APPLIED);
}

/// What a kind's reflector says to the rebuild.
#[derive(Debug)]
enum Signal {
    /// Listed (again): its store holds the whole kind.
    Listed(usize),
    /// An object was added, edited or deleted.
    Changed,
    /// Its CRD is not installed.
    Absent(usize),
}

/// Runs kind `index`'s reflector until the rebuild stops listening.
async fn reflect(
    index: usize,
    events: impl Stream<Item = watcher::Result<watcher::Event<DynamicObject>>>,
    signals: mpsc::UnboundedSender<Signal>,
) {
    let kind = &KINDS[index];
    let mut events = std::pin::pin!(events);
    let mut absent = false;
    while let Some(event) = events.next().await {
        let signal = match event {
            Ok(watcher::Event::InitDone) => {
                if std::mem::take(&mut absent) {
                    tracing::info!(kind = %kind, "now installed: reading it");
                }
                Signal::Listed(index)
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Err(e) if not_installed(&e) => {
                if std::mem::replace(&mut absent, true) {
                    continue;
                }
                tracing::info!(kind = %kind, "not installed in this cluster: skipped until it is");
                Signal::Absent(index)
            }
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

/// Whether a watch failed because the API server does not serve the kind (a CRD not installed).
fn not_installed(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

/// Whether each kind has been listed (or found missing), and what was last published.
struct World {
    stores: Vec<Store<DynamicObject>>,
    ready: Vec<bool>,
    /// Every object's kind, namespace, name and resourceVersion at the last build.
    last: Vec<(usize, String, String, String)>,
}

/// Rebuilds the catalog after each burst of signals once every kind is ready; the first catalog
/// goes to `first` with the channel later ones are published on.
async fn rebuild(
    stores: Vec<Store<DynamicObject>>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    recorder: Recorder,
    first: oneshot::Sender<watch::Receiver<Arc<Catalog>>>,
) {
    let ready = vec![false; stores.len()];
    let mut world = World {
        stores,
        ready,
        last: Vec::new(),
    };
    let mut first = Some(first);
    let mut publish: Option<watch::Sender<Arc<Catalog>>> = None;
    while let Some(signal) = signals.recv().await {
        world.note(signal);
        if !settle(&mut signals, &mut world).await {
            return;
        }
        if world.ready.contains(&false) {
            continue;
        }
        let versions = world.versions();
        if publish.is_some() && versions == world.last {
            continue;
        }
        let documents = world.documents();
        let Ok(catalog) = tokio::task::spawn_blocking(move || {
            Catalog::from_documents(documents.into_iter().map(Ok))
        })
        .await
        else {
            tracing::warn!("building the config catalog failed; keeping the last config");
            continue;
        };
        world.last = versions;
        let before: BTreeSet<Rejection> = publish
            .as_ref()
            .map(|p| p.borrow().rejected.iter().cloned().collect())
            .unwrap_or_default();
        log_new_rejections(&catalog, &before);
        let events = world.events(&catalog, &before);
        tracing::info!(
            objects = world.last.len(),
            rejected = catalog.rejected.len(),
            "config rebuilt from the Kubernetes API"
        );
        let catalog = Arc::new(catalog);
        match &publish {
            Some(sender) => {
                if sender.send(catalog).is_err() {
                    return;
                }
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
            tokio::spawn(report(recorder.clone(), events));
        }
    }
}

/// Waits for a burst of signals, whose first has just been noted, to end: until none came for
/// [`DEBOUNCE`], or [`MAX_DELAY`] after the first. False once every reflector has stopped.
async fn settle(signals: &mut mpsc::UnboundedReceiver<Signal>, world: &mut World) -> bool {
    let latest = Instant::now() + MAX_DELAY;
    loop {
        let quiet_until = (Instant::now() + DEBOUNCE).min(latest);
        match tokio::time::timeout_at(quiet_until, signals.recv()).await {
            Ok(Some(signal)) => world.note(signal),
            Ok(None) => return false,
            Err(_settled) => return true,
        }
    }
}

impl World {
    fn note(&mut self, signal: Signal) {
        match signal {
            Signal::Listed(index) | Signal::Absent(index) => self.ready[index] = true,
            Signal::Changed => {}
        }
    }

    /// Every stored object in a fixed order: kind by kind, oldest first (Istio breaks ties
    /// between conflicting objects by age), then by namespace and name.
    fn objects(&self) -> Vec<(usize, Arc<DynamicObject>)> {
        let mut objects = Vec::new();
        for (index, store) in self.stores.iter().enumerate() {
            let mut state = store.state();
            state.sort_by(|a, b| {
                let age = |o: &DynamicObject| o.metadata.creation_timestamp.clone();
                (age(a), a.namespace(), a.name_any()).cmp(&(age(b), b.namespace(), b.name_any()))
            });
            objects.extend(state.into_iter().map(|object| (index, object)));
        }
        objects
    }

    fn versions(&self) -> Vec<(usize, String, String, String)> {
        self.objects()
            .into_iter()
            .map(|(index, o)| {
                let version = o.resource_version().unwrap_or_default();
                (
                    index,
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                    version,
                )
            })
            .collect()
    }

    /// The stored objects as the documents a catalog is built from. List items carry no
    /// `apiVersion` and `kind`; the kind watched says what they are.
    fn documents(&self) -> Vec<Document> {
        self.objects()
            .into_iter()
            .filter_map(|(index, object)| {
                let mut value = serde_json::to_value(&*object).ok()?;
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
            })
            .collect()
    }

    /// The objects newly rejected in `catalog`, as Events refer to them, and why.
    fn events(
        &self,
        catalog: &Catalog,
        before: &BTreeSet<Rejection>,
    ) -> Vec<(ObjectReference, String)> {
        catalog
            .rejected
            .iter()
            .filter(|r| !before.contains(r))
            .filter_map(|r| Some((self.reference(&r.subject)?, r.reason.clone())))
            .collect()
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
        let object = self.stores[index]
            .find(|o| o.name_any() == *name && o.namespace().unwrap_or_default() == *namespace)?;
        let resource = KINDS[index].resource();
        Some(ObjectReference {
            api_version: Some(resource.api_version),
            kind: Some(resource.kind),
            namespace: object.namespace(),
            name: Some(object.name_any()),
            uid: object.uid(),
            resource_version: object.resource_version(),
            field_path: None,
        })
    }
}

/// Writes a Warning Event on each object newly rejected: `kubectl describe` shows why.
async fn report(recorder: Recorder, events: Vec<(ObjectReference, String)>) {
    for (reference, reason) in events {
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "Rejected".to_owned(),
            note: Some(truncate(&reason, 1000)),
            action: "Validate".to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            let name = reference.name.unwrap_or_default();
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
