//! Remora's control plane (the role istiod plays in Istio) and the pieces `remoractl` shares
//! with it.

pub mod ca;
pub mod config;
pub mod local;
pub mod server;
pub mod token;
