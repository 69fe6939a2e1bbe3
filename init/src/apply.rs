//! The only part of `remora-init` that touches the kernel: it runs
//! `iptables-save -t nat` to learn the current state and applies a computed
//! input with a single `iptables-restore --noflush` call, so each install or
//! cleanup is one atomic transaction per IP family (`ip6tables-save` /
//! `ip6tables-restore` for IPv6). Deciding *what* to apply is left to
//! [`crate::state`], which is pure.
//!
//! With `--dual-stack`, [`install_all`] and [`cleanup_all`] handle both
//! families: every table is read before any is changed, then IPv4 is applied,
//! then IPv6. Two tables cannot change in one transaction, so if IPv6 fails
//! after IPv4 was installed, IPv4 is rolled back: if its table had none of our
//! rules before (the usual case for an init container), what the install
//! added is removed again with `iptables-restore --noflush`, touching nothing
//! else; if it held an earlier install, which this one replaced, the nat table
//! is put back exactly as `iptables-save` showed it moments before (a plain
//! `iptables-restore` of that snapshot, which replaces the nat table only).
//! The error says which family failed and whether the rollback worked. A
//! failed cleanup is not rolled back (removing rules is what was asked for,
//! and a second cleanup finishes the job); its error says which families
//! were already cleaned.
//!
//! With `--dual-stack` the binary also puts `::6/128` on `lo` (see
//! [`crate::address`]) with [`add_inbound_address`], before any table is
//! changed, and takes it off again with [`remove_inbound_address`] if the
//! install then fails (only if it added it) and on cleanup, after the
//! tables. These run iproute2's `ip`: `ip -6 addr add|del ::6/128 dev lo`,
//! and `ip -6 addr show dev lo` to tell an address that is already there
//! (fine) or already gone (fine) from a real failure.

use std::error::Error as _;
use std::fmt;
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};
use std::string::FromUtf8Error;

use crate::address::{self, Listed};
use crate::flags::Interface;
use crate::rules::{Family, Plan, TABLE};
use crate::state::{cleanup_input, install_input, uninstall_input, NatState, StateError};

/// The arguments every install or cleanup input is applied with.
pub const RESTORE_ARGS: &[&str] = &["--noflush"];

/// A failure to read or change a nat table or the loopback address: names
/// the command that failed.
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

/// A family's nat table as read before changing it: the raw `iptables-save`
/// text, to roll back to, and what it means.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub family: Family,
    pub text: String,
    pub state: NatState,
}

/// Reads the current nat table of `family` with `iptables-save -t nat`.
pub fn read_state(family: Family) -> Result<NatState, ApplyError> {
    snapshot(family).map(|s| s.state)
}

/// Reads the current nat table of `family`, keeping the raw text too.
pub fn snapshot(family: Family) -> Result<Snapshot, ApplyError> {
    let (command, text) = capture(family.save_command(), &["-t", TABLE])?;
    let state = NatState::parse(&text).map_err(|source| ApplyError::State { command, source })?;
    Ok(Snapshot {
        family,
        text,
        state,
    })
}

/// Runs `program args` and returns its command line and stdout, or reports
/// why it did not succeed.
fn capture(program: &str, args: &[&str]) -> Result<(String, String), ApplyError> {
    let command = describe(program, args);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    let command = succeeded(command, &output)?;
    match String::from_utf8(output.stdout) {
        Ok(text) => Ok((command, text)),
        Err(source) => Err(ApplyError::NotUtf8 { command, source }),
    }
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
    run_restore(family, RESTORE_ARGS, input)
}

/// Undoes the install of `plan` over the table `snapshot` showed.
///
/// A table that had nothing of ours gets exactly that removed again
/// (`--noflush`, nothing else touched). A table that held an earlier install
/// is put back as `snapshot` read it: a plain `iptables-restore`, which
/// replaces the tables present in its input — the nat table only.
fn roll_back(plan: &Plan, snapshot: &Snapshot) -> Result<(), ApplyError> {
    if uninstall_input(plan, &snapshot.state).is_none() {
        match uninstall_input(plan, &read_state(plan.family())?) {
            Some(input) => restore(plan.family(), &input),
            None => Ok(()),
        }
    } else {
        run_restore(snapshot.family, &[], &snapshot.text)
    }
}

/// Pipes `input` into `family`'s restore command run with `args`.
fn run_restore(family: Family, args: &[&str], input: &str) -> Result<(), ApplyError> {
    let program = family.restore_command();
    let command = describe(program, args);
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

/// A multi-family install or cleanup that did not complete. Each variant
/// names the family that failed and says what became of the others.
#[derive(Debug, thiserror::Error)]
pub enum FamiliesError {
    /// A table could not be read; tables are all read first, so none changed.
    #[error("could not read the {family} nat table; no table was changed")]
    Read {
        family: Family,
        #[source]
        source: ApplyError,
    },
    /// Installing `family` failed. Its own restore is atomic, so its table
    /// is unchanged; the `rolled_back` families, installed before it, were
    /// put back as they were.
    #[error("the {family} install failed{}", rolled_back_note(.rolled_back))]
    Install {
        family: Family,
        rolled_back: Vec<Family>,
        #[source]
        source: ApplyError,
    },
    /// Installing `family` failed, and so did rolling back the families
    /// installed before it: those are left with the new rules.
    #[error(
        "the {family} install failed, and rolling back {} failed too ({}): \
         the {} nat table keeps the new rules while the {family} one does not; \
         run `remora-init --dual-stack cleanup` to remove them",
        Families(.installed),
        .rollback_errors.iter().map(|(f, e)| format!("{f}: {}", chain(e))).collect::<Vec<_>>().join("; "),
        Families(.installed)
    )]
    RollbackFailed {
        family: Family,
        /// The families still holding the new rules.
        installed: Vec<Family>,
        rollback_errors: Vec<(Family, ApplyError)>,
        #[source]
        source: ApplyError,
    },
    /// Cleaning up `family` failed (its table is unchanged); the `cleaned`
    /// families had already been cleaned up.
    #[error("the {family} cleanup failed{}", cleaned_note(.cleaned))]
    Cleanup {
        family: Family,
        cleaned: Vec<Family>,
        #[source]
        source: ApplyError,
    },
}

/// Families in prose: `IPv4`, `IPv4 and IPv6`.
struct Families<'a>(&'a [Family]);

impl fmt::Display for Families<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, family) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{family}")?;
        }
        Ok(())
    }
}

fn rolled_back_note(rolled_back: &[Family]) -> String {
    if rolled_back.is_empty() {
        "; no table was changed".to_owned()
    } else {
        format!(
            "; the {} rules installed just before were rolled back, \
             so no table was changed",
            Families(rolled_back)
        )
    }
}

fn cleaned_note(cleaned: &[Family]) -> String {
    if cleaned.is_empty() {
        "; no table was changed".to_owned()
    } else {
        format!(
            "; the {} rules were already removed (run cleanup again to finish)",
            Families(cleaned)
        )
    }
}

/// An error and its sources, `: `-separated.
fn chain(error: &ApplyError) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Installs each plan (one per family, applied in the given order) so that
/// each table holds exactly one copy of its plan; returns the restore inputs
/// that were applied.
///
/// All tables are read before any is changed. If a family fails, the ones
/// installed before it are rolled back to their snapshots, so on error no
/// table is left changed unless [`FamiliesError::RollbackFailed`] says so.
pub fn install_all(plans: &[Plan]) -> Result<Vec<(Family, String)>, FamiliesError> {
    let snapshots = snapshots(plans.iter().map(Plan::family))?;
    let mut applied: Vec<(&Plan, &Snapshot, String)> = Vec::new();
    for (plan, snapshot) in plans.iter().zip(&snapshots) {
        let input = install_input(plan, &snapshot.state);
        if let Err(source) = restore(plan.family(), &input) {
            let done = applied.iter().map(|(p, s, _)| (*p, *s));
            return Err(roll_back_all(plan.family(), done, source));
        }
        applied.push((plan, snapshot, input));
    }
    Ok(applied
        .into_iter()
        .map(|(plan, _, input)| (plan.family(), input))
        .collect())
}

/// Rolls back the `applied` installs, last first, after `family` failed
/// with `source`.
fn roll_back_all<'a>(
    family: Family,
    applied: impl DoubleEndedIterator<Item = (&'a Plan, &'a Snapshot)>,
    source: ApplyError,
) -> FamiliesError {
    let mut rolled_back = Vec::new();
    let mut installed = Vec::new();
    let mut rollback_errors = Vec::new();
    for (plan, snapshot) in applied.rev() {
        match roll_back(plan, snapshot) {
            Ok(()) => rolled_back.push(snapshot.family),
            Err(e) => {
                installed.push(snapshot.family);
                rollback_errors.push((snapshot.family, e));
            }
        }
    }
    rolled_back.reverse();
    installed.reverse();
    if rollback_errors.is_empty() {
        FamiliesError::Install {
            family,
            rolled_back,
            source,
        }
    } else {
        FamiliesError::RollbackFailed {
            family,
            installed,
            rollback_errors,
            source,
        }
    }
}

/// Removes everything `install_all` added to each family's table (and the
/// `-c` RETURNs for `exclude_interfaces`), in the given order. Returns, per
/// family, the applied input or `None` when there was nothing to remove.
/// All tables are read before any is changed.
pub fn cleanup_all(
    families: &[Family],
    exclude_interfaces: &[Interface],
) -> Result<Vec<(Family, Option<String>)>, FamiliesError> {
    let snapshots = snapshots(families.iter().copied())?;
    let mut done = Vec::new();
    for snapshot in &snapshots {
        let input = cleanup_input(&snapshot.state, exclude_interfaces);
        if let Some(input) = &input {
            if let Err(source) = restore(snapshot.family, input) {
                return Err(FamiliesError::Cleanup {
                    family: snapshot.family,
                    cleaned: done
                        .iter()
                        .filter(|(_, input): &&(Family, Option<String>)| input.is_some())
                        .map(|(f, _)| *f)
                        .collect(),
                    source,
                });
            }
        }
        done.push((snapshot.family, input));
    }
    Ok(done)
}

/// What [`add_inbound_address`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressAdded {
    /// `ip -6 addr add ::6/128 dev lo` added it.
    Added,
    /// `::6` was on `lo` already (the add was refused and the listing shows
    /// it), so nothing changed and nothing is ours to undo.
    AlreadyThere,
}

/// Puts `::6/128` on `lo` unless `::6` is there already.
///
/// Runs `ip -6 addr add ::6/128 dev lo`; only if that fails does it list the
/// addresses, and the add's error is returned unless `::6` is listed.
pub fn add_inbound_address() -> Result<AddressAdded, ApplyError> {
    match capture(address::PROGRAM, &address::add_args()) {
        Ok(_) => Ok(AddressAdded::Added),
        Err(error) => match list_inbound_address() {
            Ok(listed) if listed.is_present() => Ok(AddressAdded::AlreadyThere),
            _ => Err(error),
        },
    }
}

/// What `ip -6 addr show dev lo` says about `::6`.
pub fn list_inbound_address() -> Result<Listed, ApplyError> {
    capture(address::PROGRAM, &address::show_args()).map(|(_, text)| address::listed(&text))
}

/// Takes `::6/128` off `lo`: `ip -6 addr del ::6/128 dev lo` when the
/// listing shows it, returning `true`; `false`, without running the delete,
/// when it is not there (`::6` with another prefix length is not ours and
/// stays).
pub fn remove_inbound_address() -> Result<bool, ApplyError> {
    if list_inbound_address()? != Listed::Ours {
        return Ok(false);
    }
    capture(address::PROGRAM, &address::del_args())?;
    Ok(true)
}

/// Reads every family's table, stopping at the first that cannot be read.
fn snapshots(families: impl Iterator<Item = Family>) -> Result<Vec<Snapshot>, FamiliesError> {
    families
        .map(|family| snapshot(family).map_err(|source| FamiliesError::Read { family, source }))
        .collect()
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
