//! Durations as Istio's CRDs take them: a protobuf `Duration` written in Go's
//! `time.ParseDuration` syntax, and the whole-millisecond rule Istio's `ValidateDuration` adds.
//! Timeouts, retries, faults and outlier detection are all written in them.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use super::checks::Problems;

/// A protobuf duration as Istio's CRDs take it: Go's `time.ParseDuration` syntax (`5s`, `0.5s`,
/// `1m30s`, `250ms`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "{text:?} is not a duration such as \"5s\" or \"250ms\": {e}"
            ))
        })
    }
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty".to_owned());
    }
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(digits);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err("expected a number".to_owned());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("a unit (ns, us, ms, s, m, h) is required".to_owned()),
            other => return Err(format!("unknown unit {other:?}")),
        };
        let too_long = || "too long".to_owned();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(too_long)?;
        if !fraction.is_empty() {
            let digits = fraction.get(..18).unwrap_or(fraction);
            let value: u128 = digits.parse().map_err(|_| too_long())?;
            let exponent = u32::try_from(digits.len()).map_err(|_| too_long())?;
            part += value * scale / 10u128.pow(exponent);
        }
        nanos = nanos.checked_add(part).ok_or_else(too_long)?;
        rest = after;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| "too long".to_owned())?;
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| "too long".to_owned())?;
    Ok(Duration::new(secs, subsec))
}

/// Istio's `ValidateDuration`: at least 1 ms, whole milliseconds; the milliseconds.
pub(super) fn millis(duration: Dur, path: &str, p: &mut Problems) -> u64 {
    let duration = duration.0;
    if duration < Duration::from_millis(1) {
        p.add(path, "must be at least 1ms");
        0
    } else if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        p.add(path, "only whole milliseconds are supported");
        0
    } else {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }
}
