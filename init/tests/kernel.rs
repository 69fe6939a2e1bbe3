//! Kernel-level tests of the `remora-init` binary.
//!
//! The unit tests check the text we generate; these check what the kernel
//! ends up with, because that is what decides how a pod behaves: the
//! binary's result is compared with Istio's rule set (the fixture) as
//! `iptables-save` reports both, which reorders options and adds `-m tcp`.
//! Each test works in its own scratch network namespace, removed on drop
//! even if the test panics. They need root and fail (never skip) without it.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_remora-init");
const FIXTURE: &str = include_str!("fixtures/istio-default.rules");

use remora_init::flags::INJECTOR_DEFAULT_ARGS as DEFAULT_ARGS;

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if euid != Some(0) {
        panic!("these tests need root (network namespaces + iptables); effective uid is {euid:?}");
    }
}

/// A scratch network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        require_root();
        let name = format!(
            "rmr-init-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run `ip netns add`");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            text(&out.stderr)
        );
        Self { name }
    }

    /// Runs `program args` inside the namespace, feeding it `stdin`.
    fn run(&self, program: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn `ip netns exec`");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("wait for `ip netns exec`")
    }

    /// Runs the remora-init binary in the namespace.
    fn remora_init(&self, args: &[&str]) -> Output {
        self.run(BIN, args, "")
    }

    /// Like [`Netns::remora_init`], asserting success.
    fn remora_init_ok(&self, args: &[&str]) -> Output {
        let out = self.remora_init(args);
        assert!(
            out.status.success(),
            "remora-init {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        out
    }

    fn restore(&self, input: &str) {
        let out = self.run("iptables-restore", &[], input);
        assert!(
            out.status.success(),
            "iptables-restore: {}",
            text(&out.stderr)
        );
    }

    fn iptables(&self, args: &[&str]) {
        let out = self.run("iptables", args, "");
        assert!(
            out.status.success(),
            "iptables {args:?}: {}",
            text(&out.stderr)
        );
    }

    /// The nat table as the kernel reports it, normalised.
    fn nat_view(&self) -> String {
        let out = self.run("iptables-save", &["-t", "nat"], "");
        assert!(out.status.success(), "iptables-save: {}", text(&out.stderr));
        normalise(&text(&out.stdout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Drops `#` comments and `[packets:bytes]` counters from iptables-save output.
fn normalise(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') && l.ends_with(']') => &l[..i],
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The default arguments with some flag values replaced.
fn default_args_with(overrides: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<String> = DEFAULT_ARGS.iter().map(|s| s.to_string()).collect();
    for (flag, value) in overrides {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn installed_rules_match_istio_fixture_in_the_kernel() {
    let istio = Netns::new();
    istio.restore(FIXTURE);
    let ours = Netns::new();
    ours.remora_init_ok(DEFAULT_ARGS);

    let want = istio.nat_view();
    assert!(
        want.contains(":ISTIO_OUTPUT -"),
        "fixture did not load: {want}"
    );
    assert_eq!(ours.nat_view(), want);
}

#[test]
fn installing_twice_leaves_one_copy() {
    let ns = Netns::new();
    ns.remora_init_ok(DEFAULT_ARGS);
    let once = ns.nat_view();
    ns.remora_init_ok(DEFAULT_ARGS);
    assert_eq!(ns.nat_view(), once);
    ns.remora_init_ok(DEFAULT_ARGS);
    assert_eq!(ns.nat_view(), once);
    assert_eq!(
        once.matches("-A OUTPUT -j ISTIO_OUTPUT").count(),
        1,
        "{once}"
    );
    assert_eq!(
        once.matches("-A PREROUTING -p tcp -j ISTIO_INBOUND")
            .count(),
        1,
        "{once}"
    );
}

#[test]
fn reinstall_with_other_flags_replaces_the_rules() {
    let ns = Netns::new();
    ns.remora_init_ok(&as_strs(&default_args_with(&[
        ("-p", "16001"),
        ("-c", "eth9"),
    ])));
    ns.remora_init_ok(DEFAULT_ARGS);
    let reference = Netns::new();
    reference.restore(FIXTURE);
    // The -c RETURNs of the first install are not ours to guess at on a
    // reinstall without -c, so they stay; everything else is the fixture.
    let view = ns.nat_view();
    let without_iface: String = view
        .lines()
        .filter(|l| !l.contains("eth9"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(without_iface, reference.nat_view());
}

#[test]
fn cleanup_returns_to_a_fresh_table_and_keeps_foreign_rules() {
    let ns = Netns::new();
    let fresh = ns.nat_view();
    ns.remora_init_ok(DEFAULT_ARGS);
    assert_ne!(ns.nat_view(), fresh);
    ns.remora_init_ok(&["cleanup"]);
    assert_eq!(ns.nat_view(), fresh);
    // A second cleanup has nothing to do and succeeds.
    ns.remora_init_ok(&["cleanup"]);
    assert_eq!(ns.nat_view(), fresh);

    // Rules that are not ours survive an install + cleanup untouched.
    ns.iptables(&["-t", "nat", "-N", "OTHER"]);
    ns.iptables(&["-t", "nat", "-A", "OTHER", "-j", "RETURN"]);
    ns.iptables(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "10.9.9.9/32",
        "-j",
        "OTHER",
    ]);
    ns.iptables(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        "eth7",
        "-j",
        "RETURN",
    ]);
    let with_foreign = ns.nat_view();
    ns.remora_init_ok(DEFAULT_ARGS);
    ns.remora_init_ok(&["cleanup"]);
    assert_eq!(ns.nat_view(), with_foreign);
}

#[test]
fn cleanup_with_exclude_interfaces_removes_their_returns() {
    let ns = Netns::new();
    let fresh = ns.nat_view();
    ns.remora_init_ok(&as_strs(&default_args_with(&[("-c", "eth1,eth2")])));
    let installed = ns.nat_view();
    assert!(
        installed.contains("-A PREROUTING -i eth1 -j RETURN"),
        "{installed}"
    );
    assert!(
        installed.contains("-A OUTPUT -o eth2 -j RETURN"),
        "{installed}"
    );
    ns.remora_init_ok(&["cleanup", "-c", "eth1,eth2"]);
    assert_eq!(ns.nat_view(), fresh);
}

#[test]
fn bad_input_fails_naming_the_flag_and_changes_nothing() {
    let ns = Netns::new();
    let fresh = ns.nat_view();
    let cases: &[(&str, &str, &str)] = &[
        ("-b", "70000", "-b: port 70000 out of range"),
        ("-x", "10.0.0/8", "-x: invalid CIDR \"10.0.0/8\""),
        ("-m", "FOO", "-m: unsupported interception mode \"FOO\""),
        (
            "-m",
            "TPROXY",
            "-m: unsupported interception mode \"TPROXY\"",
        ),
    ];
    let check = |before: &str| {
        for (flag, value, message) in cases {
            let out = ns.remora_init(&as_strs(&default_args_with(&[(flag, value)])));
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{flag} {value:?} was accepted");
            assert!(
                stderr.contains(message),
                "{flag} {value:?}: stderr {stderr:?}"
            );
            assert_eq!(ns.nat_view(), before, "{flag} {value:?} changed the table");
        }
    };
    // On a fresh table, and on one that already has our rules.
    check(&fresh);
    ns.remora_init_ok(DEFAULT_ARGS);
    let installed = ns.nat_view();
    check(&installed);

    // Several bad flags at once are all reported.
    let out = ns.remora_init(&as_strs(&default_args_with(&[
        ("-b", "70000"),
        ("-x", "10.0.0/8"),
        ("-m", "FOO"),
    ])));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    for flag in ["-b:", "-x:", "-m:"] {
        assert!(stderr.contains(flag), "{flag} missing from {stderr:?}");
    }
    assert_eq!(ns.nat_view(), installed);
}

#[test]
fn dry_run_prints_the_restore_input_and_changes_nothing() {
    let ns = Netns::new();
    let fresh = ns.nat_view();
    let mut args = DEFAULT_ARGS.to_vec();
    args.push("--dry-run");
    let out = ns.remora_init_ok(&args);
    assert_eq!(text(&out.stdout), FIXTURE);
    assert_eq!(ns.nat_view(), fresh);

    // Once installed, the dry run shows the deletions a reinstall would do.
    ns.remora_init_ok(DEFAULT_ARGS);
    let installed = ns.nat_view();
    let out = ns.remora_init_ok(&args);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("-D OUTPUT -j ISTIO_OUTPUT\n"), "{stdout}");
    assert!(
        stdout.contains("-D PREROUTING -p tcp -j ISTIO_INBOUND\n"),
        "{stdout}"
    );
    assert_eq!(ns.nat_view(), installed);

    // Same for cleanup.
    let out = ns.remora_init_ok(&["cleanup", "--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("-X ISTIO_OUTPUT\n"), "{stdout}");
    assert_eq!(ns.nat_view(), installed);
}
