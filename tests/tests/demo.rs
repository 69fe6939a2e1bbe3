//! The README's demo command must keep working: run it non-interactively (it brings up
//! `examples/` with the control plane) and check it showed the caller's identity as httpbin saw
//! it.

use std::process::Command;

#[test]
fn demo_prints_the_identity_httpbin_saw() {
    remora_e2e::require_root().expect("e2e tests need root");
    let bins = remora_e2e::Binaries::get().expect("workspace binaries");
    let out = Command::new(env!("CARGO_BIN_EXE_remora-demo"))
        .env("REMORA_BIN_DIR", &bins.dir)
        .output()
        .expect("running remora-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("HTTP 200"), "{stdout}");
    assert!(
        stdout.contains(
            "httpbin's caller, proven by mTLS: spiffe://cluster.local/ns/client/sa/sleep"
        ),
        "{stdout}"
    );
}
