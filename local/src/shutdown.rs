//! Waiting for Ctrl-C, SIGTERM or SIGHUP (the terminal went away) while a local cluster runs
//! in the foreground: any of them ends in a teardown, where the default action of each would
//! kill the launcher and leave namespaces, processes and files behind.
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

/// Caught SIGINT, SIGTERM and SIGHUP.
pub struct Shutdown {
    runtime: Runtime,
    signals: [Signal; 3],
}

impl Shutdown {
    /// Starts catching SIGINT, SIGTERM and SIGHUP.
    pub fn install() -> io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let signals = runtime.block_on(async {
            io::Result::Ok([
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ])
        })?;
        Ok(Self { runtime, signals })
    }

    /// Waits up to `timeout` for any of the signals; true if one came (then or earlier).
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        let Self { runtime, signals } = self;
        runtime.block_on(async { tokio::time::timeout(timeout, any(signals)).await.is_ok() })
    }

    /// Waits for any of the signals.
    pub fn wait(&mut self) {
        let Self { runtime, signals } = self;
        runtime.block_on(any(signals));
    }
}

/// Completes when any of `signals` arrives (or has arrived since it was last awaited).
async fn any([interrupt, terminate, hangup]: &mut [Signal; 3]) {
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
        _ = hangup.recv() => {}
    }
}
