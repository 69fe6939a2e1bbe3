//! Network namespaces and the processes run inside them, each removed when dropped.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run_checked(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Self {
            name: name.to_owned(),
        };
        netns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `argv` run inside this namespace (as root).
    pub fn command(&self, argv: &[&str]) -> Command {
        exec_in(&self.name, argv)
    }

    /// Runs `argv` inside this namespace and fails unless it succeeds.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<Output> {
        run_checked(&mut self.command(argv))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip netns exec NS argv...`
pub(crate) fn exec_in(netns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).args(argv);
    cmd
}

/// Runs `cmd` to completion; an error carries its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// A background process in its own process group, stopped (group and all) on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
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

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pgid = i32::try_from(self.pid()).context("pid out of range")?;
        killpg(Pid::from_raw(pgid), signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, a grace period, then SIGKILL for the whole group.
    pub fn stop(&mut self) {
        if self.exited().is_none() {
            let _ = self.signal(Signal::SIGTERM);
            if self.wait_timeout(Duration::from_secs(3)).is_none() {
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
