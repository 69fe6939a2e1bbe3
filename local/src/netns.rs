//! Network namespaces (`ip netns`) and commands run inside them.
//!
//! Everything goes through `ip netns exec`, which also gives each command a private mount
//! namespace with `/etc/netns/<name>/*` bound over `/etc/*`: that is how a local pod gets its
//! own `/etc/hosts`, and why a sidecar's bind-mounted secrets never reach the host.

use std::{
    ffi::OsStr,
    io,
    process::{Command, ExitStatus, Output, Stdio},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// A command that could not run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn create(name: &str) -> Result<Self, CommandError> {
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
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        exec_in(&self.name, argv)
    }

    /// Runs `argv` inside this namespace and fails unless it succeeds.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output, CommandError> {
        run_checked(&mut self.command(argv))
    }
}

impl Drop for Netns {
    /// Kills whatever still runs inside first: `ip netns del` only unmounts the name, and a
    /// process left behind (one that escaped its owner's process group, say) would keep the
    /// namespace, its interfaces and its routes alive with nobody left to remove them.
    fn drop(&mut self) {
        // A few rounds: a process may fork between one listing and its kill.
        for _ in 0..5 {
            let pids: Vec<i32> = Command::new("ip")
                .args(["netns", "pids", &self.name])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|pid| pid.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip netns exec NETNS argv...`
pub fn exec_in<S: AsRef<OsStr>>(netns: &str, argv: &[S]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).args(argv);
    cmd
}

/// Runs `cmd` to completion with no input; an error carries its stderr.
pub fn run_checked(cmd: &mut Command) -> Result<Output, CommandError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
    if !output.status.success() {
        return Err(CommandError::Failed {
            command: format!("{cmd:?}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}
