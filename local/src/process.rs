//! Background processes of a local pod (sidecars, apps, the control plane), each in its own
//! process group so that stopping one also stops what it forked (gunicorn's workers, say), and
//! each killed when dropped so a failed test or an interrupted launcher leaves nothing behind.

use std::{
    ffi::{OsStr, OsString},
    fs::OpenOptions,
    io,
    ops::ControlFlow,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

use super::wait::{self, WaitError};

/// The sidecar's uid and gid, Istio's, which `remora-init`'s rules exempt from capture.
pub const PROXY_UID: u32 = 1337;

/// How long [`Process::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("creating log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting {name} ({command}): {source}")]
    Spawn {
        name: String,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("signalling {name}: {source}")]
    Signal {
        name: String,
        #[source]
        source: Errno,
    },
}

/// A process in its own process group with its output in a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log` (so a restarted process adds to
    /// the story rather than erasing it).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, ProcessError> {
        let log_error = |source| ProcessError::Log {
            path: log.to_owned(),
            source,
        };
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                name: name.to_owned(),
                command: format!("{cmd:?}"),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        // The group id is the leader's pid, which the kernel keeps below 2^22.
        let pgid = i32::try_from(self.pid()).unwrap_or(i32::MAX);
        killpg(Pid::from_raw(pgid), signal).map_err(|source| ProcessError::Signal {
            name: self.name.clone(),
            source,
        })
    }

    /// Polls `check` until it holds, for at most `timeout`, failing early if the process
    /// exits. `what` says what was awaited.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Result<(), WaitError> {
        let outcome = wait::poll(timeout, || {
            if check() {
                ControlFlow::Break(None)
            } else {
                self.exited().map_or(ControlFlow::Continue(()), |status| {
                    ControlFlow::Break(Some(status))
                })
            }
        });
        match outcome {
            Some(None) => Ok(()),
            Some(Some(status)) => Err(WaitError::Exited {
                what: what.to_owned(),
                name: self.name().to_owned(),
                status,
                log: self.log_path().display().to_string(),
                tail: wait::tail(&self.log()),
            }),
            None => Err(WaitError::TimedOut {
                what: what.to_owned(),
                name: self.name().to_owned(),
                waited: timeout,
                log: self.log_path().display().to_string(),
                tail: wait::tail(&self.log()),
            }),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait::poll(timeout, || {
            self.exited()
                .map_or(ControlFlow::Continue(()), ControlFlow::Break)
        })
    }

    /// SIGTERM, a grace period, then SIGKILL for the whole group.
    pub fn stop(&mut self) {
        if self.exited().is_none() {
            let _ = self.signal(Signal::SIGTERM);
            if self.wait_timeout(STOP_GRACE).is_none() {
                let _ = self.signal(Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        // Children left behind in the group (e.g. gunicorn workers).
        let _ = self.signal(Signal::SIGKILL);
    }
}

impl Drop for Process {
    /// Teardown does not wait for graceful exits: SIGKILL the whole group.
    fn drop(&mut self) {
        let _ = self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `argv` prefixed so that it runs as the proxy's uid/gid with no supplementary groups, as the
/// `istio-proxy` container's `runAsUser`/`runAsGroup` make it run in a pod.
pub fn as_proxy_user<S: AsRef<OsStr>>(argv: &[S]) -> Vec<OsString> {
    as_user(PROXY_UID, PROXY_UID, argv)
}

/// `argv` prefixed so that it runs as `uid`/`gid` with no supplementary groups, as a
/// container's `runAsUser`/`runAsGroup` make it run.
pub fn as_user<S: AsRef<OsStr>>(uid: u32, gid: u32, argv: &[S]) -> Vec<OsString> {
    let (uid, gid) = (uid.to_string(), gid.to_string());
    [
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
        "--",
    ]
    .iter()
    .map(OsString::from)
    .chain(argv.iter().map(|a| a.as_ref().to_owned()))
    .collect()
}
