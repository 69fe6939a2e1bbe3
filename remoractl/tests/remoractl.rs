//! `remoractl ca`: a root, then workload certificates under it, in Istio's file layout.

use std::{path::Path, process::Command};

use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};

fn remoractl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remoractl"))
        .args(args)
        .output()
        .expect("run remoractl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn ca_init_then_issue_writes_a_verifiable_workload_identity() {
    let dir = std::env::temp_dir().join(format!("remoractl-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    let out = dir.join("web");
    let ca_arg = ca.to_string_lossy().into_owned();
    let out_arg = out.to_string_lossy().into_owned();

    let (ok, text) = remoractl(&["ca", "init", &ca_arg]);
    assert!(ok, "{text}");
    let (ok, text) = remoractl(&["ca", "init", &ca_arg]);
    assert!(!ok && text.contains("already exists"), "{text}");

    let (ok, text) = remoractl(&[
        "ca", "issue", "--ca", &ca_arg, "--ns", "shop", "--sa", "web", "--out", &out_arg,
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{text}"
    );

    let chain = read(&out.join("cert-chain.pem"));
    assert!(read(&out.join("key.pem")).contains("PRIVATE KEY"));
    assert_eq!(
        read(&out.join("root-cert.pem")),
        read(&ca.join("root-cert.pem"))
    );
    let (_, leaf) = parse_x509_pem(chain.as_bytes()).expect("leaf pem");
    let leaf = leaf.parse_x509().expect("leaf");
    let root_pem = read(&ca.join("root-cert.pem"));
    let (_, root) = parse_x509_pem(root_pem.as_bytes()).expect("root pem");
    let root = root.parse_x509().expect("root");
    leaf.verify_signature(Some(root.public_key()))
        .expect("leaf signed by the root");
    let san = leaf
        .subject_alternative_name()
        .expect("san")
        .expect("san present");
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/web"]);

    let (ok, text) = remoractl(&[
        "ca", "issue", "--ca", &ca_arg, "--ns", "Shop!", "--sa", "web", "--out", &out_arg,
    ]);
    assert!(!ok && text.contains("--ns/--sa/--trust-domain"), "{text}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
