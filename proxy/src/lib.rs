//! `remora-proxy`: the Remora sidecar, as a library so in-process tests and benchmarks run the
//! same request path the binary does.
//!
//! It intercepts the pod's traffic (redirected by `remora-init`'s iptables rules), wraps mesh
//! traffic in mTLS with SPIFFE identities and reports Istio-standard metrics. The map of the
//! request path is the project's `ARCHITECTURE.md`: [`listen`] accepts, [`inbound`] is the only
//! way to the app, [`outbound`] the only way out to the mesh, [`tunnel`] the sidecar-to-sidecar
//! protocol, [`respond`] the one place a failure becomes a response, and [`app`] wires them.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
mod backoff;
pub mod body;
mod config;
mod control_plane;
pub mod detect;
mod discovery;
pub mod drain;
mod headers;
pub mod http_client;
pub mod identity;
pub mod inbound;
pub mod listen;
mod memory;
pub mod metrics;
pub mod outbound;
pub mod overload;
mod pool;
pub mod ports;
pub mod prefixed;
pub mod respond;
pub mod serve;
mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod tunnel;
mod upgrade;

pub use config::Config;
