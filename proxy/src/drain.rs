//! Graceful shutdown. On SIGTERM (or admin `POST /drain`) the sidecar reports not ready, stops
//! accepting inbound connections (outbound stays open for an app that is itself shutting down),
//! asks every HTTP connection to finish its in-flight requests and close (HTTP/2 GOAWAY, HTTP/1
//! close after the current response), lets tunnels and TCP streams run to their end, and exits
//! once all are done or the drain duration has passed.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct Drain {
    started: Arc<watch::Sender<bool>>,
    tasks: TaskTracker,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            started: Arc::new(watch::Sender::new(false)),
            tasks: TaskTracker::new(),
        }
    }
}

impl Drain {
    /// Begins draining; idempotent.
    pub fn start(&self) {
        self.started.send_replace(true);
    }

    /// Completes once draining has begun.
    pub async fn started(&self) {
        let mut started = self.started.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = started.wait_for(|started| *started).await;
    }

    /// Runs `task` (a connection, a tunnel) as work the drain waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Waits up to `deadline` for all tracked work to finish; `Err` holds how much was left.
    pub async fn finish(&self, deadline: Duration) -> Result<(), usize> {
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .map_err(|_| self.tasks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_work_up_to_the_deadline() {
        let drain = Drain::default();
        drain.spawn(tokio::time::sleep(Duration::from_secs(1)));
        drain.spawn(tokio::time::sleep(Duration::from_secs(60)));
        drain.start();
        drain.started().await;
        assert_eq!(drain.finish(Duration::from_secs(5)).await, Err(1));
    }

    #[tokio::test(start_paused = true)]
    async fn finishes_as_soon_as_work_is_done() {
        let drain = Drain::default();
        drain.spawn(tokio::time::sleep(Duration::from_secs(1)));
        let started = tokio::time::Instant::now();
        assert_eq!(drain.finish(Duration::from_secs(5)).await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
