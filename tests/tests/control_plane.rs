//! The mesh with its control plane, as the README demo runs it: `examples/` brought up by the
//! local cluster launcher, sidecars bootstrapped from their environment, certificates from the
//! mesh CA (token-authenticated), config pushed over the discovery stream.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    os::unix::fs::PermissionsExt,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use remora_api::proto::config::Snapshot;
use remora_e2e::{
    counter,
    example_cluster::{
        curl, edit_file, ensure_accepted, local_get, sidecar_metrics, wait_for, ExampleCluster,
        SteadyLoad, POD_WITHOUT_SIDECAR,
    },
};
use remora_local::{as_proxy_user, LocalPod};

/// How long a config change may take to reach a sidecar.
const PROPAGATION: Duration = Duration::from_secs(15);
const HTTPBIN: &str = "http://httpbin.demo:8000/get";
const HTTPBIN_HOSTNAME: &str = "httpbin.demo.svc.cluster.local";

/// The snapshot `pod`'s sidecar runs.
fn snapshot(pod: &LocalPod) -> anyhow::Result<Snapshot> {
    Ok(pod.sidecar_snapshot()?)
}

/// The ports of Service `hostname` in `snapshot`, and the endpoint addresses of each.
fn service_ports(snapshot: &Snapshot, hostname: &str) -> Vec<(u32, Vec<String>)> {
    snapshot
        .services
        .iter()
        .filter(|service| service.hostname == hostname)
        .flat_map(|service| &service.ports)
        .map(|port| {
            let addresses = port.endpoints.iter().map(|e| e.address.clone()).collect();
            (port.port, addresses)
        })
        .collect()
}

/// The host's mounts, one line of `/proc/self/mountinfo` each.
fn host_mounts() -> anyhow::Result<BTreeSet<String>> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// A Service whose port cannot exist.
const BROKEN_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: demo}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 70000, targetPort: 8080}]
"#;

#[test]
fn service_name_reaches_httpbin_over_mtls_with_ca_issued_certificates() -> anyhow::Result<()> {
    let mounts_before = host_mounts()?;
    let mesh = ExampleCluster::up_with("cp-curl", |dir| {
        let path = dir.join("sleep.yaml");
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, text + POD_WITHOUT_SIDECAR)?;
        std::fs::write(dir.join("broken.yaml"), BROKEN_SERVICE)?;
        edit_file(
            &dir.join("mesh.yaml"),
            "  drainDuration: 5s\n",
            "  drainDuration: 5s\n  concurrency: 2\n",
        )
    })?;
    // The invalid object is rejected, named with its field; everything else is served.
    let rejections = mesh.cluster.rejections()?.context("no /debug/rejections")?;
    let field = |name: &str| rejections[0][name].as_str().unwrap_or_default().to_owned();
    ensure!(
        rejections.as_array().is_some_and(|r| r.len() == 1)
            && field("object").starts_with("Service demo/broken in ")
            && field("reason").starts_with("spec.ports[0].port: 70000 "),
        "{rejections}"
    );
    // The launcher reads the manifests as the control plane does, and says the same.
    let launcher: Vec<(&str, &str)> = mesh
        .cluster
        .rejected()
        .iter()
        .map(|r| (r.object.as_str(), r.reason.as_str()))
        .collect();
    ensure!(
        launcher == [(field("object").as_str(), field("reason").as_str())],
        "{launcher:?}"
    );
    let sleep = mesh.pod("sleep")?;
    let httpbin = mesh.pod("httpbin")?;
    // The mesh's `defaultConfig.concurrency` reached the sidecar as injection passes it.
    let dump: serde_json::Value = serde_json::from_str(&local_get(&sleep, 15000, "/config_dump")?)?;
    ensure!(
        dump["bootstrap"]["concurrency"] == 2,
        "{}",
        dump["bootstrap"]
    );

    let response = curl(&sleep, HTTPBIN)?;
    ensure!(response.status == 200, "{response:?}");
    let seen: serde_json::Value = serde_json::from_str(&response.body)?;
    let xfcc = seen["headers"]["X-Forwarded-Client-Cert"]
        .as_str()
        .with_context(|| format!("httpbin saw no XFCC: {seen}"))?;
    ensure!(
        xfcc == "By=spiffe://cluster.local/ns/demo/sa/httpbin;\
                 URI=spiffe://cluster.local/ns/client/sa/sleep",
        "{xfcc}"
    );

    // Neither sidecar was given a certificate: each made its key and had the CA sign it.
    for pod in [&sleep, &httpbin] {
        let certs: serde_json::Value = serde_json::from_str(&local_get(pod, 15000, "/certs")?)?;
        ensure!(certs["serial"].is_string(), "{}: /certs {certs}", pod.id());
        ensure!(!pod.dir.join("certs").exists(), "{}", pod.id());
    }
    let source = counter(
        &sidecar_metrics(&sleep)?,
        "istio_requests_total",
        &[r#"reporter="source""#, r#"response_code="200""#],
    );
    let destination = counter(
        &sidecar_metrics(&httpbin)?,
        "istio_requests_total",
        &[r#"reporter="destination""#, r#"response_code="200""#],
    );
    ensure!(
        source >= 1.0 && destination >= 1.0,
        "{source} {destination}"
    );

    // Every sidecar runs as uid 1337, yet none can read another pod's token: each pod's
    // secrets sit below a directory only root may enter, even where everything above it is
    // open (as in a user's --state-dir).
    std::fs::set_permissions(
        mesh.cluster.state_dir(),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let as_sidecar_uid = |argv: &[&OsStr]| -> anyhow::Result<std::process::Output> {
        let argv = as_proxy_user(argv);
        Ok(Command::new(&argv[0]).args(&argv[1..]).output()?)
    };
    let token = httpbin.token_path();
    ensure!(token.is_file(), "no token at {}", token.display());
    let pod_dir = as_sidecar_uid(&["ls".as_ref(), httpbin.dir.as_os_str()])?;
    ensure!(
        pod_dir.status.success(),
        "uid 1337 cannot even list {}",
        httpbin.dir.display()
    );
    let read = as_sidecar_uid(&["cat".as_ref(), token.as_os_str()])?;
    ensure!(
        !read.status.success() && read.stdout.is_empty(),
        "uid 1337 read httpbin's token from the host ({})",
        read.status
    );
    // Nor through httpbin's sidecar process, whose mount namespace has the token bound in.
    let pids = Command::new("ip")
        .args(["netns", "pids", &httpbin.netns])
        .output()?;
    let sidecar = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "remora-proxy")
        })
        .map(str::to_owned)
        .context("httpbin's sidecar process")?;
    // `/var/run` is a symlink to `/run`, and an absolute link below `/proc/<pid>/root`
    // resolves against the reader's root: name the real path.
    let through_proc = format!("/proc/{sidecar}/root/run/secrets/tokens/istio-token");
    let read = as_sidecar_uid(&["cat".as_ref(), through_proc.as_ref()])?;
    ensure!(
        !read.status.success() && read.stdout.is_empty(),
        "uid 1337 read httpbin's token through {through_proc}"
    );

    // The secrets were bound over /var/run/secrets in each sidecar's own mount namespace only:
    // the host gained no such mount (the namespaces' own mounts under /run/netns aside).
    let leaked: Vec<String> = host_mounts()?
        .difference(&mounts_before)
        .filter(|line| line.contains("/run/secrets") || line.contains("/secrets/istio-proxy"))
        .cloned()
        .collect();
    ensure!(
        leaked.is_empty(),
        "a pod's secrets mount leaked to the host:\n{}",
        leaked.join("\n")
    );

    // Opted out: no sidecar, no interception; its plaintext is accepted (PERMISSIVE).
    let plain = mesh.pod("plain")?;
    ensure!(!plain.sidecar && plain.sidecar_log().is_empty());
    let rules = plain.run(&["iptables-save", "-t", "nat"])?;
    ensure!(!String::from_utf8_lossy(&rules.stdout).contains("ISTIO"));
    let response = curl(&plain, HTTPBIN)?;
    ensure!(response.status == 200, "{response:?}");
    ensure!(
        !response.body.contains("X-Forwarded-Client-Cert"),
        "{}",
        response.body
    );
    Ok(())
}

#[test]
fn registry_only_refuses_destinations_outside_the_mesh() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("cp-registry", |dir| {
        edit_file(
            &dir.join("mesh.yaml"),
            "mode: ALLOW_ANY",
            "mode: REGISTRY_ONLY",
        )
    })?;
    let sleep = mesh.pod("sleep")?;
    let response = curl(&sleep, HTTPBIN)?;
    ensure!(response.status == 200, "{response:?}");
    // An address no Service or workload has: the sidecar answers for it (Istio's
    // BlackHoleCluster) without dialling anything.
    let outside = curl(&sleep, "http://198.18.255.254:8080/get")?;
    ensure!(
        outside.status == 502 && outside.body.contains("REGISTRY_ONLY"),
        "{outside:?}"
    );
    let metrics = sidecar_metrics(&sleep)?;
    let refused = [r#"reporter="source""#, r#"response_code="502""#];
    ensure!(
        counter(&metrics, "istio_requests_total", &refused) == 1.0,
        "{metrics}"
    );
    Ok(())
}

#[test]
fn new_endpoints_and_edited_services_reach_the_sidecars() -> anyhow::Result<()> {
    let mut mesh = ExampleCluster::up("cp-push")?;
    let sleep = mesh.pod("sleep")?;
    let first = format!("{}:8080", mesh.pod("httpbin")?.ip);
    ensure!(
        service_ports(&snapshot(&sleep)?, HTTPBIN_HOSTNAME) == [(8000, vec![first.clone()])],
        "{:?}",
        snapshot(&sleep)?
    );

    let started = Instant::now();
    let added = mesh.cluster.add_replica("demo", "httpbin")?.clone();
    let second = format!("{}:8080", added.ip);
    let both = |addresses: &[String]| {
        addresses.iter().collect::<BTreeSet<_>>() == BTreeSet::from([&first, &second])
    };
    // add_replica returns once every sidecar runs the config that lists the new replica.
    let ports = service_ports(&snapshot(&sleep)?, HTTPBIN_HOSTNAME);
    ensure!(
        matches!(ports.as_slice(), [(8000, addresses)] if both(addresses)),
        "{ports:?}"
    );
    println!(
        "new endpoint {second} in the sleep sidecar's snapshot {:?} after {} was created \
         (start, records, push)",
        started.elapsed(),
        added.id(),
    );

    mesh.edit("httpbin.yaml", "port: 8000", "port: 8001")?;
    let waited = wait_for("Service port 8001 in sleep's snapshot", PROPAGATION, || {
        let ports = service_ports(&snapshot(&sleep)?, HTTPBIN_HOSTNAME);
        Ok(matches!(ports.as_slice(), [(8001, addresses)] if both(addresses)))
    })?;
    println!("edited Service port reached the sleep sidecar in {waited:?}");
    let response = curl(&sleep, "http://httpbin.demo:8001/get")?;
    ensure!(response.status == 200, "{response:?}");
    Ok(())
}

#[test]
fn traffic_outlives_the_control_plane_and_pushes_resume_after_restart() -> anyhow::Result<()> {
    let mut mesh = ExampleCluster::up("cp-restart")?;
    let sleep = mesh.pod("sleep")?;
    ensure!(curl(&sleep, HTTPBIN)?.status == 200);

    mesh.cluster.stop_control_plane();
    // The sidecar says it is on its own.
    wait_for(
        "sleep's sidecar to report the control plane gone",
        PROPAGATION,
        || Ok(sidecar_metrics(&sleep)?.contains("remora_control_plane_connected 0")),
    )?;
    for i in 0..10 {
        let response = curl(&sleep, HTTPBIN)?;
        ensure!(
            response.status == 200,
            "request {i} without a control plane: {response:?}"
        );
    }

    let restarted = Instant::now();
    mesh.cluster.start_control_plane()?;
    let added = mesh.cluster.add_replica("demo", "httpbin")?.clone();
    let address = format!("{}:8080", added.ip);
    // add_replica returns only once every sidecar runs the config listing the new replica,
    // which needs the sleep sidecar to have resubscribed to the restarted control plane.
    let ports = service_ports(&snapshot(&sleep)?, HTTPBIN_HOSTNAME);
    ensure!(
        matches!(ports.as_slice(), [(8000, addresses)] if addresses.contains(&address)),
        "{ports:?}\nthe control plane's log:\n{}\nthe sleep sidecar's log:\n{}",
        mesh.cluster.control_plane_log(),
        sleep.sidecar_log()
    );
    println!(
        "after the restart, a new endpoint was in the sleep sidecar's snapshot {:?} after the \
         control plane was started",
        restarted.elapsed()
    );
    Ok(())
}

#[test]
fn certificates_rotate_under_load_without_failed_requests() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with("cp-rotate", |dir| {
        edit_file(
            &dir.join("httpbin.yaml"),
            "          runtimeValues:\n",
            "          proxyMetadata: {SECRET_TTL: 20s}\n          runtimeValues:\n",
        )
    })?;
    let sleep = mesh.pod("sleep")?;
    let httpbin = mesh.pod("httpbin")?;
    let serial = || -> anyhow::Result<String> {
        let certs: serde_json::Value =
            serde_json::from_str(&local_get(&httpbin, 15000, "/certs")?)?;
        certs["serial"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no serial in /certs: {certs}"))
    };

    // Steady load: about 10 requests a second, one at a time.
    let load = SteadyLoad::start(&sleep, HTTPBIN, Duration::from_millis(100));

    let start = Instant::now();
    let mut serials = vec![serial()?];
    while start.elapsed() < Duration::from_secs(60)
        && (serials.len() < 3 || start.elapsed() < Duration::from_secs(30))
    {
        thread::sleep(Duration::from_millis(500));
        let current = serial()?;
        if serials.last() != Some(&current) {
            println!(
                "{:?}: httpbin's sidecar now has certificate {current}",
                start.elapsed()
            );
            serials.push(current);
        }
    }
    let (sent, failed) = load.finish()?;
    println!(
        "{sent} requests, {} failed, {} certificates",
        failed.len(),
        serials.len()
    );
    ensure!(
        serials.len() >= 3,
        "the certificate changed {} times in {:?}",
        serials.len() - 1,
        start.elapsed()
    );
    ensure!(
        failed.is_empty(),
        "failed requests during rotation:\n{}",
        failed.join("\n")
    );
    Ok(())
}

#[test]
fn a_sidecar_that_rejects_a_snapshot_keeps_serving_the_previous_one() -> anyhow::Result<()> {
    let mut mesh = ExampleCluster::up("cp-nack")?;
    let sleep = mesh.pod("sleep")?;
    ensure!(curl(&sleep, HTTPBIN)?.status == 200);
    let before = snapshot(&sleep)?.version;

    // Moving the mesh to another trust domain cannot be applied to running sidecars (their
    // certificates and their peers' identities are in the old one): each one NACKs.
    mesh.edit(
        "mesh.yaml",
        "trustDomain: cluster.local",
        "trustDomain: example.org",
    )?;
    let rejected = |pod: &LocalPod| -> anyhow::Result<f64> {
        Ok(counter(
            &sidecar_metrics(pod)?,
            "remora_config_updates_total",
            &[r#"result="rejected""#],
        ))
    };
    let waited = wait_for("sleep's sidecar to NACK", PROPAGATION, || {
        Ok(rejected(&sleep)? >= 1.0)
    })?;
    println!("the trust-domain change was NACKed after {waited:?}");
    let metrics_url = format!("http://{}:15014/metrics", mesh.cluster.control_plane_ip());
    wait_for("the control plane to count the NACKs", PROPAGATION, || {
        let out = sleep.exec(&["curl", "-sS", "-m", "5", &metrics_url])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(counter(&text, "pilot_total_xds_rejects", &[]) >= 2.0)
    })?;
    ensure!(
        mesh.cluster.control_plane_log().contains("example.org"),
        "the control plane did not log why:\n{}",
        mesh.cluster.control_plane_log()
    );

    // Still the old snapshot, and traffic still flows under the old identities.
    ensure!(snapshot(&sleep)?.version == before);
    for _ in 0..5 {
        let response = curl(&sleep, HTTPBIN)?;
        ensure!(response.status == 200, "{response:?}");
        ensure!(
            response
                .body
                .contains("URI=spiffe://cluster.local/ns/client/sa/sleep"),
            "{}",
            response.body
        );
    }

    // The launcher does not wait in vain for sidecars that reject their config: a replica
    // added now starts, but the wait for every sidecar to know it fails at once, saying why.
    let started = Instant::now();
    let error = match mesh.cluster.add_replica("demo", "httpbin") {
        Ok(pod) => anyhow::bail!("{} was known everywhere despite the NACKs", pod.id()),
        Err(error) => format!("{error:#}"),
    };
    ensure!(
        error.contains("its sidecar rejected the current config") && error.contains("example.org"),
        "{error}"
    );
    println!(
        "add_replica reported the NACK after {:?}: {error}",
        started.elapsed()
    );

    // Back to the original: accepted again.
    mesh.edit(
        "mesh.yaml",
        "trustDomain: example.org",
        "trustDomain: cluster.local",
    )?;
    let accepted = |pod: &LocalPod| -> anyhow::Result<f64> {
        Ok(counter(
            &sidecar_metrics(pod)?,
            "remora_config_updates_total",
            &[r#"result="accepted""#],
        ))
    };
    let first = accepted(&sleep)?;
    wait_for(
        "sleep's sidecar to accept the restored config",
        PROPAGATION,
        || Ok(accepted(&sleep)? > first),
    )?;
    ensure!(rejected(&sleep)? >= 1.0);
    Ok(())
}

#[test]
fn a_sidecar_resource_scopes_what_a_workload_is_sent() -> anyhow::Result<()> {
    let mesh = ExampleCluster::up_with_dirs("cp-scope", &["traffic"], |_| Ok(()))?;
    ensure_accepted(&mesh)?;
    let shop = mesh.pod_in("shop", "sleep")?;
    let client = mesh.pod("sleep")?;
    let hosts = |pod: &LocalPod| -> anyhow::Result<BTreeSet<String>> {
        Ok(snapshot(pod)?
            .services
            .into_iter()
            .map(|s| s.hostname)
            .collect())
    };
    // examples/traffic/sidecar.yaml: shop sees shop (its ServiceEntry included), not demo;
    // the client, under no Sidecar, sees both.
    let seen = hosts(&shop)?;
    ensure!(
        seen.contains("reviews.shop.svc.cluster.local")
            && seen
                .iter()
                .all(|h| h.ends_with(".shop.svc.cluster.local") || h == "api.payments.example"),
        "{seen:?}"
    );
    let everything = hosts(&client)?;
    ensure!(
        everything.contains(HTTPBIN_HOSTNAME)
            && everything.contains("reviews.shop.svc.cluster.local"),
        "{everything:?}"
    );
    // Out of scope, under ALLOW_ANY: httpbin is reached around the mesh (no client
    // certificate, so no XFCC at httpbin).
    let around = curl(&shop, "http://httpbin.demo:8000/headers")?;
    ensure!(
        around.status == 200 && !around.body.contains("X-Forwarded-Client-Cert"),
        "{around:?}"
    );

    // demo added to the egress hosts: httpbin is sent to shop and called over mTLS.
    mesh.edit(
        "traffic/sidecar.yaml",
        r#"hosts: ["./*", "istio-system/*"]"#,
        r#"hosts: ["./*", "istio-system/*", "demo/*"]"#,
    )?;
    wait_for("httpbin in shop's config", PROPAGATION, || {
        Ok(hosts(&shop)?.contains(HTTPBIN_HOSTNAME))
    })?;
    let through = curl(&shop, "http://httpbin.demo:8000/headers")?;
    ensure!(
        through.status == 200 && through.body.contains("URI=spiffe://cluster.local/ns/shop/"),
        "{through:?}"
    );

    // The Sidecar's outboundTrafficPolicy: demo out of scope again, and nothing outside it
    // is dialled.
    mesh.edit(
        "traffic/sidecar.yaml",
        r#"hosts: ["./*", "istio-system/*", "demo/*"]"#,
        "hosts: [\"./*\", \"istio-system/*\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}",
    )?;
    wait_for("httpbin out of shop's config", PROPAGATION, || {
        Ok(!hosts(&shop)?.contains(HTTPBIN_HOSTNAME))
    })?;
    let refused = curl(&shop, "http://httpbin.demo:8000/get")?;
    ensure!(
        refused.status == 502 && refused.body.contains("REGISTRY_ONLY"),
        "{refused:?}"
    );
    let reviews = curl(&shop, "http://reviews.shop:9080/")?;
    ensure!(reviews.status == 200, "{reviews:?}");
    // The client's own view never changed.
    ensure!(hosts(&client)? == everything);
    Ok(())
}
