//! Entry point of the `remora-init` binary: parse and validate the flags
//! (before any I/O, so bad input never touches the tables), then install,
//! clean up, or — with `--dry-run` — print what would be applied.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use remora_init::apply;
use remora_init::rules::{plan, Family};
use remora_init::state::{cleanup_input, install_input};
use remora_init::{Cli, Command, ConfigError};

/// Only IPv4 is applied for now; the plan itself is family-generic.
const FAMILY: Family = Family::V4;

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
    match &cli.command {
        None => install(cli),
        Some(Command::Cleanup(args)) => {
            let config = args.validate()?;
            if cli.dry_run {
                let state = apply::read_state(FAMILY)
                    .context("--dry-run needs to read the current nat table")?;
                match cleanup_input(&state, &config.exclude_interfaces) {
                    Some(input) => print!("{input}"),
                    None => eprintln!("remora-init: nothing to clean up"),
                }
                return Ok(());
            }
            match apply::cleanup(FAMILY, &config.exclude_interfaces)? {
                Some(_) => eprintln!("remora-init: removed the nat redirection rules"),
                None => eprintln!("remora-init: nothing to clean up"),
            }
            Ok(())
        }
    }
}

fn install(cli: &Cli) -> Result<()> {
    let config = cli.capture.validate()?;
    let plan = plan(&config, FAMILY);
    if cli.dry_run {
        // Show the exact input, reconciled with the current table when it can
        // be read; otherwise the plan as it would apply to a clean table.
        match apply::read_state(FAMILY) {
            Ok(state) => print!("{}", install_input(&plan, &state)),
            Err(e) => {
                eprintln!(
                    "remora-init: cannot read the current nat table ({:#}); \
                     showing the input for a table without our rules",
                    anyhow::Error::from(e)
                );
                print!("{}", plan.restore_text());
            }
        }
        return Ok(());
    }
    apply::install(&plan).context("installing the nat redirection rules")?;
    eprintln!("remora-init: installed {} nat rules", plan.rules().len());
    Ok(())
}
