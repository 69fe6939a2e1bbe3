//! What discovery translates and encodes once per catalog, for every session to share: the
//! resources all sidecars get alike, and the routed Services of each view, built the first
//! time a sidecar of that view asks. A session then only encodes its sidecar's own three
//! resources and compares.
//!
//! Each part is compared with the previous catalog's when it is built, and an unchanged part
//! keeps its previous `Arc` (a session sees at a glance that it has nothing to send), and a
//! changed shared part lists the names that changed (a session sends those, without looking at
//! the tens of thousands that did not).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, OnceLock},
};

use remora_api::{
    proto::config::{self as proto, resource::Body},
    resources::endpoints_name,
};
use tokio::sync::watch;

use crate::config::{Catalog, SharedPart, ViewKey};

pub use crate::config::Encoded;

/// Resources by name.
pub type Entries = BTreeMap<Arc<str>, Encoded>;

/// The resources every sidecar gets alike, for one catalog.
#[derive(Debug, Default)]
pub struct Shared {
    /// Counts up by one each time the content changes.
    pub generation: u64,
    pub entries: Entries,
    /// The names added, changed or removed since generation `generation - 1`.
    pub changed: Vec<Arc<str>>,
}

impl Shared {
    /// The shared resources of `catalog`; `previous` itself when nothing changed.
    fn next(previous: &Arc<Shared>, catalog: &Catalog) -> Arc<Shared> {
        // An unchanged resource keeps its previous bytes (and name), so that generations a
        // lagging session still holds share them rather than each holding a copy.
        let entries: Entries = catalog
            .shared_parts()
            .map(|part| match part {
                // Encoded when its pod was translated, and kept while the pod is unchanged.
                SharedPart::Workload(workload) => (workload.name.clone(), workload.encoded.clone()),
                SharedPart::Made(r) => {
                    let encoded = Encoded::of(&r);
                    match previous.entries.get_key_value(r.name.as_str()) {
                        Some((name, old)) if old.digest == encoded.digest => {
                            (Arc::clone(name), old.clone())
                        }
                        _ => (Arc::from(r.name.as_str()), encoded),
                    }
                }
            })
            .collect();
        let changed = changed_names(&previous.entries, &entries);
        if changed.is_empty() {
            return previous.clone();
        }
        Arc::new(Shared {
            generation: previous.generation + 1,
            entries,
            changed,
        })
    }
}

/// The names whose content differs between `old` and `new` (present in one only, or with
/// another digest), in name order.
pub fn changed_names(old: &Entries, new: &Entries) -> Vec<Arc<str>> {
    let mut changed = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return changed,
            (Some((name, _)), None) => {
                changed.push(Arc::clone(name));
                a.next();
            }
            (None, Some((name, _))) => {
                changed.push(Arc::clone(name));
                b.next();
            }
            (Some((x, old)), Some((y, new))) => match x.cmp(y) {
                std::cmp::Ordering::Less => {
                    changed.push(Arc::clone(x));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    changed.push(Arc::clone(y));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if old.digest != new.digest {
                        changed.push(Arc::clone(y));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// The Services the sidecars of one view see, encoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct View {
    /// `service/HOST` resources.
    pub services: Entries,
    /// The `endpoints/HOST` names of those that are Kubernetes Services (their endpoints are
    /// shared resources).
    pub endpoints: BTreeSet<Arc<str>>,
}

impl View {
    fn of(catalog: &Catalog, shared: &Shared, key: &ViewKey) -> View {
        let mut view = View::default();
        for service in catalog.view_services(key) {
            let endpoints = endpoints_name(&service.hostname);
            if let Some((name, _)) = shared.entries.get_key_value(endpoints.as_str()) {
                view.endpoints.insert(Arc::clone(name));
            }
            let resource = proto::Resource {
                name: format!("service/{}", service.hostname),
                body: Some(Body::Service(service)),
            };
            view.services
                .insert(Arc::from(resource.name.as_str()), Encoded::of(&resource));
        }
        view
    }
}

/// Views by key, each built once by whichever session asks first (others asking for the same
/// one wait for it; those asking for another do not).
type Views = HashMap<ViewKey, Arc<OnceLock<Arc<View>>>>;

/// One catalog, as discovery serves it.
#[derive(Debug)]
pub struct Published {
    pub catalog: Arc<Catalog>,
    pub shared: Arc<Shared>,
    views: Mutex<Views>,
    /// The previous catalog's views, reused where they come out the same.
    previous_views: HashMap<ViewKey, Arc<View>>,
}

impl Published {
    pub fn first(catalog: Arc<Catalog>) -> Self {
        Self {
            shared: Shared::next(&Arc::default(), &catalog),
            catalog,
            views: Mutex::default(),
            previous_views: HashMap::new(),
        }
    }

    /// The next catalog's, reusing what did not change: the views themselves when nothing
    /// they are made of changed, else those that come out the same.
    pub fn next(&self, catalog: Arc<Catalog>) -> Self {
        let built: HashMap<ViewKey, Arc<View>> = self
            .lock_views()
            .iter()
            .filter_map(|(key, cell)| Some((key.clone(), cell.get()?.clone())))
            .collect();
        let shared = Shared::next(&self.shared, &catalog);
        if catalog.view_inputs() == self.catalog.view_inputs() {
            let views = built
                .into_iter()
                .map(|(key, view)| (key, Arc::new(OnceLock::from(view))))
                .collect();
            return Self {
                shared,
                catalog,
                views: Mutex::new(views),
                previous_views: HashMap::new(),
            };
        }
        Self {
            shared,
            catalog,
            views: Mutex::default(),
            previous_views: built,
        }
    }

    /// The Services of view `key`, built on first use (outside the lock on all views).
    pub fn view(&self, key: &ViewKey) -> Arc<View> {
        let cell = self.lock_views().entry(key.clone()).or_default().clone();
        cell.get_or_init(|| {
            let built = View::of(&self.catalog, &self.shared, key);
            match self.previous_views.get(key) {
                Some(previous) if **previous == built => previous.clone(),
                _ => Arc::new(built),
            }
        })
        .clone()
    }

    fn lock_views(&self) -> std::sync::MutexGuard<'_, Views> {
        // A panic elsewhere while the lock was held leaves a map that is still whole.
        self.views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keeps `published` in step with `catalog` until the catalog's source stops.
pub async fn publish(
    mut catalog: watch::Receiver<Arc<Catalog>>,
    published: watch::Sender<Arc<Published>>,
) {
    while catalog.changed().await.is_ok() {
        let latest = catalog.borrow_and_update().clone();
        // Built outside the channel's lock, which sessions need to read.
        let started = std::time::Instant::now();
        let current = published.borrow().clone();
        // Encoding a big mesh takes a while: off the runtime's threads, which serve sessions.
        let Ok(next) = tokio::task::spawn_blocking(move || current.next(latest)).await else {
            tracing::warn!("encoding the discovery resources failed; serving the last ones");
            continue;
        };
        tracing::info!(
            generation = next.shared.generation,
            changed = next.shared.changed.len(),
            took_ms = started.elapsed().as_millis(),
            "discovery resources encoded"
        );
        published.send_replace(Arc::new(next));
    }
}

#[cfg(test)]
mod tests;
