//! Bounded waits. [`poll`] is the one polling loop of the launcher and its tests;
//! `Process::wait_until` waits on it for a started process to become useful (a sidecar ready,
//! an app listening, the control plane serving), failing early when the process exits and
//! always with its output ([`WaitError`]), so a broken pod explains itself instead of timing
//! out silently.

use std::{
    ops::ControlFlow,
    process::ExitStatus,
    thread,
    time::{Duration, Instant},
};

/// How many trailing log lines an error shows.
const TAIL_LINES: usize = 40;
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{what}: {name} exited ({status}); the end of its log ({log}):\n{tail}")]
    Exited {
        what: String,
        name: String,
        status: ExitStatus,
        log: String,
        tail: String,
    },
    #[error("{what}: not after {waited:?}; the end of {name}'s log ({log}):\n{tail}")]
    TimedOut {
        what: String,
        name: String,
        waited: Duration,
        log: String,
        tail: String,
    },
}

/// Calls `step` every [`POLL`] until it breaks, for at most `timeout` (it is always called at
/// least once, and once more at the deadline): what it broke with, or `None` when time ran out.
pub fn poll<T>(timeout: Duration, mut step: impl FnMut() -> ControlFlow<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let ControlFlow::Break(value) = step() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

/// The last lines of `log`.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_a_step_breaks_or_time_runs_out() {
        let mut calls = 0;
        let found = poll(Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                ControlFlow::Break(calls)
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(found, Some(3));

        let mut calls = 0;
        let none: Option<()> = poll(Duration::ZERO, || {
            calls += 1;
            ControlFlow::Continue(())
        });
        assert_eq!((none, calls), (None, 1), "called once even with no time");
    }
}
