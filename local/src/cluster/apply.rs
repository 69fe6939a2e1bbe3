//! Applying what [`rollout`](super::rollout) decides to the running pods, one step at a time,
//! the way a kubelet and a Deployment controller would: a new pod is recorded not ready until
//! it runs; a pod that goes is recorded not ready first, stopped only once every sidecar has
//! dropped its endpoints, then asked to stop (SIGTERM) and given its grace period to finish
//! what it is doing; a pod that fails to start is tried again with the kubelet's doubling
//! back-off (10 s up to 5 min) rather than on every read, and not at all once the manifests
//! stop asking for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{
    rollout::{self, DeploymentKey, Step, Wanted},
    Cluster, LocalError, LocalPod, PodPlan,
};

/// The first wait before a pod that failed to start is tried again; it doubles each time.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest wait between two tries (the kubelet's CrashLoopBackOff cap).
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What [`Cluster::resync`] changed.
#[derive(Debug, Default)]
pub struct Rollout {
    pub started: Vec<LocalPod>,
    /// Asked to stop (they finish in the background, within their grace period).
    pub stopped: Vec<LocalPod>,
    /// Deployments whose pods are left as they are, newly or for a new reason: invalid in
    /// the manifests now, unable to run locally, or just gone (held for one more read).
    pub held: Vec<String>,
    /// What could not be done (each names its pod or file); the rest was done.
    pub failed: Vec<LocalError>,
}

/// A Deployment's pod that failed to start, and when the same pod may be tried again.
#[derive(Debug)]
pub(super) struct Failure {
    plan: PodPlan,
    attempts: u32,
    retry_at: Instant,
}

impl Cluster {
    /// Takes the pods to what the manifests (as last read) ask; what fails is reported and
    /// the other steps still run.
    pub(super) fn roll_out(&mut self, report: &mut Rollout) {
        self.reap();
        let running: BTreeSet<DeploymentKey> = self
            .pods
            .iter()
            .map(|pod| (pod.info.namespace.clone(), pod.info.deployment.clone()))
            .collect();
        let (wanted, skipped) = self.desired.read(&self.catalog, &running);
        self.skipped = skipped;

        let held = held_reasons(&wanted);
        report.held = held
            .iter()
            .filter(|(key, reason)| self.held.get(*key) != Some(*reason))
            .map(|(_, reason)| reason.clone())
            .collect();
        self.held = held;
        // A failure counts while the manifests still ask for the pod that failed (or leave
        // the Deployment as it is).
        self.failed.retain(|key, failure| match wanted.get(key) {
            Some(Wanted::Run { template, .. }) => rollout::same_template(template, &failure.plan),
            Some(Wanted::Hold(_)) => true,
            Some(Wanted::Nothing) | None => false,
        });

        let plans: Vec<PodPlan> = self.pods.iter().map(|pod| pod.plan.clone()).collect();
        let terminating: Vec<PodPlan> = self
            .terminating
            .iter()
            .map(|(pod, _)| pod.plan.clone())
            .collect();
        let reserved: Vec<&PodPlan> = terminating.iter().collect();
        for step in rollout::steps(&plans, &reserved, &wanted) {
            let outcome = match step {
                Step::Stop { namespace, name } => self.stop_pod(&namespace, &name, report),
                Step::Start { key, index } => self.start_replica(&key, index, report).map(drop),
                Step::Replace { key, index, old } => {
                    match self.start_replica(&key, index, report) {
                        // The old pod serves until its replacement runs.
                        Ok(true) => self.stop_pod(&key.0, &old, report),
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = outcome {
                report.failed.push(e);
            }
        }
    }

    /// Starts replica `index` of Deployment `key` from its template in the manifests now,
    /// adding it to the report; whether it started. The same pod failed before and its
    /// back-off has not passed: not tried.
    fn start_replica(
        &mut self,
        key: &DeploymentKey,
        index: usize,
        report: &mut Rollout,
    ) -> Result<bool, LocalError> {
        let plan = self.replica_plan(key, index)?;
        let failed_before = self
            .failed
            .get(key)
            .filter(|failure| rollout::same_template(&failure.plan, &plan));
        if failed_before.is_some_and(|failure| Instant::now() < failure.retry_at) {
            return Ok(false);
        }
        let attempts = failed_before.map_or(0, |failure| failure.attempts) + 1;
        match self.start_plan(plan.clone()) {
            Ok(()) => {
                self.failed.remove(key);
                report
                    .started
                    .push(self.pods[self.pods.len() - 1].info.clone());
                Ok(true)
            }
            Err(e) => {
                let retry_at = Instant::now() + backoff(attempts);
                self.failed.insert(
                    key.clone(),
                    Failure {
                        plan,
                        attempts,
                        retry_at,
                    },
                );
                Err(e)
            }
        }
    }

    /// Creates and starts a pod for `plan`, recorded not ready while it starts and ready once
    /// it runs. A pod that is not started is removed again, records included.
    pub(super) fn start_plan(&mut self, plan: PodPlan) -> Result<(), LocalError> {
        self.create_pod(plan)?;
        let index = self.pods.len() - 1;
        let started = self
            .write_records()
            .and_then(|()| self.start_pod(index))
            .and_then(|()| self.write_records());
        if started.is_err() {
            self.pods.truncate(index);
            // The first error is the one to report; a failure to withdraw the records is
            // only logged.
            if let Err(records) = self.write_records() {
                tracing::warn!(error = %records, "withdrawing the records of a pod not started");
            }
        }
        started
    }

    /// Stops pod `namespace/name` the way a cluster drains one: recorded not ready, then, once
    /// every sidecar has dropped its endpoints, asked to stop and given its grace period. It
    /// goes even when the sidecars cannot be waited for (a pod asked to stop goes, as a
    /// deleted pod does); that is reported.
    fn stop_pod(
        &mut self,
        namespace: &str,
        name: &str,
        report: &mut Rollout,
    ) -> Result<(), LocalError> {
        let Some(index) = self
            .pods
            .iter()
            .position(|pod| pod.info.namespace == namespace && pod.info.name == name)
        else {
            return Ok(());
        };
        self.pods[index].withdraw();
        let drained = self.write_records().and_then(|()| self.wait_for_sidecars());
        let mut pod = self.pods.remove(index);
        pod.terminate();
        report.stopped.push(pod.info.clone());
        let deadline = Instant::now() + pod.grace_period();
        self.terminating.push((pod, deadline));
        drained.and_then(|()| self.write_records())
    }

    /// Removes the stopping pods that have exited or whose grace period is over (what is
    /// left of them is killed).
    pub(super) fn reap(&mut self) {
        let now = Instant::now();
        self.terminating
            .retain_mut(|(pod, deadline)| !(pod.exited() || now >= *deadline));
    }
}

/// How long to wait after the `attempts`-th failed start before trying again: the kubelet's
/// CrashLoopBackOff, 10 s doubling each time up to 5 min.
fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(MAX_RETRY)
}

/// Why each held Deployment is held.
pub(super) fn held_reasons(
    wanted: &BTreeMap<DeploymentKey, Wanted>,
) -> BTreeMap<DeploymentKey, String> {
    wanted
        .iter()
        .filter_map(|(key, wanted)| match wanted {
            Wanted::Hold(reason) => Some((key.clone(), reason.clone())),
            Wanted::Run { .. } | Wanted::Nothing => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_starts_back_off_as_the_kubelet_does() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }
}
