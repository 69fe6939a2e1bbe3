//! The local cluster launcher: a directory of ordinary Kubernetes and Istio manifests becomes a
//! running mesh on one Linux machine, with no cluster.
//!
//! Each Deployment replica is a network namespace on a private bridge (pod IPs in
//! 198.18.0.0/16, Service cluster IPs in 198.19.0.0/16, one route for 198.18.0.0/15 and no
//! other), named through its own `/etc/hosts`, sent through admission to the control plane's
//! injection webhook as an API server would send it, and run as a kubelet runs the pod spec
//! that comes back: init containers (`remora-init`), then every container's `command`/`args`
//! (images are ignored; `remora-proxy` as uid 1337) with its environment and volumes. The
//! control plane (`remora-injector serve`) runs in a pod of its own and reads the manifests plus
//! the Pods and EndpointSlices the launcher records for it. `remoractl local up`, the README
//! demo, the end-to-end tests and the benchmarks all build on this; the plumbing modules
//! ([`Network`], [`Netns`], [`Process`]) also serve harnesses that wire pods by hand.
//!
//! It is a crate of its own, apart from the control plane (`remora-injector`), because it
//! plays the rest of a cluster (API server, kubelet, Deployment controller, kube-proxy) and is
//! needed only where there is no cluster: the control plane never imports it, and its image
//! ships without it. It reads the manifests with the control plane's own directory reader and
//! runs what the control plane accepted ([`Catalog::accepted`]), so the two agree by
//! construction.
//!
//! Everything needs root (namespaces, iptables, switching to uid 1337), and everything created
//! is removed when its owner is dropped.
//!
//! [`Catalog::accepted`]: remora_injector::config::Catalog::accepted

mod admission;
mod bins;
mod cluster;
mod containers;
mod control_plane;
mod desired;
mod error;
mod expand;
mod files;
mod hosts;
mod kube_proxy;
mod manifests;
mod netns;
mod network;
mod options;
mod plan;
mod pod;
pub mod probe;
mod process;
mod record_dir;
mod records;
mod rollout;
mod shutdown;
mod state;
mod volumes;
pub mod wait;

pub use admission::AdmissionError;
pub use bins::{Binaries, BinariesError, BIN_DIR_ENV};
pub use cluster::{Cluster, Rollout};
pub use control_plane::{kubeconfig_for, ControlPlaneError};
pub use error::LocalError;
pub use files::write_atomic;
pub use manifests::LocalService;
pub use netns::{exec_in, run_checked, CommandError, Netns};
pub use network::{Network, NetworkError, PodNetwork};
pub use options::Options;
pub use plan::PlanError;
pub use pod::{LocalPod, PodError, SIDECAR};
pub use process::{as_proxy_user, Process, ProcessError, PROXY_UID};
pub use record_dir::RecordError;
pub use shutdown::Shutdown;
pub use state::StateError;
