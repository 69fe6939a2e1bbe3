//! A sidecar given a bad bootstrap must refuse to start and say which field is wrong.

use std::{path::PathBuf, process::Command};

fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-proxy-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write bootstrap");
    path
}

fn start(config: &PathBuf) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remora-proxy"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "off")
        .output()
        .expect("run remora-proxy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BOOTSTRAP: &str = r#"
metadata: {podName: web-0, namespace: default, serviceAccount: web}
identity:
  files: {certChain: /nonexistent/cert-chain.pem, key: /nonexistent/key.pem, roots: /nonexistent/root-cert.pem}
staticSnapshot:
  version: "1"
  endpoints:
    - address: 198.18.0.10:8000
      identity: spiffe://cluster.local/ns/default/sa/httpbin
"#;

#[test]
fn bad_fields_are_named_and_the_proxy_does_not_start() {
    let cases = [
        (
            "port.yaml",
            BOOTSTRAP.replace("198.18.0.10:8000", "198.18.0.10:80000"),
            "staticSnapshot.endpoints[0].address: \"198.18.0.10:80000\" is not an ip:port address",
        ),
        (
            "identity.yaml",
            BOOTSTRAP.replace("spiffe://cluster.local/ns/default/sa/httpbin", "httpbin"),
            "staticSnapshot.endpoints[0].identity",
        ),
        (
            "unknown.yaml",
            BOOTSTRAP.replace("podName:", "pod:"),
            "metadata.pod: unknown field `pod`",
        ),
        (
            "files.yaml",
            BOOTSTRAP.to_owned(),
            "reading /nonexistent/cert-chain.pem",
        ),
    ];
    for (name, text, expected) in cases {
        let (ok, stderr) = start(&scratch_file(name, &text));
        assert!(!ok, "{name}: the proxy started");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

#[test]
fn without_a_bootstrap_file_the_environment_must_name_the_pod() {
    let out = Command::new(env!("CARGO_BIN_EXE_remora-proxy"))
        .env_clear()
        .env("POD_NAMESPACE", "default")
        .env("SECRET_TTL", "soon")
        .env("RUST_LOG", "off")
        .output()
        .expect("run remora-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the proxy started");
    for expected in [
        "invalid sidecar environment",
        "POD_NAME: must be set",
        "SERVICE_ACCOUNT: must be set",
        "SECRET_TTL: \"soon\"",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing: {stderr}");
    }
}
