//! Entry point of the `remora-init` binary: parse and validate the flags
//! (before any I/O, so bad input never touches the tables), then install,
//! clean up, or — with `--dry-run` — print what would be applied.
//!
//! IPv4 is always programmed; `--dual-stack` (or `ISTIO_DUAL_STACK=true`)
//! adds IPv6 through `ip6tables`, and the address `::6/128` on `lo`. A
//! dual-stack dry run prints one restore input per family, each preceded by
//! a `# iptables-restore --noflush` / `# ip6tables-restore --noflush` comment
//! line naming the command it is for, and the `ip` command as a comment line
//! of its own, where the real run would run it: `# ip -6 addr add ::6/128
//! dev lo` first on install, `# ip -6 addr del ::6/128 dev lo` last on
//! cleanup (only when the address is there).
//!
//! Install adds the address first, so that failing to add it leaves every
//! table untouched; if a table then fails, an address this run added is
//! taken off again. Cleanup removes the address after the tables, and only
//! if they were all cleaned up. Every error says what failed and what, if
//! anything, was left changed.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use remora_init::address::{self, Listed};
use remora_init::apply::{self, AddressAdded, RESTORE_ARGS};
use remora_init::flags::{Action, Invocation};
use remora_init::rules::{plan, Family, Plan};
use remora_init::state::{cleanup_input, install_input};
use remora_init::{CleanupConfig, Cli, Config, ConfigError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-init: error: {e:#}");
            // Bad input is a usage error, like clap's own; the tables were
            // not touched.
            if e.is::<ConfigError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let invocation = cli.validate()?;
    match &invocation.action {
        Action::Install(config) => install(config, &invocation),
        Action::Cleanup(config) => cleanup(config, &invocation),
    }
}

/// Prints one family's restore input; labelled when there are several.
fn print_input(invocation: &Invocation, family: Family, input: &str) {
    if invocation.dual_stack {
        println!("# {} {}", family.restore_command(), RESTORE_ARGS.join(" "));
    }
    print!("{input}");
}

/// `remora-init: ` plus, with several families, the family: messages that
/// concern one table say which.
fn prefix(invocation: &Invocation, family: Family) -> String {
    if invocation.dual_stack {
        format!("remora-init: {family}: ")
    } else {
        "remora-init: ".to_owned()
    }
}

fn install(config: &Config, invocation: &Invocation) -> Result<()> {
    let plans: Vec<Plan> = invocation
        .families()
        .iter()
        .map(|&family| plan(config, family))
        .collect();
    if invocation.dry_run {
        if invocation.dual_stack {
            println!("# {}", address::command_line(&address::add_args()));
        }
        for plan in &plans {
            let family = plan.family();
            // Show the exact input, reconciled with the current table when it
            // can be read; otherwise the plan as it would apply to a clean table.
            let input = match apply::read_state(family) {
                Ok(state) => install_input(plan, &state),
                Err(e) => {
                    eprintln!(
                        "{}cannot read the current nat table ({:#}); \
                         showing the input for a table without our rules",
                        prefix(invocation, family),
                        anyhow::Error::from(e)
                    );
                    plan.restore_text()
                }
            };
            print_input(invocation, family, &input);
        }
        return Ok(());
    }
    let added = if invocation.dual_stack {
        Some(apply::add_inbound_address().with_context(|| {
            format!(
                "adding {} to {} failed; no nat table was changed",
                address::address(),
                address::DEVICE
            )
        })?)
    } else {
        None
    };
    if let Err(e) = apply::install_all(&plans) {
        let note = match added {
            Some(AddressAdded::Added) => match apply::remove_inbound_address() {
                Ok(_) => format!(
                    " ({}, added to {} just before, was removed again)",
                    address::address(),
                    address::DEVICE
                ),
                Err(undo) => format!(
                    " ({0}, added to {1} just before, stays on {1}: removing it failed: {2:#}; \
                     run `remora-init --dual-stack cleanup` to remove it)",
                    address::address(),
                    address::DEVICE,
                    anyhow::Error::from(undo)
                ),
            },
            Some(AddressAdded::AlreadyThere) | None => String::new(),
        };
        return Err(
            anyhow::Error::from(e).context(format!("installing the nat redirection rules{note}"))
        );
    }
    let counts: Vec<String> = plans
        .iter()
        .map(|p| {
            if invocation.dual_stack {
                format!("{} {}", p.rules().len(), p.family())
            } else {
                p.rules().len().to_string()
            }
        })
        .collect();
    eprintln!("remora-init: installed {} nat rules", counts.join(" and "));
    match added {
        Some(AddressAdded::Added) => eprintln!(
            "remora-init: added {} to {}",
            address::address(),
            address::DEVICE
        ),
        Some(AddressAdded::AlreadyThere) => eprintln!(
            "remora-init: {} was already on {}",
            address::address(),
            address::DEVICE
        ),
        None => {}
    }
    Ok(())
}

fn cleanup(config: &CleanupConfig, invocation: &Invocation) -> Result<()> {
    if invocation.dry_run {
        for &family in invocation.families() {
            let state = apply::read_state(family).with_context(|| {
                format!("--dry-run needs to read the current {family} nat table")
            })?;
            match cleanup_input(&state, &config.exclude_interfaces) {
                Some(input) => print_input(invocation, family, &input),
                None => eprintln!("{}nothing to clean up", prefix(invocation, family)),
            }
        }
        if invocation.dual_stack {
            let listed = apply::list_inbound_address().with_context(|| {
                format!(
                    "--dry-run needs to list the IPv6 addresses of {}",
                    address::DEVICE
                )
            })?;
            if listed == Listed::Ours {
                println!("# {}", address::command_line(&address::del_args()));
            } else {
                address_not_there();
            }
        }
        return Ok(());
    }
    let done = apply::cleanup_all(invocation.families(), &config.exclude_interfaces).with_context(
        || {
            if invocation.dual_stack {
                format!(
                    "removing the nat redirection rules ({} was left on {})",
                    address::address(),
                    address::DEVICE
                )
            } else {
                "removing the nat redirection rules".to_owned()
            }
        },
    )?;
    for (family, input) in done {
        match input {
            Some(_) => eprintln!(
                "{}removed the nat redirection rules",
                prefix(invocation, family)
            ),
            None => eprintln!("{}nothing to clean up", prefix(invocation, family)),
        }
    }
    if invocation.dual_stack {
        let removed = apply::remove_inbound_address().with_context(|| {
            format!(
                "the nat redirection rules were removed, but removing {} from {} failed \
                 (run cleanup again to finish)",
                address::address(),
                address::DEVICE
            )
        })?;
        if removed {
            eprintln!(
                "remora-init: removed {} from {}",
                address::address(),
                address::DEVICE
            );
        } else {
            address_not_there();
        }
    }
    Ok(())
}

fn address_not_there() {
    eprintln!(
        "remora-init: {} is not on {}: nothing to remove",
        address::address(),
        address::DEVICE
    );
}
