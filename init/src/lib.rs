//! `remora-init` is the init container of the Remora mesh: before the application
//! and the sidecar start, it installs the iptables `nat` rules that send a pod's
//! TCP traffic through the sidecar proxy, then exits.
//!
//! It exists as its own crate so that the rule set can be checked against
//! Istio's `istio-iptables` independently of the proxy: pods redirected by
//! `remora-init` must behave exactly like pods redirected by Istio.
//!
//! The crate is split so that everything but the final step is pure:
//! - [`flags`] turns command-line arguments into a validated [`Invocation`]
//!   (a [`Config`] or [`CleanupConfig`], and whether to program IPv6 too),
//!   reporting every bad flag at once, before anything touches the kernel;
//! - [`rules`] computes the ordered rule [`Plan`] for one IP [`Family`];
//! - [`state`] reads `iptables-save` output and computes the
//!   `iptables-restore --noflush` inputs that install or remove the plan
//!   idempotently;
//! - [`apply`] is the thin layer that runs `iptables-save` / `iptables-restore`
//!   (and their `ip6tables` twins), one atomic restore per family.
//!
//! IPv4 is always programmed. Istio's `--dual-stack` flag (or its
//! `ISTIO_DUAL_STACK` environment variable) adds IPv6: the same rules with
//! `::1/128` and `::6/128`, and only the IPv6 CIDRs of `-i`/`-x`, applied with
//! `ip6tables-restore --noflush` after the IPv4 ones.

pub mod apply;
pub mod flags;
pub mod rules;
pub mod state;

pub use flags::{Action, CleanupConfig, Cli, Command, Config, ConfigError, Invocation};
pub use rules::{plan, Chain, Family, Plan, Rule};
pub use state::NatState;
