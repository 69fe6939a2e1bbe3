//! The wire types, generated from `proto/`: the CA service (Istio's), the config discovery
//! service and the [`Snapshot`](config::Snapshot) message that both the stream and a bootstrap's
//! `staticSnapshot` carry, and gRPC's health service (the app's gRPC probes).

#![allow(clippy::all, missing_docs)]

/// Istio's certificate service.
pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

/// The snapshot and the discovery service.
pub mod config {
    tonic::include_proto!("remora.config.v1");
}

/// gRPC's health checking protocol.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
