//! What the manifests ask to run, read after read, with what a cluster remembers between two
//! reads: which file each Deployment came from, which ones went missing, and replicas added by
//! hand (`kubectl scale`).
//!
//! A Deployment absent from a read is not necessarily deleted. If its file now fails to parse,
//! or its own document is rejected, the edit is one `kubectl apply` would refuse, so its pods
//! stay as they are (the reason is reported). If it is simply gone, it is held for one more
//! read before its pods stop, so a file caught half-written by an editor does not take an app
//! down. Replicas added by hand last until the Deployment's own `replicas` changes, as a
//! `kubectl scale` lasts until the next `kubectl apply` that sets `replicas`.

use std::collections::{BTreeMap, BTreeSet};

use remora_injector::config::{well_known::namespace_of, Catalog};

use super::{
    plan::{self, PlanError},
    rollout::{DeploymentKey, Wanted},
};

/// The launcher's memory of the manifests between reads.
#[derive(Debug, Default)]
pub struct Desired {
    /// The file each Deployment was last read from.
    origins: BTreeMap<DeploymentKey, String>,
    /// Deployments with pods that were missing from the last read, held once.
    missing: BTreeSet<DeploymentKey>,
    /// Replicas added by hand: `spec.replicas` when they were added, and how many.
    extra: BTreeMap<DeploymentKey, (usize, usize)>,
}

impl Desired {
    /// What `catalog` asks of every Deployment, and of those with pods (`running`) that it
    /// no longer lists; with the Deployments that cannot run locally.
    pub fn read(
        &mut self,
        catalog: &Catalog,
        running: &BTreeSet<DeploymentKey>,
    ) -> (BTreeMap<DeploymentKey, Wanted>, Vec<PlanError>) {
        let mut wanted = BTreeMap::new();
        let mut skipped = Vec::new();
        for deployment in catalog.accepted().deployments() {
            let key = (
                namespace_of(&deployment.metadata).to_owned(),
                deployment.metadata.name.clone().unwrap_or_default(),
            );
            if let Some(origin) = catalog.accepted().deployment_origin(&key.0, &key.1) {
                self.origins.insert(key.clone(), origin.to_owned());
            }
            let entry = plan::replica_count(deployment)
                .map(|replicas| replicas + self.extra_for(&key, replicas))
                .and_then(|replicas| match replicas {
                    0 => Ok(Wanted::Nothing),
                    replicas => plan::replica(deployment, 0).map(|template| Wanted::Run {
                        replicas,
                        template: Box::new(template),
                    }),
                })
                .unwrap_or_else(|e| {
                    let reason = e.to_string();
                    skipped.push(e);
                    Wanted::Hold(reason)
                });
            wanted.insert(key, entry);
        }

        let mut missing = BTreeSet::new();
        let absent: Vec<&DeploymentKey> = running
            .iter()
            .filter(|key| !wanted.contains_key(*key))
            .collect();
        for key in absent {
            let (namespace, name) = key;
            let rejection = self
                .origins
                .get(key)
                .and_then(|origin| catalog.rejection_of("Deployment", namespace, name, origin));
            if let Some(rejection) = rejection {
                let reason = format!("{}: {}", rejection.object, rejection.reason);
                wanted.insert(key.clone(), Wanted::Hold(reason));
            } else if !self.missing.contains(key) {
                let reason = format!(
                    "Deployment {namespace}/{name} is no longer in the manifests: its pods stop \
                     unless it is back at the next read"
                );
                wanted.insert(key.clone(), Wanted::Hold(reason));
                missing.insert(key.clone());
            }
        }
        self.missing = missing;
        self.origins
            .retain(|key, _| wanted.contains_key(key) || running.contains(key));
        self.extra.retain(|key, _| wanted.contains_key(key));
        (wanted, skipped)
    }

    /// Records one more replica of `key` added by hand, on top of `replicas` (its
    /// `spec.replicas` now).
    pub fn add_replica(&mut self, key: DeploymentKey, replicas: usize) {
        let extra = self.extra.entry(key).or_insert((replicas, 0));
        if extra.0 != replicas {
            *extra = (replicas, 0);
        }
        extra.1 += 1;
    }

    /// The replicas added by hand to `key` that still count with `replicas` as its
    /// `spec.replicas`: none once that changed since.
    fn extra_for(&mut self, key: &DeploymentKey, replicas: usize) -> usize {
        match self.extra.get(key) {
            Some(&(at, extra)) if at == replicas => extra,
            Some(_) => {
                self.extra.remove(key);
                0
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n\
                       spec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    \
                       metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, command: [web]}]}\n";

    fn catalog(files: &[(&str, &str)]) -> Catalog {
        Catalog::build(
            files
                .iter()
                .map(|(origin, text)| ((*origin).to_owned(), (*text).to_owned()))
                .collect(),
        )
    }

    fn web() -> DeploymentKey {
        ("demo".to_owned(), "web".to_owned())
    }

    fn summary(wanted: &BTreeMap<DeploymentKey, Wanted>) -> Vec<String> {
        wanted
            .iter()
            .map(|((ns, name), wanted)| match wanted {
                Wanted::Run { replicas, .. } => format!("{ns}/{name}: run {replicas}"),
                Wanted::Nothing => format!("{ns}/{name}: nothing"),
                Wanted::Hold(reason) => format!("{ns}/{name}: hold: {reason}"),
            })
            .collect()
    }

    #[test]
    fn a_deployment_rejected_or_in_a_broken_file_is_held_and_a_deleted_one_stops_a_read_later() {
        let mut desired = Desired::default();
        let running = BTreeSet::from([web()]);
        let (wanted, _) = desired.read(&catalog(&[("/m/web.yaml", WEB)]), &running);
        assert_eq!(summary(&wanted), ["demo/web: run 2"]);

        // Its own document rejected: held as long as it stays so.
        let invalid = WEB.replace("replicas: 2", "replicas: two");
        for _ in 0..3 {
            let (wanted, _) = desired.read(&catalog(&[("/m/web.yaml", &invalid)]), &running);
            let [line] = summary(&wanted).try_into().expect("one");
            assert!(
                line.starts_with("demo/web: hold: Deployment demo/web in /m/web.yaml")
                    && line.contains("spec.replicas"),
                "{line}"
            );
        }

        // Its file no longer parses: held too. Another file's breakage is not its business.
        let broken = catalog(&[("/m/web.yaml", "kind: [unclosed\n")]);
        let (wanted, _) = desired.read(&broken, &running);
        assert!(summary(&wanted)[0].starts_with("demo/web: hold: /m/web.yaml: "));

        // Gone for good, with an unrelated broken file beside: held once, then stopped.
        let gone = catalog(&[("/m/web.yaml", ""), ("/m/notes.yaml", "just: notes\n")]);
        let (wanted, _) = desired.read(&gone, &running);
        let [line] = summary(&wanted).try_into().expect("one");
        assert!(line.contains("no longer in the manifests"), "{line}");
        let (wanted, _) = desired.read(&gone, &running);
        assert_eq!(summary(&wanted), Vec::<String>::new());

        // Back before the second read: nothing stops.
        let mut desired = Desired::default();
        desired.read(&catalog(&[("/m/web.yaml", WEB)]), &running);
        desired.read(&catalog(&[("/m/web.yaml", "")]), &running);
        let (wanted, _) = desired.read(&catalog(&[("/m/web.yaml", WEB)]), &running);
        assert_eq!(summary(&wanted), ["demo/web: run 2"]);
        let (wanted, _) = desired.read(&catalog(&[("/m/web.yaml", "")]), &running);
        assert!(summary(&wanted)[0].contains("no longer in the manifests"));
    }

    #[test]
    fn replicas_added_by_hand_last_until_replicas_changes() {
        let mut desired = Desired::default();
        let running = BTreeSet::from([web()]);
        let two = catalog(&[("/m/web.yaml", WEB)]);
        desired.read(&two, &running);
        desired.add_replica(web(), 2);
        desired.add_replica(web(), 2);
        let (wanted, _) = desired.read(&two, &running);
        assert_eq!(summary(&wanted), ["demo/web: run 4"]);

        let three = catalog(&[("/m/web.yaml", &WEB.replace("replicas: 2", "replicas: 3"))]);
        let (wanted, _) = desired.read(&three, &running);
        assert_eq!(summary(&wanted), ["demo/web: run 3"]);
        let (wanted, _) = desired.read(&two, &running);
        assert_eq!(
            summary(&wanted),
            ["demo/web: run 2"],
            "forgotten, not revived"
        );

        // Scaled to zero and back: the hand-added ones are forgotten too.
        desired.add_replica(web(), 2);
        let zero = catalog(&[("/m/web.yaml", &WEB.replace("replicas: 2", "replicas: 0"))]);
        let (wanted, _) = desired.read(&zero, &running);
        assert_eq!(summary(&wanted), ["demo/web: nothing"]);
        let (wanted, _) = desired.read(&two, &running);
        assert_eq!(summary(&wanted), ["demo/web: run 2"]);

        // Added by hand to a Deployment scaled to zero: it runs until replicas changes.
        desired.read(&zero, &running);
        desired.add_replica(web(), 0);
        let (wanted, _) = desired.read(&zero, &running);
        assert_eq!(summary(&wanted), ["demo/web: run 1"]);
    }

    #[test]
    fn zero_replicas_run_nothing_and_need_no_runnable_template() {
        let mut desired = Desired::default();
        let unrunnable = WEB
            .replace("replicas: 2", "replicas: 0")
            .replace(", command: [web]", "");
        let (wanted, skipped) =
            desired.read(&catalog(&[("/m/web.yaml", &unrunnable)]), &BTreeSet::new());
        assert_eq!(summary(&wanted), ["demo/web: nothing"]);
        assert!(skipped.is_empty());

        let (wanted, skipped) = desired.read(
            &catalog(&[(
                "/m/web.yaml",
                &unrunnable.replace("replicas: 0", "replicas: 1"),
            )]),
            &BTreeSet::new(),
        );
        let [line] = summary(&wanted).try_into().expect("one");
        assert!(line.contains("command: required locally"), "{line}");
        assert_eq!(skipped.len(), 1);
    }
}
