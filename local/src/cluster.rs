//! A running local cluster: the control plane, one pod per Deployment replica, and the records
//! tying them together, built from a directory of manifests and torn down on drop.
//!
//! Bring-up follows what a cluster would do, in an order that never lets a sidecar ask the
//! control plane about a pod it has no record of, nor a client reach a pod that is not running:
//! start the control plane and wait until it is ready; plan every replica, send it through
//! admission (the control plane's injection webhook, as the webhook configuration selects;
//! a pod refused is reported and not run), give each a namespace and an address; record the
//! Pods (not ready) and EndpointSlices (their endpoints not ready), then start the pods one by
//! one, recording each as ready once it runs.
//!
//! Afterwards [`Cluster::resync`] follows edits to the manifests as a cluster's controllers
//! would ([`rollout`] decides what changes). A pod leaves in the reverse order it came: it is
//! recorded not ready first, and stopped only once every sidecar has dropped it, so clients
//! never pick an endpoint that is going away.

mod apply;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use remora_api::proto::config::Node;
use remora_injector::{
    ca::Authority,
    config::{read_directories, well_known::namespace_of, Catalog, Rejection},
    token::TokenIssuer,
};

use super::{
    admission::{self, AdmissionError, Webhooks},
    bins::Binaries,
    containers::PodRun,
    control_plane::{has_ca, ControlPlane, ControlPlaneConfig, ControlPlaneError},
    desired::Desired,
    error::{io_error, LocalError},
    files::write_atomic,
    hosts::{self, EtcNetns},
    kube_proxy,
    manifests::{self, LocalService},
    network::Network,
    options::Options,
    plan::{self, PlanError, PodPlan},
    pod::{LocalPod, PodError, RunningPod, StartContext},
    record_dir::RecordDir,
    records,
    rollout::{self, DeploymentKey, Wanted},
    state::StateDir,
};

pub use apply::Rollout;
use apply::{held_reasons, Failure};

/// The control plane's pod.
const CONTROL_PLANE_POD: (&str, &str) = ("istio-system", "istiod-0");
/// The list of running pods in the state directory, for commands run beside the launcher.
const POD_INDEX: &str = "pods.json";

/// A local cluster; dropping it stops everything and removes what it created.
pub struct Cluster {
    // Fields drop in order: pods, then the control plane, then the bridge, state last.
    pods: Vec<RunningPod>,
    /// Pods asked to stop, out of the records, with the end of their grace period: removed
    /// once they exit or it passes (their names stay taken until then).
    terminating: Vec<(RunningPod, Instant)>,
    control_plane: ControlPlane,
    network: Network,
    tokens: TokenIssuer,
    roots_pem: String,
    bins: Binaries,
    config_dir: PathBuf,
    prefix: String,
    timeout: Duration,
    /// The manifests as the control plane reads them, at the last (re-)read.
    catalog: Catalog,
    /// The accepted Deployments that cannot run locally, and why (at the last read).
    skipped: Vec<PlanError>,
    /// What the manifests asked, remembered between reads.
    desired: Desired,
    /// Why each Deployment's pods are left as they are, as last reported.
    held: BTreeMap<DeploymentKey, String>,
    /// The pods that failed to start, by Deployment, for their back-off.
    failed: BTreeMap<DeploymentKey, Failure>,
    /// The Deployments whose last pod admission refused, and why.
    refused: BTreeMap<DeploymentKey, AdmissionError>,
    records: RecordDir,
    /// kube-proxy's rules for pods without a sidecar, from the current records.
    service_nat: String,
    /// What cluster DNS answers for headless Services, from the current records.
    headless: Vec<hosts::ServiceAddress>,
    state: StateDir,
}

impl Cluster {
    /// Brings up the manifests in `config_dir`: control plane, pods, records. A Deployment
    /// that cannot run locally is skipped ([`Cluster::skipped`] says why); anything else that
    /// fails or does not become ready within the timeout fails the whole bring-up (tearing
    /// down whatever was started).
    pub fn up(config_dir: &Path, options: Options) -> Result<Self, LocalError> {
        let config_dir = config_dir
            .canonicalize()
            .map_err(io_error("reading the manifest directory", config_dir))?;
        let bins = match options.binaries {
            Some(bins) => bins,
            None => Binaries::locate()?,
        };
        let prefix = format!("{}-{}", options.name, std::process::id());
        let state = StateDir::open(
            options.state_dir.as_deref(),
            &prefix,
            options.keep_state,
            &config_dir,
        )?;

        let catalog = manifests::load(&config_dir);
        let mut desired = Desired::default();
        let (wanted, skipped) = desired.read(&catalog, &BTreeSet::new());
        for problem in &skipped {
            tracing::warn!(error = %problem, "not running a Deployment");
        }

        let ca_dir = state.ca_dir();
        if !has_ca(&ca_dir) {
            Authority::generate(catalog.trust_domain())?.save_new(&ca_dir)?;
        }
        let roots_pem = Authority::load(&ca_dir)?.roots_pem().to_owned();
        let tokens = TokenIssuer::load_or_generate(state.root())?;

        let network = Network::create(&format!("{prefix}-sw"), false)?;
        let (cp_namespace, cp_name) = CONTROL_PLANE_POD;
        let cp_network = network.add_reserved(&format!("{prefix}-{cp_namespace}-istiod"))?;
        let cp_hosts = hosts::render(
            cp_namespace,
            cp_name,
            cp_network.ip.into(),
            cp_network.ip.into(),
            &manifests::service_addresses(&catalog),
        );
        let cp_etc = EtcNetns::create(cp_network.netns.name(), &cp_hosts)
            .map_err(io_error("writing the hosts file of", Path::new(cp_name)))?;
        let cp_dir = state
            .pod_dir(cp_namespace, cp_name)
            .map_err(io_error("creating the directory of", Path::new(cp_name)))?;
        let control_plane = ControlPlane::new(
            cp_network,
            cp_etc,
            ControlPlaneConfig {
                binary: bins.injector.clone(),
                config_dirs: vec![config_dir.clone(), state.cluster_dir()],
                ca_dir,
                token_key: TokenIssuer::public_key_path(state.root()),
                dir: cp_dir,
                api_server: options.api_server,
            },
        );

        let mut cluster = Self {
            pods: Vec::new(),
            terminating: Vec::new(),
            control_plane,
            network,
            tokens,
            roots_pem,
            bins,
            config_dir,
            prefix,
            timeout: options.timeout,
            catalog,
            skipped,
            desired,
            held: held_reasons(&wanted),
            failed: BTreeMap::new(),
            refused: BTreeMap::new(),
            records: RecordDir::new(state.cluster_dir()),
            service_nat: String::new(),
            headless: Vec::new(),
            state,
        };
        // Admission asks the control plane's webhook, so it runs first (it reads the records
        // as they come).
        cluster.write_records()?;
        cluster.control_plane.start(cluster.timeout)?;
        for (key, wanted) in &wanted {
            if let Wanted::Run { replicas, .. } = wanted {
                for index in 0..*replicas {
                    let plan = cluster.replica_plan(key, index)?;
                    match cluster.create_pod(plan) {
                        // Refused pods are reported; the others still run.
                        Err(LocalError::Admission { source, .. }) => {
                            tracing::warn!(error = %source, "a pod was not admitted");
                            cluster.refused.insert(key.clone(), source);
                            break;
                        }
                        other => other?,
                    }
                }
            }
        }
        cluster.write_records()?;
        for index in 0..cluster.pods.len() {
            cluster.start_pod(index)?;
            cluster.write_records()?;
        }
        cluster.wait_for_sidecars()?;
        cluster.write_index()?;
        Ok(cluster)
    }

    /// The pods of the cluster whose state directory is `state_dir`, as it last listed them.
    pub fn read_index(state_dir: &Path) -> Result<Vec<LocalPod>, LocalError> {
        let path = state_dir.join(POD_INDEX);
        let text = fs::read(&path).map_err(io_error("reading", &path))?;
        serde_json::from_slice(&text).map_err(|e| LocalError::Io {
            what: "reading",
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    fn write_index(&self) -> Result<(), LocalError> {
        let pods: Vec<&LocalPod> = self.pods().collect();
        let text = serde_json::to_vec_pretty(&pods).map_err(LocalError::Index)?;
        let path = self.state.root().join(POD_INDEX);
        write_atomic(&path, &text).map_err(io_error("writing", &path))
    }

    /// Every pod, in start order.
    pub fn pods(&self) -> impl Iterator<Item = &LocalPod> {
        self.pods.iter().map(|pod| &pod.info)
    }

    /// The pods of Deployment `name` (in any namespace).
    pub fn deployment(&self, name: &str) -> Vec<&LocalPod> {
        self.pods().filter(|pod| pod.deployment == name).collect()
    }

    /// The first replica of Deployment `namespace/name`.
    pub fn first_pod(&self, namespace: &str, name: &str) -> Option<&LocalPod> {
        self.pods()
            .find(|pod| pod.namespace == namespace && pod.deployment == name)
    }

    /// The Services of the manifests, with their cluster IPs.
    pub fn services(&self) -> Vec<LocalService> {
        manifests::services(&self.catalog)
    }

    /// The objects of the manifests the control plane rejects, and why (at the last read).
    pub fn rejected(&self) -> &[Rejection] {
        &self.catalog.rejected
    }

    /// The Deployments that cannot run locally, and why (at the last read).
    pub fn skipped(&self) -> &[PlanError] {
        &self.skipped
    }

    /// Why admission refused the pods of Deployments it refused (at their last try).
    pub fn refused(&self) -> impl Iterator<Item = &AdmissionError> {
        self.refused.values()
    }

    pub fn state_dir(&self) -> &Path {
        self.state.root()
    }

    /// The control plane's pod address (`istiod.istio-system.svc` in every pod).
    pub fn control_plane_ip(&self) -> std::net::Ipv4Addr {
        self.control_plane.ip()
    }

    /// The control plane's network namespace.
    pub fn control_plane_netns(&self) -> &str {
        self.control_plane.netns()
    }

    /// Everything the control plane printed, over all its runs.
    pub fn control_plane_log(&self) -> String {
        self.control_plane.log()
    }

    /// Each kind of request the control plane made of the API server (`VERB group/resource`),
    /// when it runs as in a cluster.
    pub fn api_audit(&self) -> String {
        std::fs::read_to_string(self.control_plane.api_audit_path()).unwrap_or_default()
    }

    /// Stops the control plane (SIGTERM, then SIGKILL after a grace period). Sidecars keep
    /// their last config and certificates.
    pub fn stop_control_plane(&mut self) {
        self.control_plane.stop();
    }

    /// Starts the control plane again with the same flags and state, and waits until ready.
    pub fn start_control_plane(&mut self) -> Result<(), LocalError> {
        Ok(self.control_plane.start(self.timeout)?)
    }

    /// The objects the control plane rejected (`GET /debug/rejections`, JSON), or `None` when
    /// it does not serve that page.
    pub fn rejections(&self) -> Result<Option<serde_json::Value>, LocalError> {
        let (status, body) = self.control_plane.get("/debug/rejections")?;
        if status != 200 {
            return Ok(None);
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            LocalError::ControlPlane(ControlPlaneError::Http {
                path: "/debug/rejections".to_owned(),
                message: format!("not JSON: {e}"),
            })
        })
    }

    /// Starts one more replica of Deployment `namespace/name` (as read from the manifests
    /// now), as `kubectl scale` would, and returns it once every sidecar knows it: recorded
    /// as not ready, started, then recorded as ready (its endpoints join the EndpointSlices).
    /// Later resyncs keep it until the Deployment's `replicas` changes. A replica that fails
    /// to start is removed again, records included; one that starts but that some sidecar
    /// cannot learn of (it rejects the config, or the wait times out) stays, and the error
    /// says which sidecar.
    pub fn add_replica(&mut self, namespace: &str, name: &str) -> Result<&LocalPod, LocalError> {
        self.reap();
        self.catalog = manifests::load(&self.config_dir);
        let key = (namespace.to_owned(), name.to_owned());
        let replicas = match self.catalog.accepted().deployment(namespace, name) {
            Some(deployment) => plan::replica_count(deployment)?,
            None => {
                return Err(LocalError::NoDeployment {
                    namespace: key.0,
                    name: key.1,
                })
            }
        };
        let index = rollout::lowest_free_index(
            self.pods
                .iter()
                .chain(self.terminating.iter().map(|(pod, _)| pod))
                .map(|pod| &pod.plan)
                .filter(|plan| plan.namespace == namespace && plan.deployment == name),
        );
        let plan = self.replica_plan(&key, index)?;
        self.start_plan(plan)?;
        self.desired.add_replica(key, replicas);
        self.write_index()?;
        self.wait_for_sidecars()?;
        Ok(&self.pods[self.pods.len() - 1].info)
    }

    /// Re-reads the manifests and brings the cluster up to date, as a cluster's controllers
    /// and DNS would: pods started, stopped or replaced for Deployments added, removed,
    /// scaled or with a new template (see [`rollout`] and [`Desired`]); records, kube-proxy
    /// rules and hosts files for Services added, removed or re-targeted. Returns what changed
    /// and what failed (the rest is done regardless).
    pub fn resync(&mut self) -> Rollout {
        let mut report = Rollout::default();
        self.catalog = manifests::load(&self.config_dir);
        self.roll_out(&mut report);
        self.refresh(&mut report);
        if !(report.started.is_empty() && report.stopped.is_empty()) {
            let converged = self.write_index().and_then(|()| self.wait_for_sidecars());
            if let Err(e) = converged {
                report.failed.push(e);
            }
        }
        report
    }

    /// Brings the records, tokens and hosts files up to date with the pods and manifests,
    /// reporting what fails.
    fn refresh(&mut self, report: &mut Rollout) {
        if let Err(e) = self.write_records() {
            report.failed.push(e);
        }
        for pod in &mut self.pods {
            if let Err(e) = pod.refresh_token(&self.tokens, &self.roots_pem) {
                report.failed.push(e.into());
            }
        }
    }

    /// Every pod's hosts file, from the current Services and records; the first failure is
    /// returned after every pod was tried.
    fn write_hosts(&self) -> Result<(), LocalError> {
        let services = self.names();
        let mut failed = None;
        for pod in &self.pods {
            let text = hosts::render(
                &pod.info.namespace,
                &pod.info.name,
                pod.info.ip.into(),
                self.control_plane.ip().into(),
                &services,
            );
            if let Err(e) = pod.write_hosts(&text) {
                let path = Path::new(&pod.info.name);
                failed.get_or_insert(io_error("writing the hosts file of", path)(e));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Replica `index` of Deployment `key` as the manifests describe it now.
    fn replica_plan(&self, key: &DeploymentKey, index: usize) -> Result<PodPlan, LocalError> {
        let (namespace, name) = key;
        let deployment = self
            .catalog
            .accepted()
            .deployment(namespace, name)
            .ok_or_else(|| LocalError::NoDeployment {
                namespace: namespace.clone(),
                name: name.clone(),
            })?;
        Ok(plan::replica(deployment, index)?)
    }

    /// `plan`'s pod as admission leaves it: sent to each webhook the configuration in force
    /// selects (through the control plane, over HTTPS), each answer applied in turn. A webhook
    /// that cannot be called is skipped when its `failurePolicy` is `Ignore`.
    fn admit(&self, plan: &PodPlan) -> Result<Pod, AdmissionError> {
        let no_labels = BTreeMap::new();
        let namespace_labels = self
            .catalog
            .accepted()
            .namespace(&plan.namespace)
            .and_then(|ns| ns.metadata.labels.as_ref())
            .unwrap_or(&no_labels);
        let webhooks = Webhooks::of(&self.catalog);
        let mut pod = plan.pod.clone();
        for (i, webhook) in webhooks
            .for_pod(namespace_labels, &pod)
            .into_iter()
            .enumerate()
        {
            let uid = format!(
                "{}-{i}",
                plan.pod.metadata.uid.as_deref().unwrap_or_default()
            );
            let answer = admission::path_of(webhook).and_then(|path| {
                self.control_plane
                    .call_webhook(&path, &admission::review(&pod, &uid))
                    .map_err(|e| AdmissionError::Failed {
                        webhook: webhook.name.clone(),
                        message: e.to_string(),
                    })
            });
            let patched =
                answer.and_then(|body| admission::admitted(&pod, &webhook.name, &uid, &body));
            pod = match patched {
                Ok(patched) => patched,
                Err(e @ AdmissionError::Failed { .. })
                    if webhook.failure_policy.as_deref() == Some("Ignore") =>
                {
                    tracing::warn!(error = %e, "failurePolicy Ignore: admitted without it");
                    pod
                }
                Err(e) => return Err(e),
            };
        }
        Ok(pod)
    }

    /// Admits `plan`'s pod and gives it a namespace, an address, a hosts file and a directory.
    fn create_pod(&mut self, plan: PodPlan) -> Result<(), LocalError> {
        let key = (plan.namespace.clone(), plan.deployment.clone());
        let id = format!("{}/{}", plan.namespace, plan.name);
        let admitted = match self.admit(&plan) {
            Ok(admitted) => admitted,
            Err(source) => {
                self.refused.insert(key, source.clone());
                return Err(LocalError::Admission { pod: id, source });
            }
        };
        self.refused.remove(&key);
        let run = PodRun::of(&admitted).map_err(|(field, message)| LocalError::Unrunnable {
            pod: id,
            field,
            message,
        })?;
        // `_` appears in neither a namespace nor a pod name, so no two pods share a netns
        // name (`a-b`/`c-0` and `a`/`b-c-0` would with a `-`).
        let netns = format!("{}-{}_{}", self.prefix, plan.namespace, plan.name);
        let network = self.network.add_pod(&netns)?;
        let text = hosts::render(
            &plan.namespace,
            &plan.name,
            network.ip.into(),
            self.control_plane.ip().into(),
            &self.names(),
        );
        let etc = EtcNetns::create(&netns, &text)
            .map_err(io_error("writing the hosts file of", Path::new(&netns)))?;
        let dir = self
            .state
            .pod_dir(&plan.namespace, &plan.name)
            .map_err(io_error("creating the directory of", Path::new(&plan.name)))?;
        self.pods
            .push(RunningPod::new(plan, admitted, run, network, etc, dir));
        Ok(())
    }

    fn start_pod(&mut self, index: usize) -> Result<(), LocalError> {
        let cx = StartContext {
            bins: &self.bins,
            service_nat: &self.service_nat,
            tokens: &self.tokens,
            roots_pem: &self.roots_pem,
            timeout: self.timeout,
        };
        Ok(self.pods[index].start(&cx)?)
    }

    /// Waits until every sidecar runs the config the control plane computes from the records
    /// as they are now: after a start, so that every ready endpoint is known in every pod;
    /// before a stop, so that no pod still sends to the one going.
    fn wait_for_sidecars(&mut self) -> Result<(), LocalError> {
        let catalog = read_directories(self.control_plane.config_dirs());
        // One deadline for all of them, not one per sidecar.
        let deadline = std::time::Instant::now() + self.timeout;
        let mut rejected = None;
        for pod in &mut self.pods {
            let node = Node {
                pod_name: pod.info.name.clone(),
                namespace: pod.info.namespace.clone(),
                ip: pod.info.ip.to_string(),
            };
            let expected = catalog.snapshot_for(&node);
            // A sidecar that rejects what it is sent would be waited for in vain.
            let (id, version) = (pod.info.id(), catalog.version_for(&node));
            let control_plane = &self.control_plane;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match pod.wait_for_snapshot(&expected, left, || control_plane.rejection(&id, &version))
            {
                // The others are still waited for: those that accept it must have it before
                // a pod they could send to stops.
                Err(e @ PodError::Rejected { .. }) => {
                    rejected.get_or_insert(e);
                }
                other => other?,
            }
        }
        rejected.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Every Service name pods resolve, and its addresses.
    fn names(&self) -> Vec<hosts::ServiceAddress> {
        let mut names = manifests::service_addresses(&self.catalog);
        names.extend(self.headless.iter().cloned());
        names
    }

    /// Records a Pod per pod and the EndpointSlices of every Service, and brings kube-proxy's
    /// rules in pods without a sidecar and every pod's hosts file up to date.
    fn write_records(&mut self) -> Result<(), LocalError> {
        let pods: Vec<Pod> = self
            .pods
            .iter()
            .map(|pod| records::pod(&pod.admitted, pod.info.ip.into(), pod.is_ready()))
            .collect();
        let slices: Vec<((String, String), Vec<EndpointSlice>)> = self
            .catalog
            .accepted()
            .services()
            .map(|service| {
                let key = (
                    namespace_of(&service.metadata).to_owned(),
                    service.metadata.name.clone().unwrap_or_default(),
                );
                (key, records::endpoint_slices(service, &pods))
            })
            .filter(|(_, slices)| !slices.is_empty())
            .collect();
        self.records.sync(&pods, &slices)?;

        let all_slices: Vec<EndpointSlice> = slices.into_iter().flat_map(|(_, s)| s).collect();
        self.service_nat = kube_proxy::nat_table(&kube_proxy::routes(&self.catalog, &all_slices));
        self.headless = hosts::headless(&self.catalog, &all_slices);
        for pod in &mut self.pods {
            pod.update_service_routes(&self.service_nat)?;
        }
        self.write_hosts()
    }
}

impl Drop for Cluster {
    /// The pod list goes first, so `remoractl local exec` cannot find pods being torn down.
    fn drop(&mut self) {
        let _ = fs::remove_file(self.state.root().join(POD_INDEX));
    }
}
