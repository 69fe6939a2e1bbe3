//! The objects a config source admitted, read-only: what an API server would list after
//! admission, with the cluster IPs it allocated and the mesh config in force.
//!
//! The discovery server never needs these (it serves the translated snapshot), but whoever
//! stands in for the rest of a cluster does: the local launcher runs the accepted Deployments,
//! in the accepted Namespaces, sends them through the accepted webhook configuration, and
//! records EndpointSlices for the accepted Services. Reading them here, from the very catalog the
//! control plane serves, means the two can never disagree about what was admitted.

use std::{borrow::Borrow, collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};

use crate::inject::Injector;

use super::{
    mesh::MeshConfig,
    objects::{Key, Labelled, Objects},
};

/// The accepted objects of one read of a source ([`Catalog::accepted`]).
///
/// [`Catalog::accepted`]: super::Catalog::accepted
#[derive(Debug)]
pub struct Accepted {
    pub(super) objects: Objects,
    pub(super) mesh: MeshConfig,
    pub(super) cluster_ips: BTreeMap<Key, IpAddr>,
    /// Injection as the injection values and mesh config in force say.
    pub(super) injector: Injector,
}

impl Accepted {
    /// Sidecar injection with the values and mesh config of this read.
    pub fn injector(&self) -> &Injector {
        &self.injector
    }

    /// The Namespace `name`.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        // Namespaces are cluster-scoped: their key's namespace part is empty.
        self.objects
            .namespaces
            .get(&(String::new(), name.to_owned()))
            .map(|namespace| &*namespace.object)
    }

    /// The Deployments, by namespace and name.
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        objects_of(&self.objects.deployments)
    }

    /// The Deployment `namespace/name`.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<&Deployment> {
        self.objects
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|deployment| &deployment.object)
    }

    /// The file Deployment `namespace/name` was read from.
    pub fn deployment_origin(&self, namespace: &str, name: &str) -> Option<&str> {
        self.objects
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|deployment| deployment.origin.as_str())
    }

    /// The Services, by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        objects_of(&self.objects.services)
    }

    /// The cluster IP of Service `namespace/name`; `None` for a headless or ExternalName
    /// Service, or one that was not accepted.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        self.cluster_ips
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// The MutatingWebhookConfigurations, by name: which pods the API server sends to which
    /// webhook.
    pub fn webhook_configurations(&self) -> impl Iterator<Item = &MutatingWebhookConfiguration> {
        objects_of(&self.objects.webhook_configurations)
    }
}

fn objects_of<'a, T: 'a, O: Borrow<T>>(
    kept: &'a BTreeMap<Key, Labelled<O>>,
) -> impl Iterator<Item = &'a T> {
    kept.values().map(|labelled| labelled.object.borrow())
}
