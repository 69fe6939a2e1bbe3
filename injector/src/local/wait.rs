//! Bounded waits for a started process to become useful (a sidecar ready, an app listening,
//! the control plane serving), failing early when it exits and always with its output, so a
//! broken pod explains itself instead of timing out silently.

use std::{
    process::ExitStatus,
    thread,
    time::{Duration, Instant},
};

use super::process::Process;

/// How many trailing log lines an error shows.
const TAIL_LINES: usize = 40;
const POLL: Duration = Duration::from_millis(100);

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

/// Polls `check` until it holds, for at most `timeout`. `what` says what was awaited.
pub fn until(
    what: &str,
    process: &mut Process,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            return Err(WaitError::Exited {
                what: what.to_owned(),
                name: process.name().to_owned(),
                status,
                log: process.log_path().display().to_string(),
                tail: tail(&process.log()),
            });
        }
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut {
                what: what.to_owned(),
                name: process.name().to_owned(),
                waited: timeout,
                log: process.log_path().display().to_string(),
                tail: tail(&process.log()),
            });
        }
        thread::sleep(POLL);
    }
}

/// The last lines of `log`.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}
