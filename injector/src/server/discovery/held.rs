//! What one sidecar holds, as its session keeps track of it, and the push that takes it to what
//! it should hold: the resources whose content differs, and the names of those it should drop.
//!
//! A sidecar's contents are three parts (the shared resources, its view's Services, its own
//! resources), each compared part by part: an unchanged part is the same `Arc`, and a shared
//! part one change newer lists what changed, so a push costs what changed, not the mesh.

use std::{collections::BTreeSet, sync::Arc};

use bytes::Bytes;

use super::published::{changed_names, Encoded, Entries, Shared, View};

/// The resources a sidecar should hold.
#[derive(Clone, Debug)]
pub struct Contents {
    pub shared: Arc<Shared>,
    pub view: Arc<View>,
    /// `mesh`, `security`, `telemetry`.
    pub own: Entries,
}

impl Contents {
    /// Resource `name`, if the sidecar should hold it.
    pub fn get(&self, name: &str) -> Option<&Encoded> {
        match name.split_once('/') {
            Some(("service", _)) => self.view.services.get(name),
            Some(("endpoints", _)) if self.view.endpoints.contains(name) => {
                self.shared.entries.get(name)
            }
            Some(("endpoints", _)) => None,
            Some(_) => self.shared.entries.get(name),
            None => self.own.get(name),
        }
    }

    /// Every resource the sidecar should hold.
    fn all(&self) -> impl Iterator<Item = (&Arc<str>, &Encoded)> {
        let shared = self.shared.entries.iter().filter(|(name, _)| {
            !name.starts_with("endpoints/") || self.view.endpoints.contains(*name)
        });
        self.own
            .iter()
            .chain(self.view.services.iter())
            .chain(shared)
    }
}

/// What a sidecar has acknowledged holding.
#[derive(Clone, Debug)]
pub struct Held {
    pub contents: Contents,
    /// The sum of its resources' digests: its version.
    pub sum: u64,
}

/// A push, as computed.
#[derive(Debug, Default)]
pub struct Change {
    pub resources: Vec<Bytes>,
    pub removed: Vec<String>,
    /// The version sum once applied.
    pub sum: u64,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

/// Everything in `wanted`: the first push of a stream.
pub fn full(wanted: &Contents) -> Change {
    let mut change = Change::default();
    for (_, encoded) in wanted.all() {
        change.resources.push(encoded.bytes.clone());
        change.sum = change.sum.wrapping_add(encoded.digest);
    }
    change
}

/// What takes a sidecar holding `held` to `wanted`.
pub fn delta(held: &Held, wanted: &Contents) -> Change {
    let before = &held.contents;
    let mut names: BTreeSet<Arc<str>> = before.own.keys().cloned().collect();
    names.extend(wanted.own.keys().cloned());
    if !Arc::ptr_eq(&before.view, &wanted.view) {
        names.extend(changed_names(&before.view.services, &wanted.view.services));
        names.extend(
            before
                .view
                .endpoints
                .symmetric_difference(&wanted.view.endpoints)
                .cloned(),
        );
    }
    if !Arc::ptr_eq(&before.shared, &wanted.shared) {
        if wanted.shared.generation == before.shared.generation + 1 {
            names.extend(wanted.shared.changed.iter().cloned());
        } else {
            names.extend(changed_names(
                &before.shared.entries,
                &wanted.shared.entries,
            ));
        }
    }
    let mut change = Change {
        sum: held.sum,
        ..Change::default()
    };
    for name in names {
        match (before.get(&name), wanted.get(&name)) {
            (Some(old), Some(new)) if old.digest == new.digest => {}
            (old, Some(new)) => {
                change.resources.push(new.bytes.clone());
                change.sum = change
                    .sum
                    .wrapping_sub(old.map_or(0, |o| o.digest))
                    .wrapping_add(new.digest);
            }
            (Some(old), None) => {
                change.removed.push(name.to_string());
                change.sum = change.sum.wrapping_sub(old.digest);
            }
            (None, None) => {}
        }
    }
    change
}

#[cfg(test)]
mod tests;
