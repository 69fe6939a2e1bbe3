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
//! - [`address`] has the `ip` command lines for the IPv6 inbound-passthrough
//!   address `::6/128` on `lo`, and reads their output;
//! - [`apply`] is the thin layer that runs `iptables-save` / `iptables-restore`
//!   (and their `ip6tables` twins), one atomic restore per family, and `ip`.
//!
//! IPv4 is always programmed. Istio's `--dual-stack` flag (or its
//! `ISTIO_DUAL_STACK` environment variable) adds IPv6: the same rules with
//! `::1/128` and `::6/128`, and only the IPv6 CIDRs of `-i`/`-x`, applied with
//! `ip6tables-restore --noflush` after the IPv4 ones; and, like Istio, the
//! address `::6/128` on `lo`, which the sidecar binds as the source of the
//! inbound connections it hands to the application (IPv4's `127.0.0.6` needs
//! no such step: all of `127.0.0.0/8` is loopback). The address is added
//! before any table is changed, so that a failure to add it changes nothing,
//! and removed on cleanup after the tables; this needs iproute2's `ip` in
//! the image.

pub mod address;
pub mod apply;
pub mod family;
pub mod flags;
pub mod rules;
pub mod state;

pub use flags::{Action, CleanupConfig, Cli, Command, Config, ConfigError, Invocation};
pub use rules::{plan, Chain, Family, Plan, Rule};
pub use state::NatState;
