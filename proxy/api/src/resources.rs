//! A sidecar's config as named discovery resources, and how they make its [`Snapshot`].
//!
//! The control plane cuts a sidecar's snapshot into resources (`service/HOST`,
//! `endpoints/HOST`, `address/IP:PORT`, `workload/NS/NAME`, `mesh`, `security`, `telemetry`,
//! `inbound`)
//! so that a change re-sends only what changed: one Service's endpoints, not the mesh. Both
//! ends use this module: the control plane to say which snapshot a set of resources is (the
//! local launcher waits for it), the sidecar to keep what it holds and put it together.
//!
//! A state's version is the sum of its resources' digests, so either end can update it per
//! change, and a sidecar can tell when it no longer holds what the control plane thinks it
//! does.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use prost::{bytes::Bytes, Message};

use crate::proto::config::{resource::Body, Push, Resource, Service, ServiceEndpoints, Snapshot};

/// FNV-1a, 64 bits: stable across builds and platforms, which a version must be.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The version string of a state whose digests sum to `sum`.
pub fn version_text(sum: u64) -> String {
    format!("{sum:016x}")
}

/// The version of a state holding `resources`, each as encoded.
pub fn version_of<'a>(resources: impl IntoIterator<Item = &'a [u8]>) -> String {
    version_text(
        resources
            .into_iter()
            .fold(0u64, |sum, bytes| sum.wrapping_add(fnv1a64(bytes))),
    )
}

/// The name a resource with `body` must have; `None` for a Service's endpoints, which do not
/// say whose they are ([`endpoints_name`] names them).
pub fn name_of(body: &Body) -> Option<String> {
    Some(match body {
        Body::Service(service) => format!("service/{}", service.hostname),
        Body::Endpoints(_) => return None,
        Body::Address(endpoint) => format!("address/{}", endpoint.address),
        Body::Workload(workload) => format!("workload/{}/{}", workload.namespace, workload.name),
        Body::Mesh(_) => "mesh".to_owned(),
        Body::Security(_) => "security".to_owned(),
        Body::Telemetry(_) => "telemetry".to_owned(),
        Body::Inbound(_) => "inbound".to_owned(),
    })
}

/// The name of the endpoints resource of Service `hostname`.
pub fn endpoints_name(hostname: &str) -> String {
    format!("endpoints/{hostname}")
}

/// Why a push could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("resources[{index}]: {reason}")]
    Resource { index: usize, reason: String },
    #[error("{name}: {reason}")]
    Named { name: String, reason: String },
    /// What the sidecar holds is not what the control plane thinks it holds: only a full
    /// push mends that.
    #[error("{0}: this sidecar and the control plane disagree on what it holds")]
    Diverged(String),
}

/// The parts of a push, put back together as they arrive.
#[derive(Debug, Default)]
pub struct Parts(Option<Push>);

impl Parts {
    /// Takes one part: the whole push once its last part is in.
    pub fn add(&mut self, part: Push) -> Option<Push> {
        let more = part.more;
        let whole = match self.0.take() {
            None => part,
            Some(mut so_far) => {
                so_far.resources.extend(part.resources);
                so_far.removed.extend(part.removed);
                so_far.version = part.version;
                so_far.full |= part.full;
                so_far
            }
        };
        if more {
            self.0 = Some(whole);
            None
        } else {
            Some(Push {
                more: false,
                ..whole
            })
        }
    }
}

/// Splits `resources` (encoded) into parts of about `bytes` each (a resource is never split),
/// for a push sent in parts; at least one part, maybe empty.
pub fn split(resources: Vec<Bytes>, bytes: usize) -> Vec<Vec<Bytes>> {
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for resource in resources {
        if size > 0 && size + resource.len() > bytes {
            parts.push(Vec::new());
            size = 0;
        }
        size += resource.len();
        if let Some(part) = parts.last_mut() {
            part.push(resource);
        }
    }
    parts
}

/// The resources a sidecar holds, as received.
#[derive(Debug, Default)]
pub struct Held {
    /// Shared with the snapshot in use, whose config dump they are.
    resources: Arc<BTreeMap<String, Bytes>>,
    sum: u64,
}

/// A push checked against what is held: the snapshot it makes, to be checked in turn, and the
/// change to keep if that snapshot is taken.
#[derive(Debug)]
pub struct Staged {
    pub snapshot: Snapshot,
    full: bool,
    set: Vec<(String, Bytes)>,
    removed: Vec<String>,
    sum: u64,
}

impl Held {
    /// What holding `push` would make, without changing what is held.
    pub fn stage(&self, push: Push) -> Result<Staged, PushError> {
        let mut set = BTreeMap::new();
        for (index, bytes) in push.resources.into_iter().enumerate() {
            let resource = Resource::decode(bytes.clone()).map_err(|e| PushError::Resource {
                index,
                reason: e.to_string(),
            })?;
            let name = resource.name.clone();
            // Held on its own: a slice of the message would keep the whole receive buffer
            // alive for as long as this one resource is held.
            let bytes = Bytes::copy_from_slice(&bytes);
            if set.insert(name.clone(), (bytes, resource)).is_some() {
                return Err(PushError::Named {
                    name,
                    reason: "sent twice in one push".to_owned(),
                });
            }
        }
        let removed: BTreeSet<&String> = push.removed.iter().collect();
        let mut sum = if push.full { 0 } else { self.sum };
        if !push.full {
            for name in &removed {
                let held = self
                    .resources
                    .get(*name)
                    .ok_or_else(|| PushError::Diverged(format!("{name}: removed, but not held")))?;
                sum = sum.wrapping_sub(fnv1a64(held));
            }
        }
        for (name, (bytes, _)) in &set {
            if let Some(held) = self.resources.get(name).filter(|_| !push.full) {
                sum = sum.wrapping_sub(fnv1a64(held));
            }
            sum = sum.wrapping_add(fnv1a64(bytes));
        }
        let held = version_text(sum);
        if held != push.version {
            return Err(PushError::Diverged(format!(
                "version: the resources held after this push make {held}, not {}",
                push.version
            )));
        }
        let mut received = Vec::with_capacity(set.len());
        let mut set_bytes = Vec::with_capacity(set.len());
        for (name, (bytes, resource)) in set {
            set_bytes.push((name, bytes));
            received.push(resource);
        }
        // What is held and stays is decoded as the snapshot is put together, merged in name
        // order with what came: never all decoded beside one another before that.
        let kept = self.resources.iter().filter(|(name, _)| {
            !push.full
                && !removed.contains(name)
                && set_bytes
                    .binary_search_by(|(set, _)| set.as_str().cmp(name.as_str()))
                    .is_err()
        });
        let mut snapshot = assemble(merged(kept, received))?;
        snapshot.version = push.version;
        Ok(Staged {
            snapshot,
            full: push.full,
            set: set_bytes,
            removed: push.removed,
            sum,
        })
    }

    /// Holds what `staged` says, once its snapshot is taken; what the snapshot's config dump
    /// is then made of.
    pub fn commit(&mut self, staged: Staged) -> Arc<BTreeMap<String, Bytes>> {
        if staged.full {
            self.resources = Arc::default();
        }
        let resources = Arc::make_mut(&mut self.resources);
        for name in &staged.removed {
            resources.remove(name);
        }
        resources.extend(staged.set);
        self.sum = staged.sum;
        self.resources.clone()
    }

    /// How many resources are held.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// Held resources (encoded) and received ones (decoded), each in name order, as one sequence
/// in name order, the held ones decoded as they are reached.
fn merged<'a>(
    held: impl Iterator<Item = (&'a String, &'a Bytes)>,
    received: Vec<Resource>,
) -> impl Iterator<Item = Result<Resource, PushError>> {
    let mut held = held.peekable();
    let mut received = received.into_iter().peekable();
    std::iter::from_fn(move || {
        let held_first = match (held.peek(), received.peek()) {
            (Some((name, _)), Some(next)) => name.as_str() < next.name.as_str(),
            (held, _) => held.is_some(),
        };
        if !held_first {
            return received.next().map(Ok);
        }
        let (name, bytes) = held.next()?;
        Some(
            Resource::decode(bytes.clone()).map_err(|e| PushError::Named {
                name: name.clone(),
                reason: e.to_string(),
            }),
        )
    })
}

/// The snapshot that `resources` (in name order) make; `version` is left empty. Each resource
/// must be what its name says; a Service's ports take their endpoints from its `endpoints/`
/// resource when there is one. The first resource that could not be read is the error.
pub fn assemble(
    resources: impl IntoIterator<Item = Result<Resource, PushError>>,
) -> Result<Snapshot, PushError> {
    let mut snapshot = Snapshot::default();
    let mut endpoints: HashMap<String, ServiceEndpoints> = HashMap::new();
    for resource in resources {
        let Resource { name, body } = resource?;
        let problem = |reason: String| PushError::Named {
            name: name.clone(),
            reason,
        };
        let body = body.ok_or_else(|| problem("body: required".to_owned()))?;
        if let Body::Endpoints(found) = body {
            let host = name
                .strip_prefix("endpoints/")
                .ok_or_else(|| problem("endpoints: named other than endpoints/HOST".to_owned()))?;
            endpoints.insert(host.to_owned(), found);
            continue;
        }
        let expected = name_of(&body).unwrap_or_default();
        if expected != name {
            return Err(problem(format!("its content is named {expected:?}")));
        }
        match body {
            Body::Service(service) => snapshot.services.push(service),
            Body::Address(endpoint) => snapshot.endpoints.push(endpoint),
            Body::Workload(workload) => snapshot.workloads.push(workload),
            Body::Mesh(mesh) => snapshot.mesh = Some(mesh),
            Body::Security(security) => snapshot.security = Some(security),
            Body::Telemetry(telemetry) => snapshot.telemetry = Some(telemetry),
            Body::Inbound(inbound) => snapshot.inbound_ports = inbound.ports,
            Body::Endpoints(_) => {}
        }
    }
    for service in &mut snapshot.services {
        if let Some(found) = endpoints.remove(&service.hostname) {
            fill_endpoints(service, found);
        }
    }
    if let Some(host) = endpoints.keys().next() {
        return Err(PushError::Diverged(format!(
            "{}: no service/{host} holds them",
            endpoints_name(host)
        )));
    }
    Ok(snapshot)
}

/// Gives each port of `service` its endpoints from `found`.
fn fill_endpoints(service: &mut Service, found: ServiceEndpoints) {
    let mut by_port: HashMap<u32, _> = found
        .ports
        .into_iter()
        .map(|p| (p.port, p.endpoints))
        .collect();
    for port in &mut service.ports {
        if let Some(endpoints) = by_port.remove(&port.port) {
            port.endpoints = endpoints;
        }
    }
}

#[cfg(test)]
mod tests;
