//! AuthorizationPolicy: compiled per snapshot ([`Policy::compile`]) and decided per connection
//! or request ([`Authorization::decide`]) by a pure function the sidecar and `remoractl authz
//! check` share, so what the command explains is what the sidecar does.

mod decide;
mod pattern;
mod policy;

pub use decide::{
    remote_ip, Authorization, ConnectionFacts, DecidedBy, Decision, Matched, RequestFacts, Verdict,
};
pub use policy::{Action, Policy};

#[cfg(test)]
mod tests;
