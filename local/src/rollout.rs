//! What a re-read of the manifests asks of the running pods, decided the way Kubernetes'
//! Deployment controller would with its default rolling update (surge one, none unavailable):
//! more replicas are started, fewer are stopped (highest number first), a changed pod template
//! replaces each replica by starting the new pod before stopping the old, and a Deployment gone
//! from the manifests loses its pods. So a template edit never leaves a Service without
//! endpoints, and a new template that fails to start leaves the old pods serving.
//!
//! Only the template counts as a change, as for `pod-template-hash`: a new mesh config or
//! namespace label reaches pods when they are next replaced, not by restarting them. And an
//! edit that leaves a Deployment invalid, or unable to run locally, leaves its pods as they
//! are (as a rejected `kubectl apply` would), with the reason reported: a typo must not take
//! the app down. Pure (plans in, steps out), so every rule is tested without namespaces.

use std::collections::{BTreeMap, BTreeSet};

use super::plan::PodPlan;

/// `(namespace, Deployment name)`.
pub type DeploymentKey = (String, String);

/// What the manifests now say of one Deployment.
#[derive(Debug)]
pub enum Wanted {
    /// Run `replicas` pods (at least one) from the template `template` (the plan of any one
    /// of them).
    Run {
        replicas: usize,
        template: Box<PodPlan>,
    },
    /// Run no pods (`replicas: 0`).
    Nothing,
    /// Leave its pods as they are: the manifests are invalid for it now, or it cannot run
    /// locally. The reason is reported.
    Hold(String),
}

/// One change to the running pods, in the order they are to be made. Replicas are named
/// `<deployment>-<index>`; a new one takes the lowest free index.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Stop pod `namespace/name` (scaled down, or its Deployment is gone).
    Stop { namespace: String, name: String },
    /// Start replica `index` of Deployment `key` from its current template.
    Start { key: DeploymentKey, index: usize },
    /// Start replica `index` of Deployment `key` from its current template, then, only if it
    /// started, stop pod `old` (of the same namespace), which runs an older template.
    Replace {
        key: DeploymentKey,
        index: usize,
        old: String,
    },
}

/// The steps that take `running` (the plans the running pods were started from) to `wanted`
/// (every Deployment in the manifests): the stops of Deployments gone or scaled to zero first,
/// then each Deployment's own steps. New replicas take no name in `reserved` (pods still
/// terminating).
pub fn steps<'a>(
    running: impl IntoIterator<Item = &'a PodPlan>,
    reserved: &[&PodPlan],
    wanted: &BTreeMap<DeploymentKey, Wanted>,
) -> Vec<Step> {
    let mut pods: BTreeMap<DeploymentKey, Vec<&PodPlan>> = BTreeMap::new();
    for pod in running {
        pods.entry((pod.namespace.clone(), pod.deployment.clone()))
            .or_default()
            .push(pod);
    }
    let mut gone = Vec::new();
    let mut changes = Vec::new();
    for (key, pods) in &pods {
        if matches!(wanted.get(key), None | Some(Wanted::Nothing)) {
            gone.extend(pods.iter().rev().map(|pod| stop(pod)));
        }
    }
    for (key, wanted) in wanted {
        if let Wanted::Run { replicas, template } = wanted {
            let current = pods.get(key).map(Vec::as_slice).unwrap_or_default();
            let reserved: Vec<&PodPlan> = reserved
                .iter()
                .copied()
                .filter(|pod| (&pod.namespace, &pod.deployment) == (&key.0, &key.1))
                .collect();
            changes.extend(deployment_steps(
                key, *replicas, template, current, &reserved,
            ));
        }
    }
    gone.into_iter().chain(changes).collect()
}

/// One Deployment's steps, from its running pods `current`.
fn deployment_steps(
    key: &DeploymentKey,
    replicas: usize,
    template: &PodPlan,
    current: &[&PodPlan],
    reserved: &[&PodPlan],
) -> Vec<Step> {
    let mut current = current.to_vec();
    current.sort_by_key(|pod| index_of(pod));
    let mut used = used_indices(current.iter().chain(reserved).copied());
    let (up_to_date, mut outdated): (Vec<&PodPlan>, Vec<&PodPlan>) = current
        .into_iter()
        .partition(|pod| same_template(pod, template));

    let mut steps = Vec::new();
    // Too many up to date: the highest-numbered go, with every outdated one.
    if up_to_date.len() >= replicas {
        steps.extend(outdated.iter().rev().map(|pod| stop(pod)));
        steps.extend(up_to_date[replicas..].iter().rev().map(|pod| stop(pod)));
        return steps;
    }
    let missing = replicas - up_to_date.len();
    // Outdated pods beyond what is to be replaced go at once, highest-numbered first.
    while outdated.len() > missing {
        if let Some(pod) = outdated.pop() {
            steps.push(stop(pod));
        }
    }
    let mut next_index = || {
        let index = lowest_free(&used);
        used.insert(index);
        index
    };
    for pod in &outdated {
        steps.push(Step::Replace {
            key: key.clone(),
            index: next_index(),
            old: pod.name.clone(),
        });
    }
    for _ in outdated.len()..missing {
        steps.push(Step::Start {
            key: key.clone(),
            index: next_index(),
        });
    }
    steps
}

fn stop(pod: &PodPlan) -> Step {
    Step::Stop {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
    }
}

/// The number a new replica of a Deployment whose pods are `pods` takes: the lowest free one.
pub fn lowest_free_index<'a>(pods: impl IntoIterator<Item = &'a PodPlan>) -> usize {
    lowest_free(&used_indices(pods))
}

fn used_indices<'a>(pods: impl IntoIterator<Item = &'a PodPlan>) -> BTreeSet<usize> {
    pods.into_iter().filter_map(index_of).collect()
}

fn lowest_free(used: &BTreeSet<usize>) -> usize {
    (0..).find(|i| !used.contains(i)).unwrap_or_default()
}

/// The replica number in a pod's name (`<deployment>-<index>`).
fn index_of(pod: &PodPlan) -> Option<usize> {
    pod.name
        .strip_prefix(pod.deployment.as_str())?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// Whether two plans come from the same pod template: labels (with the template's hash),
/// annotations and spec. What admission adds from elsewhere (injection by namespace label,
/// the mesh config) does not restart a pod, as it does not in a cluster.
pub fn same_template(a: &PodPlan, b: &PodPlan) -> bool {
    let meta = (&a.pod.metadata, &b.pod.metadata);
    meta.0.labels == meta.1.labels
        && meta.0.annotations == meta.1.annotations
        && a.pod.spec == b.pod.spec
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Pod, PodSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn plan(namespace: &str, deployment: &str, n: usize, version: &str) -> PodPlan {
        PodPlan {
            namespace: namespace.to_owned(),
            name: format!("{deployment}-{n}"),
            deployment: deployment.to_owned(),
            pod: Pod {
                metadata: ObjectMeta {
                    labels: Some(BTreeMap::from([("version".to_owned(), version.to_owned())])),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec::default()),
                status: None,
            },
        }
    }

    fn run(namespace: &str, deployment: &str, replicas: usize, version: &str) -> Wanted {
        Wanted::Run {
            replicas,
            template: Box::new(plan(namespace, deployment, 0, version)),
        }
    }

    fn key(namespace: &str, deployment: &str) -> DeploymentKey {
        (namespace.to_owned(), deployment.to_owned())
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                Step::Stop { namespace, name } => format!("stop {namespace}/{name}"),
                Step::Start {
                    key: (ns, name),
                    index,
                } => format!("start {ns}/{name}-{index}"),
                Step::Replace {
                    key: (ns, name),
                    index,
                    old,
                } => format!("start {ns}/{name}-{index} then stop {old}"),
            })
            .collect()
    }

    #[test]
    fn nothing_changes_when_the_manifests_match_the_pods() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 1, "v1"),
        ];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 2, "v1"))]);
        assert_eq!(steps(&running, &[], &wanted), Vec::new());
    }

    #[test]
    fn scaling_up_starts_replicas_at_the_lowest_free_numbers_and_a_new_deployment_its_pods() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 2, "v1"),
        ];
        let wanted = BTreeMap::from([
            (key("demo", "httpbin"), run("demo", "httpbin", 4, "v1")),
            (key("client", "sleep"), run("client", "sleep", 1, "v1")),
        ]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            [
                "start client/sleep-0",
                "start demo/httpbin-1",
                "start demo/httpbin-3"
            ]
        );
    }

    #[test]
    fn scaling_down_stops_the_highest_replicas_first_and_a_removed_deployment_all() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 1, "v1"),
            plan("demo", "httpbin", 2, "v1"),
            plan("client", "sleep", 0, "v1"),
            plan("client", "sleep", 1, "v1"),
        ];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 1, "v1"))]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            [
                "stop client/sleep-1",
                "stop client/sleep-0",
                "stop demo/httpbin-2",
                "stop demo/httpbin-1"
            ]
        );
    }

    #[test]
    fn a_changed_template_starts_each_new_replica_before_stopping_an_old_one() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 1, "v1"),
        ];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 2, "v2"))]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            [
                "start demo/httpbin-2 then stop httpbin-0",
                "start demo/httpbin-3 then stop httpbin-1"
            ]
        );
    }

    #[test]
    fn a_rollout_with_a_new_replica_count_replaces_only_what_it_keeps() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 1, "v1"),
            plan("demo", "httpbin", 2, "v1"),
        ];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 2, "v2"))]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            [
                "stop demo/httpbin-2",
                "start demo/httpbin-3 then stop httpbin-0",
                "start demo/httpbin-4 then stop httpbin-1"
            ]
        );

        let running = [plan("demo", "httpbin", 0, "v1")];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 3, "v2"))]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            [
                "start demo/httpbin-1 then stop httpbin-0",
                "start demo/httpbin-2",
                "start demo/httpbin-3"
            ]
        );
    }

    #[test]
    fn a_half_done_rollout_finishes_and_surplus_pods_go() {
        // One replica already replaced; a scale-down to one keeps the up-to-date one.
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 2, "v2"),
        ];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 1, "v2"))]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            ["stop demo/httpbin-0"]
        );

        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 2, "v2"))]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            ["start demo/httpbin-1 then stop httpbin-0"]
        );
    }

    #[test]
    fn zero_replicas_stop_every_pod_and_terminating_pods_keep_their_names() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 1, "v1"),
        ];
        let wanted = BTreeMap::from([(key("demo", "httpbin"), Wanted::Nothing)]);
        assert_eq!(
            names(&steps(&running, &[], &wanted)),
            ["stop demo/httpbin-1", "stop demo/httpbin-0"]
        );

        let running = [plan("demo", "httpbin", 1, "v1")];
        let terminating = plan("demo", "httpbin", 0, "v1");
        let other = plan("client", "httpbin", 2, "v1");
        let wanted = BTreeMap::from([(key("demo", "httpbin"), run("demo", "httpbin", 3, "v1"))]);
        assert_eq!(
            names(&steps(&running, &[&terminating, &other], &wanted)),
            ["start demo/httpbin-2", "start demo/httpbin-3"],
            "httpbin-0 is still terminating; another namespace's names are free"
        );
    }

    #[test]
    fn a_held_deployment_keeps_its_pods_whatever_they_run() {
        let running = [
            plan("demo", "httpbin", 0, "v1"),
            plan("demo", "httpbin", 1, "v1"),
        ];
        let wanted = BTreeMap::from([(
            key("demo", "httpbin"),
            Wanted::Hold("spec.replicas: invalid type".to_owned()),
        )]);
        assert_eq!(steps(&running, &[], &wanted), Vec::new());
    }
}
