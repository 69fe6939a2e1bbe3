//! Pods to what the catalog knows of them: the facts a sidecar's own resources are cut from and,
//! for a running pod, its workload (address, identity, record).
//!
//! A pod is translated alone, except for whether its IP is its own (which depends on the pods
//! before it, checked by [`super::translate`]). That makes each pod's translation reusable: a
//! [`Memo`] keeps it for the next translation, which reuses it for the same object (the same
//! `Arc`, as a source hands over an unchanged object) in the same context (mesh config and
//! security policies unchanged). A rebuild after one endpoint changed translates no pod again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use remora_api::{proto::config as proto, SpiffeId};

use crate::inject::metadata;

use super::{
    super::{
        encoded::WorkloadRecord,
        mesh::{MeshConfig, ProxyConfig},
        objects::{Key, Labelled, Objects, Rejection},
        security::{self, SecurityPolicy},
        well_known::{service_account_of, DEFAULT_SERVICE_ACCOUNT, SIDECAR_STATUS_ANNOTATION},
    },
    is_tcp, PodFacts,
};

pub(super) static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A pod translated alone.
#[derive(Clone)]
pub(super) struct Translated {
    /// What was wrong with it: a bad override (the pod is kept), or no valid identity (it is
    /// not).
    pub(super) rejections: Vec<Rejection>,
    pub(super) kept: Option<Kept>,
}

#[derive(Clone)]
pub(super) struct Kept {
    pub(super) facts: Arc<PodFacts>,
    /// `None` for a pod without a (live) IP.
    pub(super) workload: Option<Arc<Seed>>,
}

/// What a running pod's workload is, but for the ports its EndpointSlices add.
pub(super) struct Seed {
    pub(super) ip: IpAddr,
    /// Empty when the pod runs without a sidecar.
    identity: String,
    /// Its containers' TCP ports.
    pub(super) ports: BTreeSet<u16>,
    /// How its sidecar takes mTLS (PeerAuthentication), to tell callers which ports take none.
    peer_authentication: proto::PeerAuthentication,
    /// `namespace/name`, as endpoints refer to its record.
    name: String,
    pub(super) record: Arc<WorkloadRecord>,
}

/// A pod's workload in one translation.
pub(super) struct Workload<'a> {
    pub(super) pod: &'a Key,
    pub(super) seed: Arc<Seed>,
    /// Its containers' ports and those its EndpointSlices list.
    pub(super) ports: BTreeSet<u16>,
}

impl Workload<'_> {
    pub(super) fn has_identity(&self) -> bool {
        !self.seed.identity.is_empty()
    }

    /// The identity callers of `port` must verify; empty (send in the clear) without a
    /// sidecar, or when its PeerAuthentication is DISABLE on that port.
    fn identity_on(&self, port: u16) -> String {
        let seed = &self.seed;
        if seed.identity.is_empty() || !security::takes_mtls(&seed.peer_authentication, port) {
            String::new()
        } else {
            seed.identity.clone()
        }
    }

    /// Its endpoint on `port`.
    pub(super) fn endpoint(&self, port: u16) -> proto::Endpoint {
        proto::Endpoint {
            address: SocketAddr::new(self.seed.ip, port).to_string(),
            identity: self.identity_on(port),
            workload: self.seed.name.clone(),
        }
    }
}

/// Each pod's last translation, and the context it was made in.
#[derive(Default)]
pub(crate) struct Memo {
    context: [u8; 32],
    pods: HashMap<Key, (Arc<Pod>, Translated)>,
}

impl Memo {
    /// The translations made in `context` (none if the last translation's differs), handed
    /// over for this translation, which keeps those it uses or makes again.
    pub(super) fn begin(&mut self, context: [u8; 32]) -> HashMap<Key, (Arc<Pod>, Translated)> {
        if self.context != context {
            self.context = context;
            self.pods.clear();
        }
        std::mem::take(&mut self.pods)
    }

    pub(super) fn keep(&mut self, key: &Key, pod: &Arc<Pod>, translated: Translated) {
        self.pods.insert(key.clone(), (pod.clone(), translated));
    }
}

/// What every pod's translation depends on besides the pod: the mesh config and the security
/// policies, hashed with SHA-256.
pub(super) fn context(objects: &Objects, mesh: &MeshConfig) -> [u8; 32] {
    let policies: Vec<&SecurityPolicy> = objects.security.values().map(|p| &p.object).collect();
    let text = format!("{mesh:?}{policies:?}");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut context = [0; 32];
    context.copy_from_slice(digest.as_ref());
    context
}

/// The security policies in the catalog's order, by the namespace they are in: those that may
/// apply to a pod are its own namespace's and the root namespace's, so each pod looks at only
/// these rather than at every policy in the mesh.
pub(super) struct PoliciesByNamespace<'a> {
    all: Vec<&'a SecurityPolicy>,
    /// Positions in `all`, ascending.
    by_namespace: HashMap<&'a str, Vec<usize>>,
}

impl<'a> PoliciesByNamespace<'a> {
    pub(super) fn new(objects: &'a Objects) -> Self {
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        let all = objects
            .security
            .iter()
            .enumerate()
            .map(|(position, ((_, (namespace, _)), policy))| {
                by_namespace.entry(namespace).or_default().push(position);
                &policy.object
            })
            .collect();
        Self { all, by_namespace }
    }

    /// The policies of `namespace` and `root`, in the catalog's order.
    fn of(&self, namespace: &str, root: &str) -> Vec<&'a SecurityPolicy> {
        let positions = |ns: &str| self.by_namespace.get(ns).map_or(&[][..], Vec::as_slice);
        let mut merged: Vec<usize> = positions(namespace).to_vec();
        if namespace != root {
            merged.extend_from_slice(positions(root));
            merged.sort_unstable();
        }
        merged
            .into_iter()
            .map(|position| self.all[position])
            .collect()
    }
}

/// Checks one pod against the mesh: its overrides and its identity; what it is, for a running
/// pod its workload.
pub(super) fn translate_pod(
    key: &Key,
    pod: &Labelled<Arc<Pod>>,
    mesh: &MeshConfig,
    policies: &PoliciesByNamespace,
) -> Translated {
    let mut rejections = Vec::new();
    let mut reject = |reason: String| rejections.push(pod.rejection("Pod", key, reason));
    let annotations = pod.object.metadata.annotations.as_ref();
    // A bad override is reported but does not stop the pod: it runs with the mesh defaults.
    let proxy_config = ProxyConfig::of_pod(annotations)
        .map_err(|e| reject(e.to_string()))
        .ok()
        .flatten();
    let spec = pod.object.spec.as_ref();
    let service_account = spec
        .map_or(DEFAULT_SERVICE_ACCOUNT, service_account_of)
        .to_owned();
    let sidecar = annotations.is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION));
    let identity = if sidecar {
        match SpiffeId::new(mesh.trust_domain(), &key.0, &service_account) {
            Ok(id) => id.to_string(),
            Err(e) => {
                reject(format!("no valid SPIFFE identity: {e}"));
                return Translated {
                    rejections,
                    kept: None,
                };
            }
        }
    } else {
        String::new()
    };
    let labels = pod.object.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let security = security::select(
        policies.of(&key.0, mesh.root_namespace()).into_iter(),
        &key.0,
        labels,
        mesh.root_namespace(),
    );
    let status = pod.object.status.as_ref();
    // A finished pod keeps its `podIP` after the address went to another pod.
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| matches!(phase, "Succeeded" | "Failed"));
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(|_| !finished && !host_network);
    let workload = ip.map(|ip| {
        let ports = spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| is_tcp(p.protocol.as_deref()))
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        let owner = metadata::Workload::of_pod(&pod.object, &key.0).name;
        let record = proto::Workload {
            namespace: key.0.clone(),
            name: key.1.clone(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            identity: identity.clone(),
            addresses: vec![ip.to_string()],
            canonical_service: metadata::canonical_service(labels, &owner),
            canonical_revision: metadata::canonical_revision(labels),
            app: labels.get("app").cloned().unwrap_or_default(),
            version: labels.get("version").cloned().unwrap_or_default(),
            workload_name: owner,
        };
        Arc::new(Seed {
            ip,
            identity,
            ports,
            peer_authentication: security.peer_authentication.clone().unwrap_or_default(),
            name: format!("{}/{}", key.0, key.1),
            record: Arc::new(WorkloadRecord::new(record)),
        })
    });
    let facts = PodFacts {
        service_account,
        labels: labels.clone(),
        proxy_config,
        security,
    };
    Translated {
        rejections,
        kept: Some(Kept {
            facts: Arc::new(facts),
            workload,
        }),
    }
}
