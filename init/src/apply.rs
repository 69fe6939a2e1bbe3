//! The only part of `remora-init` that touches the kernel: it runs
//! `iptables-save -t nat` to learn the current state and applies a computed
//! input with a single `iptables-restore --noflush` call, so each install or
//! cleanup is one atomic transaction. Deciding *what* to apply is left to
//! [`crate::state`], which is pure.

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};
use std::string::FromUtf8Error;

use crate::flags::Interface;
use crate::rules::{Family, Plan, TABLE};
use crate::state::{cleanup_input, install_input, NatState, StateError};

/// A failure to read or change the nat table.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("failed to run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to pass the rules to {command}")]
    Stdin {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{command} printed output that is not utf-8")]
    NotUtf8 {
        command: String,
        #[source]
        source: FromUtf8Error,
    },
    #[error("could not understand the output of {command}")]
    State {
        command: String,
        #[source]
        source: StateError,
    },
}

/// Reads the current nat table of `family` with `iptables-save -t nat`.
pub fn read_state(family: Family) -> Result<NatState, ApplyError> {
    let program = family.save_command();
    let args = ["-t", TABLE];
    let command = describe(program, &args);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    let command = succeeded(command, &output)?;
    let text = String::from_utf8(output.stdout).map_err(|source| ApplyError::NotUtf8 {
        command: command.clone(),
        source,
    })?;
    NatState::parse(&text).map_err(|source| ApplyError::State { command, source })
}

/// Hands `command` back if it exited successfully, or reports its status and stderr.
fn succeeded(command: String, output: &std::process::Output) -> Result<String, ApplyError> {
    if output.status.success() {
        Ok(command)
    } else {
        Err(ApplyError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Applies `input` with one `iptables-restore --noflush` call.
pub fn restore(family: Family, input: &str) -> Result<(), ApplyError> {
    let program = family.restore_command();
    let args = ["--noflush"];
    let command = describe(program, &args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(input.as_bytes()),
        None => Err(std::io::Error::other("stdin was not captured")),
    };
    // Always reap the child, even if writing failed.
    let output = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    let command = succeeded(command, &output)?;
    written.map_err(|source| ApplyError::Stdin { command, source })
}

/// Installs `plan` so that exactly one copy of it is in the table; returns
/// the restore input that was applied.
pub fn install(plan: &Plan) -> Result<String, ApplyError> {
    let state = read_state(plan.family())?;
    let input = install_input(plan, &state);
    restore(plan.family(), &input)?;
    Ok(input)
}

/// Removes everything `install` added (and the `-c` RETURNs for
/// `exclude_interfaces`); returns the applied input, or `None` if there was
/// nothing to remove and iptables-restore was not run.
pub fn cleanup(
    family: Family,
    exclude_interfaces: &[Interface],
) -> Result<Option<String>, ApplyError> {
    let state = read_state(family)?;
    let Some(input) = cleanup_input(&state, exclude_interfaces) else {
        return Ok(None);
    };
    restore(family, &input)?;
    Ok(Some(input))
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
