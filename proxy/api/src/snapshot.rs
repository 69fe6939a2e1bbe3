//! The run-time config a sidecar receives: which mesh endpoints it may call and who they are.

use std::{collections::HashMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::spiffe::SpiffeId;

/// A versioned view of the mesh, as one sidecar needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// Opaque version, echoed back when the sidecar acknowledges the snapshot.
    pub version: String,
    /// Mesh endpoints: traffic to these addresses is wrapped in mTLS. Destinations not listed
    /// (another pod's health port, anything outside the mesh) are passed through untouched.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One `IP:port` served by a sidecar of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The identity the sidecar in front of this endpoint must present.
    pub identity: SpiffeId,
}

/// Endpoints indexed by address, for lookups on every new connection.
#[derive(Clone, Debug, Default)]
pub struct EndpointTable {
    by_address: HashMap<SocketAddr, SpiffeId>,
}

impl Snapshot {
    /// Problems with this snapshot, each prefixed by the path of its field.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut seen = HashMap::new();
        let mut problems = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if let Some(first) = seen.insert(endpoint.address, i) {
                problems.push(format!(
                    "endpoints[{i}].address: {} is listed twice (first at endpoints[{first}])",
                    endpoint.address
                ));
            }
        }
        problems
    }

    /// Indexes the endpoints by address.
    pub fn table(&self) -> EndpointTable {
        EndpointTable {
            by_address: self
                .endpoints
                .iter()
                .map(|e| (e.address, e.identity.clone()))
                .collect(),
        }
    }
}

impl EndpointTable {
    /// The identity expected at `address`, or `None` when it is not a mesh endpoint.
    pub fn identity(&self, address: SocketAddr) -> Option<&SpiffeId> {
        self.by_address.get(&address)
    }
}
