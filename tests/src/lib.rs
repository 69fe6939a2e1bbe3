//! A local mesh on one Linux machine: "pods" are network namespaces on a private bridge, each
//! with `remora-init`'s iptables rules and a `remora-proxy` sidecar running as uid 1337, next to
//! real app processes. End-to-end tests, the README demo and (later) the benchmarks build on it.
//!
//! Everything it creates (namespaces, processes, files) is removed when the [`Mesh`] is dropped,
//! including when a test panics. It needs root: the sidecar must run as uid 1337 inside each
//! namespace, which user namespaces cannot provide.

mod bins;
mod capture;
mod mesh;
mod netns;
pub mod two_pods;

pub use bins::Binaries;
pub use capture::{Capture, Pcap};
pub use mesh::{counter, CertOrigin, Mesh, Pod, SidecarOptions, TRUST_DOMAIN};
pub use netns::{Netns, Process};

/// Fails with a clear message unless running as root.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "the Remora local mesh needs root (network namespaces, iptables, running the sidecar \
             as uid 1337); run as root, e.g. `sudo -E env \"PATH=$PATH\" ./scripts/test.sh`"
        )
    }
}
