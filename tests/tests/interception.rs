//! Pods are intercepted exactly as Istio's istio-iptables would do it: compared the way the
//! kernel sees it, against Istio's rule set loaded into a scratch namespace.

use std::path::Path;

use remora_e2e::{Mesh, Netns, Pod};

/// Comparable text of a nat table: no comments, no packet counters.
fn nat_view(save: &[u8]) -> String {
    String::from_utf8_lossy(save)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.split_once(" [") {
            Some((chain, _counters)) if line.starts_with(':') => chain.to_owned(),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads `fixture` with `<tool>-restore` into a scratch namespace and checks `pod`'s
/// `<tool>-save -t nat` matches it.
fn assert_matches_fixture(
    pod: &Pod,
    scratch: &str,
    tool: &str,
    fixture: &str,
) -> anyhow::Result<()> {
    let scratch = Netns::create(&format!("rmr-{scratch}-{}-scratch", std::process::id()))?;
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../init/tests/fixtures")
        .join(fixture);
    let status = scratch
        .command(&[&format!("{tool}-restore")])
        .stdin(std::fs::File::open(&rules)?)
        .status()?;
    assert!(status.success(), "loading {}", rules.display());
    let save = format!("{tool}-save");
    let expected = nat_view(&scratch.run(&[&save, "-t", "nat"])?.stdout);
    let actual = nat_view(&pod.run(&[&save, "-t", "nat"])?.stdout);
    assert!(expected.contains("ISTIO_OUTPUT"), "{expected}");
    assert_eq!(actual, expected);
    Ok(())
}

#[test]
fn pod_rules_match_istio_rule_set() -> anyhow::Result<()> {
    let mesh = Mesh::new("rules")?;
    let pod = mesh.add_pod("app", "default", "app")?;
    assert_matches_fixture(&pod, "rules", "iptables", "istio-default.rules")?;
    // An IPv4-only pod leaves ip6tables alone.
    let v6 = pod.run(&["ip6tables-save", "-t", "nat"])?;
    assert!(!String::from_utf8_lossy(&v6.stdout).contains("ISTIO"));
    Ok(())
}

#[test]
fn dual_stack_pod_rules_match_istio_rule_sets() -> anyhow::Result<()> {
    let mesh = Mesh::new_dual_stack("rules6")?;
    let pod = mesh.add_pod("app", "default", "app")?;
    assert_matches_fixture(&pod, "rules6v4", "iptables", "istio-default.rules")?;
    assert_matches_fixture(&pod, "rules6v6", "ip6tables", "istio-default-v6.rules")?;
    let lo = pod.run(&["ip", "-6", "addr", "show", "dev", "lo"])?;
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("::6/128"),
        "the IPv6 passthrough source is not on lo"
    );
    Ok(())
}
