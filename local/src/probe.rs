//! What a kubelet's probes would ask of a pod, asked from inside its network namespace: whether
//! its sidecar says it is ready, and whether an app listens on its port. Bring-up waits on
//! these before sending a pod traffic, and so do the tests' hand-wired pods.

use std::process::Stdio;

use super::netns::exec_in;

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
