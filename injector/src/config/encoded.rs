//! Discovery resources encoded once, where they are made, and sent as those bytes to every
//! sidecar that holds them: the catalog hands out workload records encoded when their pod was
//! translated, and the discovery server keeps every other resource's bytes per catalog.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use remora_api::{
    proto::config::{self as proto, resource::Body},
    resources::fnv1a64,
};

/// A resource's bytes on the wire, and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub bytes: Bytes,
    /// [`fnv1a64`] of `bytes`: what a state's version sums.
    pub digest: u64,
}

impl Encoded {
    pub fn of(resource: &proto::Resource) -> Self {
        let bytes = Bytes::from(resource.encode_to_vec());
        Self {
            digest: fnv1a64(&bytes),
            bytes,
        }
    }
}

/// A running pod's workload record (`workload/NS/NAME`), encoded when the pod is translated.
#[derive(Debug)]
pub(crate) struct WorkloadRecord {
    pub(crate) record: proto::Workload,
    pub(crate) name: Arc<str>,
    pub(crate) encoded: Encoded,
}

impl WorkloadRecord {
    pub(crate) fn new(record: proto::Workload) -> Self {
        let name = format!("workload/{}/{}", record.namespace, record.name);
        let resource = proto::Resource {
            name,
            body: Some(Body::Workload(record)),
        };
        let encoded = Encoded::of(&resource);
        let Some(Body::Workload(record)) = resource.body else {
            unreachable!("made with a workload body just above")
        };
        Self {
            record,
            name: Arc::from(resource.name),
            encoded,
        }
    }

    /// The record as a resource, decoded.
    pub(crate) fn resource(&self) -> proto::Resource {
        proto::Resource {
            name: self.name.to_string(),
            body: Some(Body::Workload(self.record.clone())),
        }
    }
}
