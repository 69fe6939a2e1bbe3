//! The sidecar's life: admin controls, and a graceful drain on SIGTERM that lets in-flight
//! requests finish before the process exits 0.

use std::{thread, time::Duration};

use nix::sys::signal::Signal;
use remora_e2e::{
    two_pods::{TwoPods, TwoPodsOptions, HTTPBIN_PORT},
    Pod,
};

fn curl_status(pod: &Pod, argv: &[&str]) -> anyhow::Result<String> {
    let mut full = vec![
        "curl",
        "-sS",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    full.extend(argv);
    Ok(String::from_utf8_lossy(&pod.exec(&full)?.stdout).into_owned())
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_zero() -> anyhow::Result<()> {
    let pods = TwoPods::start("drain", &TwoPodsOptions::default())?;
    let server = pods.server.ip.to_string();
    // Five requests that each take 2 s at the app, all in flight when both sidecars get SIGTERM.
    let in_flight = {
        let client = pods.client.clone();
        thread::spawn(move || {
            let urls: Vec<String> = (0..5)
                .map(|i| format!("http://{server}:{HTTPBIN_PORT}/delay/2?i={i}"))
                .collect();
            let mut argv = vec![
                "curl",
                "-sS",
                "-m",
                "15",
                "-Z",
                "--parallel-immediate",
                "-w",
                "%{http_code}\n",
            ];
            for url in &urls {
                argv.extend(["-o", "/dev/null", url.as_str()]);
            }
            client.run(&argv)
        })
    };
    thread::sleep(Duration::from_millis(700));
    pods.mesh.signal(&pods.server, "sidecar", Signal::SIGTERM)?;
    pods.mesh.signal(&pods.client, "sidecar", Signal::SIGTERM)?;
    thread::sleep(Duration::from_millis(200));
    // Draining sidecars tell kubelet they are not ready any more.
    assert_eq!(
        curl_status(&pods.server, &["http://127.0.0.1:15021/healthz/ready"])?,
        "503"
    );

    let out = in_flight
        .join()
        .map_err(|_| anyhow::anyhow!("curl thread panicked"))??;
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(codes.lines().collect::<Vec<_>>(), ["200"; 5], "{codes}");
    for pod in [&pods.server, &pods.client] {
        let status = pods
            .mesh
            .wait_exit(pod, "sidecar", Duration::from_secs(10))?
            .ok_or_else(|| anyhow::anyhow!("{} sidecar still running", pod.name))?;
        assert!(
            status.success(),
            "{} sidecar exited with {status}",
            pod.name
        );
        let log = pods.mesh.log(pod, "sidecar");
        assert!(log.contains("drained"), "{log}");
    }
    Ok(())
}

#[test]
fn admin_dumps_config_changes_log_level_and_drains() -> anyhow::Result<()> {
    let pods = TwoPods::start("admin", &TwoPodsOptions::default())?;
    let dump = pods
        .client
        .run(&["curl", "-sS", "http://127.0.0.1:15000/config_dump"])?;
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout)?;
    assert_eq!(dump["bootstrap"]["metadata"]["serviceAccount"], "sleep");
    // The snapshot in use (here the static one) is dumped as applied.
    let endpoint = &dump["snapshot"]["endpoints"][0];
    assert_eq!(
        endpoint["address"],
        format!("{}:{HTTPBIN_PORT}", pods.server.ip).as_str()
    );
    assert_eq!(
        endpoint["identity"],
        "spiffe://cluster.local/ns/default/sa/httpbin"
    );

    let admin = |path: &str| curl_status(&pods.client, &["-X", "POST", path]);
    assert_eq!(admin("http://127.0.0.1:15000/logging?level=debug")?, "200");
    assert_eq!(pods.curl(&pods.client, "/status/200", &[])?.status, 200);
    assert!(
        pods.mesh.log(&pods.client, "sidecar").contains("DEBUG"),
        "no debug logs after raising the level"
    );
    assert_eq!(
        admin("http://127.0.0.1:15000/logging?level=no=such=level")?,
        "400"
    );
    let stats = pods
        .client
        .run(&["curl", "-sS", "http://127.0.0.1:15000/stats/prometheus"])?;
    assert!(String::from_utf8_lossy(&stats.stdout).contains("istio_requests_total{"));
    // Admin listens on loopback only: not reachable from another pod.
    let remote = format!("http://{}:15000/config_dump", pods.client.ip);
    assert_ne!(curl_status(&pods.server, &[&remote])?, "200");

    assert_eq!(admin("http://127.0.0.1:15000/drain")?, "200");
    let status = pods
        .mesh
        .wait_exit(&pods.client, "sidecar", Duration::from_secs(10))?
        .ok_or_else(|| anyhow::anyhow!("sidecar still running after POST /drain"))?;
    assert!(status.success(), "sidecar exited with {status}");
    Ok(())
}
