//! Envoy's response flags (`%RESPONSE_FLAGS%`, the `response_flags` label): what went wrong
//! with a request or connection besides its status, as short codes joined by `,` in Envoy's
//! order, `-` when nothing did.

use std::fmt;

/// One of Envoy's response flags that Remora can raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Flag {
    /// No healthy upstream.
    NoHealthyUpstream = 1 << 0,
    /// The upstream did not answer in time.
    UpstreamTimeout = 1 << 1,
    /// The upstream could not be connected to.
    UpstreamConnectFailure = 1 << 2,
    /// The upstream went away mid-response.
    UpstreamTerminated = 1 << 3,
    /// The upstream's connection pool (and its queue) was full.
    UpstreamOverflow = 1 << 4,
    /// No route matched (or the destination is outside the registry under `REGISTRY_ONLY`).
    NoRoute = 1 << 5,
    /// Fault injection delayed the request.
    DelayInjected = 1 << 6,
    /// Fault injection aborted the request.
    FaultInjected = 1 << 7,
    /// The caller went away before the response was complete.
    DownstreamTerminated = 1 << 8,
    /// Retries ran out (or the retry budget did) with the last try failing.
    RetryLimitExceeded = 1 << 9,
    /// The route's backend (a Service or subset) does not exist.
    NoCluster = 1 << 10,
    /// The sidecar refused the request, over its load limits.
    OverloadManager = 1 << 11,
}

/// In the order Envoy prints them.
const ORDER: [(Flag, &str); 12] = [
    (Flag::NoHealthyUpstream, "UH"),
    (Flag::UpstreamTimeout, "UT"),
    (Flag::UpstreamConnectFailure, "UF"),
    (Flag::UpstreamTerminated, "UC"),
    (Flag::UpstreamOverflow, "UO"),
    (Flag::NoRoute, "NR"),
    (Flag::DelayInjected, "DI"),
    (Flag::FaultInjected, "FI"),
    (Flag::DownstreamTerminated, "DC"),
    (Flag::RetryLimitExceeded, "URX"),
    (Flag::NoCluster, "NC"),
    (Flag::OverloadManager, "OM"),
];

/// A set of [`Flag`]s.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);

    pub fn with(self, flag: Flag) -> Self {
        Self(self.0 | flag as u16)
    }

    pub fn from_bits(bits: u16) -> Self {
        Self(bits)
    }

    pub fn contains(self, flag: Flag) -> bool {
        self.0 & flag as u16 != 0
    }
}

impl From<Flag> for Flags {
    fn from(flag: Flag) -> Self {
        Flags::NONE.with(flag)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, code) in ORDER {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_as_envoy_prints_them() {
        let cases = [
            (Flags::NONE, "-"),
            (Flag::NoRoute.into(), "NR"),
            (
                Flags::from(Flag::RetryLimitExceeded).with(Flag::UpstreamConnectFailure),
                "UF,URX",
            ),
            (
                Flags::from(Flag::FaultInjected).with(Flag::DelayInjected),
                "DI,FI",
            ),
            (Flag::DownstreamTerminated.into(), "DC"),
        ];
        for (flags, text) in cases {
            assert_eq!(flags.to_string(), text);
        }
    }
}
