//! End-to-end harness on one Linux machine: "pods" are network namespaces on a private bridge,
//! each with `remora-init`'s iptables rules and a `remora-proxy` sidecar running as uid 1337,
//! next to real app processes. The plumbing is the local cluster launcher's
//! ([`remora_local`]); on top of it, [`example_cluster`] runs `examples/` with the
//! control plane (as the README demo does), and [`Mesh`] wires pods by hand with static
//! bootstrap files, for what a control plane would never produce.
//!
//! Everything created (namespaces, processes, files) is removed when its owner is dropped,
//! including when a test panics. It needs root: the sidecar must run as uid 1337 inside each
//! namespace, which user namespaces cannot provide.

pub mod apiserver;
mod bins;
mod capture;
pub mod example_cluster;
mod mesh;
pub mod two_pods;

pub use bins::Binaries;
pub use capture::{Capture, Pcap};
pub use mesh::{counter, CertOrigin, Mesh, Pod, SidecarOptions, TRUST_DOMAIN};
pub use remora_local::{Netns, Process};

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
