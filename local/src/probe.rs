//! What a kubelet's probes would ask of a pod, asked from inside its network namespace: a
//! container's readiness probe (HTTP to the pod's address, TCP, exec), whether its sidecar
//! says it is ready, whether an app listens on its port. Bring-up waits on these before
//! sending a pod traffic, and so do the tests' hand-wired pods.

use std::{net::Ipv4Addr, process::Stdio};

use super::{
    containers::{ProbeCheck, Readiness},
    netns::exec_in,
};

/// How long one probe may take (a kubelet's default `timeoutSeconds` is 1; injection sets 3).
const PROBE_TIMEOUT_SECONDS: &str = "2";

/// Whether a container of the pod in `netns` at `ip` is ready as `readiness` says.
pub fn ready(netns: &str, ip: Ipv4Addr, readiness: &Readiness) -> bool {
    match readiness {
        Readiness::Listening(ports) => ports.iter().all(|port| listening(netns, *port)),
        Readiness::Probe(ProbeCheck::Tcp(port)) => listening(netns, *port),
        Readiness::Probe(ProbeCheck::Exec(argv)) => exec_in(netns, argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
        Readiness::Probe(ProbeCheck::Http {
            port,
            path,
            https,
            headers,
        }) => {
            let scheme = if *https { "https" } else { "http" };
            let mut argv = vec![
                "curl".to_owned(),
                "-s".to_owned(),
                // A kubelet does not check the certificate of an HTTPS probe.
                "-k".to_owned(),
                "-m".to_owned(),
                PROBE_TIMEOUT_SECONDS.to_owned(),
                "-o".to_owned(),
                "/dev/null".to_owned(),
                "-w".to_owned(),
                "%{http_code}".to_owned(),
            ];
            for (name, value) in headers {
                argv.extend(["-H".to_owned(), format!("{name}: {value}")]);
            }
            argv.push(format!("{scheme}://{ip}:{port}{path}"));
            exec_in(netns, &argv)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|out| {
                    // As a kubelet counts it: any status from 200 to 399.
                    String::from_utf8_lossy(&out.stdout)
                        .parse::<u16>()
                        .is_ok_and(|status| (200..400).contains(&status))
                })
        }
    }
}

/// The sidecar's readiness endpoint (Istio's, on its status port).
const SIDECAR_READY_URL: &str = "http://127.0.0.1:15021/healthz/ready";

/// Whether the sidecar in `netns` answers 200 on its readiness endpoint (within 2 s).
pub fn sidecar_ready(netns: &str) -> bool {
    let argv = [
        "curl",
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        SIDECAR_READY_URL,
    ];
    exec_in(netns, &argv)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.stdout == b"200")
}

/// Whether something in `netns` listens on TCP `port`.
pub fn listening(netns: &str, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    exec_in(netns, &["ss", "-Hltn", &filter])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| !out.stdout.is_empty())
}
