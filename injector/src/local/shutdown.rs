//! Waiting for Ctrl-C or SIGTERM while a local cluster runs in the foreground.
//!
//! Signals are caught with handlers rather than blocked and waited for: a blocked mask is
//! inherited by every process the launcher starts, so sidecars would never see the SIGTERM
//! that asks them to drain. Handlers, unlike masks, are reset when a child execs. Install the
//! handlers before bringing anything up, so a signal during bring-up still ends in a teardown.

use std::{io, time::Duration};

use tokio::{
    runtime::{Builder, Runtime},
    signal::unix::{signal, Signal, SignalKind},
};

/// Caught SIGINT and SIGTERM.
pub struct Shutdown {
    runtime: Runtime,
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    /// Starts catching SIGINT and SIGTERM.
    pub fn install() -> io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let (interrupt, terminate) = runtime.block_on(async {
            io::Result::Ok((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        Ok(Self {
            runtime,
            interrupt,
            terminate,
        })
    }

    /// Waits up to `timeout` for either signal; true if one came (then or earlier).
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        let Self {
            runtime,
            interrupt,
            terminate,
        } = self;
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => true,
                _ = terminate.recv() => true,
                () = tokio::time::sleep(timeout) => false,
            }
        })
    }

    /// Waits for either signal.
    pub fn wait(&mut self) {
        let Self {
            runtime,
            interrupt,
            terminate,
        } = self;
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
    }
}
