//! The control plane as it runs in a cluster: `remora-injector serve --kubernetes`, a process
//! of its own, reading config, CA material and token reviews from a Kubernetes API (the tests'
//! fake API server, which serves the same manifests the users write).

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{ensure, Context};
use remora_e2e::{
    apiserver::{self, free_port},
    example_cluster::{curl, ensure_accepted, wait_for, ExampleCluster},
    Binaries, Process,
};
use remora_injector::token::TokenIssuer;
use serde_json::Value;

const TEAM_A_HTTPBIN: &str = "http://httpbin.team-a:8000";
const TEAM_A_CURL: &str = "spiffe://cluster.local/ns/team-a/sa/curl";
/// Envoy's body for a request AuthorizationPolicy denies.
const DENIED: &str = "RBAC: access denied";
const CHANGE: Duration = Duration::from_secs(20);

/// `GET path` on the fake API server, from the control plane's pod.
fn api_get(mesh: &ExampleCluster, path: &str) -> anyhow::Result<Value> {
    let url = format!("http://127.0.0.1:6443{path}");
    let netns = mesh.cluster.control_plane_netns();
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sSf", "-m", "5", &url])
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `PUT path` with `object` on the fake API server, from the control plane's pod.
fn api_put(mesh: &ExampleCluster, path: &str, object: &Value) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:6443{path}");
    let netns = mesh.cluster.control_plane_netns();
    let body = object.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "curl", "-sSf", "-m", "5", "-X", "PUT",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &url,
        ])
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "PUT {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `n` requests to `url` from `pod`, one answer line each.
fn answers(pod: &remora_local::LocalPod, url: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let script = format!("for i in $(seq {n}); do curl -s -m 5 {url}; echo; done");
    let out = pod.run(&["sh", "-c", &script])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

fn count(answers: &[String], pod: &str) -> usize {
    answers.iter().filter(|a| a.trim() == pod).count()
}

/// The mesh on the API: the demo, team-a/team-b, the canary, a restart, the root's repair and
/// a rejection's Event. Each kind of request the control plane made.
fn the_mesh_on_the_api() -> anyhow::Result<String> {
    let mut mesh = ExampleCluster::up_on_api_server("k8s", &["zero-trust", "traffic"], |dir| {
        // The canary only, from the traffic example.
        fs::remove_file(dir.join("traffic/external-api.yaml"))?;
        fs::remove_dir_all(dir.join("traffic/gateway-api"))?;
        Ok(())
    })?;
    ensure_accepted(&mesh)?;
    let log = mesh.cluster.control_plane_log();
    ensure!(
        log.contains("config rebuilt from the Kubernetes API"),
        "{log}"
    );

    // The demo: sleep's curl reaches httpbin through both sidecars, over mTLS.
    let sleep = mesh.pod_in("client", "sleep")?;
    let response = curl(&sleep, "http://httpbin.demo:8000/headers")?;
    ensure!(response.status == 200, "the demo's curl: {response:?}");

    // team-a's httpbin admits team-a's curl (proven by its certificate) and not team-b's.
    let (curl_a, curl_b) = (
        mesh.pod_in("team-a", "curl")?,
        mesh.pod_in("team-b", "curl")?,
    );
    let response = curl(&curl_a, &format!("{TEAM_A_HTTPBIN}/get"))?;
    ensure!(
        response.status == 200 && response.body.contains(&format!("URI={TEAM_A_CURL}")),
        "team-a's curl: {response:?}"
    );
    let response = curl(&curl_b, &format!("{TEAM_A_HTTPBIN}/get"))?;
    ensure!(
        response.status == 403 && response.body == DENIED,
        "team-b's curl: {response:?}"
    );

    // The canary: 90 % to v1, 10 % to v2.
    let shop = mesh.pod_in("shop", "sleep")?;
    let replies = answers(&shop, "http://reviews:9080/", 100)?;
    let (v1, v2) = (
        count(&replies, "reviews-v1-0"),
        count(&replies, "reviews-v2-0"),
    );
    ensure!(
        v1 + v2 == 100 && (1..=30).contains(&v2),
        "90/10 expected, got v1 {v1}, v2 {v2}: {replies:?}"
    );

    // A control-plane restart: sidecars keep serving meanwhile, and the new process reads the
    // same CA (the cacerts Secret) and follows the API from where it is.
    mesh.cluster.stop_control_plane();
    let response = curl(&curl_a, &format!("{TEAM_A_HTTPBIN}/get"))?;
    ensure!(
        response.status == 200,
        "without a control plane: {response:?}"
    );

    mesh.cluster.start_control_plane()?;
    mesh.edit("traffic/canary.yaml", "weight: 90", "weight: 0")?;
    mesh.edit("traffic/canary.yaml", "weight: 10", "weight: 100")?;
    wait_for("the canary at 0/100 after the restart", CHANGE, || {
        let replies = answers(&shop, "http://reviews:9080/", 10)?;
        Ok(count(&replies, "reviews-v2-0") == 10)
    })?;

    // The root is published in every namespace, as istiod publishes it.
    let root = api_get(
        &mesh,
        "/api/v1/namespaces/team-b/configmaps/istio-ca-root-cert",
    )?;
    let secret = api_get(&mesh, "/api/v1/namespaces/istio-system/secrets/cacerts")?;
    let encoded = secret["data"]["root-cert.pem"].as_str().unwrap_or_default();
    let plugged = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)?;
    ensure!(
        root["data"]["root-cert.pem"].as_str() == Some(&*String::from_utf8_lossy(&plugged)),
        "team-b's root ConfigMap: {root}"
    );

    // Someone edits a namespace's root: it is written back.
    let map = "/api/v1/namespaces/team-b/configmaps/istio-ca-root-cert";
    let mut edited = api_get(&mesh, map)?;
    edited["data"]["root-cert.pem"] = "tampered".into();
    api_put(&mesh, map, &edited)?;
    wait_for("team-b's root repaired", CHANGE, || {
        Ok(api_get(&mesh, map)?["data"] == root["data"])
    })?;

    // A broken policy is rejected, and the rejection is written on the object as an Event
    // and in its status; the objects taken say so in theirs (one of each Istio kind).
    mesh.write("istio-objects.yaml", ISTIO_OBJECTS)?;
    wait_for("the rejection's Event", CHANGE, || {
        let events = api_get(&mesh, "/apis/events.k8s.io/v1/namespaces/team-b/events")?;
        Ok(events["items"].as_array().into_iter().flatten().any(|e| {
            e["regarding"]["name"] == "broken"
                && e["reason"] == "Rejected"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("spec.action"))
        }))
    })?;
    // The object's Accepted condition, when it is about the object's current generation.
    let accepted = |path: &str| -> anyhow::Result<Option<Value>> {
        let object = api_get(&mesh, path)?;
        let conditions = object["status"]["conditions"].as_array().cloned();
        Ok(conditions.into_iter().flatten().find(|c| {
            c["type"] == "Accepted" && c["observedGeneration"] == object["metadata"]["generation"]
        }))
    };
    let broken = "/apis/security.istio.io/v1/namespaces/team-b/authorizationpolicies/broken";
    wait_for("the rejection in the object's status", CHANGE, || {
        Ok(accepted(broken)?.is_some_and(|c| {
            c["status"] == "False"
                && c["reason"] == "Invalid"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spec.action"))
        }))
    })?;
    let taken = [
        "/apis/security.istio.io/v1/namespaces/team-a/authorizationpolicies/httpbin-allow-curl",
        "/apis/security.istio.io/v1/namespaces/team-b/peerauthentications/default",
        "/apis/security.istio.io/v1/namespaces/team-b/requestauthentications/jwt",
        "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/reviews",
        "/apis/networking.istio.io/v1/namespaces/shop/destinationrules/reviews",
        "/apis/networking.istio.io/v1/namespaces/shop/sidecars/default",
        "/apis/networking.istio.io/v1/namespaces/team-b/serviceentries/api",
        "/apis/telemetry.istio.io/v1/namespaces/team-b/telemetries/logs",
    ];
    for path in taken {
        wait_for(&format!("{path} accepted in its status"), CHANGE, || {
            Ok(accepted(path)?.is_some_and(|c| c["status"] == "True"))
        })?;
    }
    Ok(mesh.cluster.api_audit())
}

/// A rejected AuthorizationPolicy, and the Istio kinds the examples run here lack.
const ISTIO_OBJECTS: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: team-b}
spec: {action: MAYBE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: team-b}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: team-b}
spec:
  selector: {matchLabels: {app: nobody}}
  jwtRules: [{issuer: https://issuer.example, jwks: '{\"keys\": []}'}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: team-b}
spec:
  hosts: [api.example.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs, namespace: team-b}
spec:
  accessLogging: [{disabled: true}]
";

/// A control-plane replica on loopback, its ports: (gRPC, HTTP, webhook).
fn replica(dir: &Path, name: &str, ports: (u16, u16, u16)) -> anyhow::Result<Process> {
    let injector = Binaries::get()?.dir.join("remora-injector");
    let mut cmd = Command::new(injector);
    cmd.args(["serve", "--kubernetes"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", ports.0)])
        .args(["--http-addr", &format!("127.0.0.1:{}", ports.1)])
        .args(["--webhook-addr", &format!("127.0.0.1:{}", ports.2)])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("POD_NAMESPACE", "istio-system")
        .env("POD_NAME", name);
    Ok(Process::spawn(name, cmd, &dir.join(format!("{name}.log")))?)
}

fn wait_ready(process: &mut Process, http_port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{http_port}/ready");
    process.wait_until("/ready", Duration::from_secs(30), || {
        run_curl(&["-sf", "-m", "2", &url]).is_ok_and(|out| out.status.success())
    })?;
    Ok(())
}

fn run_curl(args: &[&str]) -> std::io::Result<Output> {
    Command::new("curl").args(args).output()
}

/// Whether the replica serving its webhook on `port` proves itself with a certificate of the
/// root in `root_pem`.
fn serves_under(root_pem: &Path, port: u16) -> anyhow::Result<bool> {
    let resolve = format!("istiod.istio-system.svc:{port}:127.0.0.1");
    let url = format!("https://istiod.istio-system.svc:{port}/");
    let cacert = root_pem.display().to_string();
    let out = run_curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-m",
        "5",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        &url,
    ])?;
    // Any HTTP answer means the TLS handshake verified; curl's 60 is a certificate problem.
    Ok(out.status.success())
}

/// Two replicas racing for the CA Secret and the webhook's caBundle, and a restart: one root.
/// Each kind of request they made.
fn replicas_racing() -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    fs::create_dir(&manifests)?;
    fs::copy(
        remora_e2e::example_cluster::examples_dir().join("mesh.yaml"),
        manifests.join("mesh.yaml"),
    )?;
    // The install's webhook configuration, whose caBundle both replicas set.
    fs::copy(
        install_dir().join("sidecar-injector.yaml"),
        manifests.join("sidecar-injector.yaml"),
    )?;
    TokenIssuer::load_or_generate(dir.path())?;
    let audit = dir.path().join("audit.txt");
    let api = apiserver::spawn(
        dir.path(),
        &manifests,
        &TokenIssuer::public_key_path(dir.path()),
        Some(&audit),
    )?;
    let api_port = api.port;

    // Two replicas start together: neither finds a root, both make one, one Secret wins.
    let ports = |_: u8| -> anyhow::Result<(u16, u16, u16)> {
        Ok((free_port()?, free_port()?, free_port()?))
    };
    let (first_ports, second_ports) = (ports(1)?, ports(2)?);
    let mut first = replica(dir.path(), "istiod-1", first_ports)?;
    let mut second = replica(dir.path(), "istiod-2", second_ports)?;
    wait_ready(&mut first, first_ports.1)?;
    wait_ready(&mut second, second_ports.1)?;
    let secret_url = format!(
        "http://127.0.0.1:{api_port}/api/v1/namespaces/istio-system/secrets/istio-ca-secret"
    );
    let secret: Value = serde_json::from_slice(&run_curl(&["-sf", &secret_url])?.stdout)?;
    let encoded = secret["data"]["ca-cert.pem"]
        .as_str()
        .context("ca-cert.pem")?;
    let root = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)?;
    let root_pem = dir.path().join("root.pem");
    fs::write(&root_pem, &root)?;
    let created = [&first, &second]
        .iter()
        .filter(|replica| replica.log().contains("created a new mesh root"))
        .count();
    ensure!(
        created == 1,
        "one replica creates the root:\n{}\n{}",
        first.log(),
        second.log()
    );
    ensure!(
        serves_under(&root_pem, first_ports.2)?,
        "istiod-1 signs with another root"
    );
    ensure!(
        serves_under(&root_pem, second_ports.2)?,
        "istiod-2 signs with another root"
    );
    let webhook_url = format!(
        "http://127.0.0.1:{api_port}/apis/admissionregistration.k8s.io/v1/\
         mutatingwebhookconfigurations/istio-sidecar-injector"
    );
    let bundle = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &root);
    wait_for("the webhook trusting the root", CHANGE, || {
        let config: Value = serde_json::from_slice(&run_curl(&["-sf", &webhook_url])?.stdout)?;
        let webhooks = config["webhooks"].as_array().cloned().unwrap_or_default();
        Ok(!webhooks.is_empty()
            && webhooks
                .iter()
                .all(|w| w["clientConfig"]["caBundle"] == bundle.as_str()))
    })?;

    // A replica restarted reads the same root back.
    first.stop();
    let mut third = replica(dir.path(), "istiod-3", first_ports)?;
    wait_ready(&mut third, first_ports.1)?;
    ensure!(
        !third.log().contains("created a new mesh root"),
        "{}",
        third.log()
    );
    ensure!(
        serves_under(&root_pem, first_ports.2)?,
        "the restarted replica signs with another root"
    );
    Ok(fs::read_to_string(&audit).unwrap_or_default())
}

fn install_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every `VERB group/resource` the install's ClusterRole and Roles grant.
fn granted() -> anyhow::Result<BTreeSet<String>> {
    let text = fs::read_to_string(install_dir().join("rbac.yaml"))?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    let mut granted = BTreeSet::new();
    let roles = documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role");
    for rule in roles.flat_map(|role| role["rules"].as_array().into_iter().flatten()) {
        let list = |field: &str| -> Vec<String> {
            let values = rule[field].as_array().into_iter().flatten();
            values
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    granted.insert(format!("{verb} {group}/{resource}"));
                }
            }
        }
    }
    Ok(granted)
}

#[test]
fn the_control_plane_runs_on_the_kubernetes_api() -> anyhow::Result<()> {
    remora_e2e::require_root()?;
    let mut used: BTreeSet<String> = replicas_racing()?.lines().map(str::to_owned).collect();
    used.extend(the_mesh_on_the_api()?.lines().map(str::to_owned));
    // The install grants exactly what the control plane was seen doing.
    let granted = granted()?;
    ensure!(
        used == granted,
        "used but not granted: {:?}\ngranted but never used: {:?}",
        used.difference(&granted).collect::<Vec<_>>(),
        granted.difference(&used).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn the_install_is_valid_kubernetes() -> anyhow::Result<()> {
    let kustomization = fs::read_to_string(install_dir().join("kustomization.yaml"))?;
    let mut files = Vec::new();
    for entry in fs::read_dir(install_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            ensure!(
                kustomization.contains(&format!("- {name}")),
                "kustomization.yaml leaves out {name}"
            );
            files.push(path);
        }
    }
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .args(&files)
        .output()
        .context("running kubernetes-validate (scripts/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
