//! Kernel-level tests of the `remora-init` binary.
//!
//! The unit tests check the text we generate; these check what the kernel
//! ends up with, because that is what decides how a pod behaves: the
//! binary's result is compared with Istio's rule set (the fixture) as
//! `iptables-save` reports both, which reorders options and adds `-m tcp`.
//! Each test works in its own scratch network namespace, removed on drop
//! even if the test panics. They need root and fail (never skip) without it.
//!
//! With `--dual-stack` the same checks are made for both families: the
//! `ip6tables` nat table against the IPv6 fixture, the `iptables` one
//! against the IPv4 fixture. Without it, the IPv6 table must stay untouched.
//! A failing IPv6 step is simulated with stub `ip6tables-*` commands put
//! first on `PATH`. `$ISTIO_DUAL_STACK` is removed from the environment of
//! every command, except where a test sets it on purpose.
//!
//! `--dual-stack` also puts `::6/128` on the namespace's `lo`: the tests
//! check it with `ip -6 addr show dev lo`, and make the `ip` step fail with
//! a stub `ip` that fails only that command and runs the real `ip` for
//! everything else (the harness's own `ip netns exec` included).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_remora-init");
const FIXTURE: &str = include_str!("fixtures/istio-default.rules");
const FIXTURE_V6: &str = include_str!("fixtures/istio-default-v6.rules");

use remora_init::flags::{DUAL_STACK_ENV, INJECTOR_DEFAULT_ARGS as DEFAULT_ARGS};

/// A unique suffix for scratch names within this test run.
fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

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
        require_root();
        let name = format!("rmr-init-{}", unique());
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
        self.run_env(program, args, stdin, &[])
    }

    /// Like [`Netns::run`], with `$ISTIO_DUAL_STACK` unset and then `env` set.
    fn run_env(&self, program: &str, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .env_remove(DUAL_STACK_ENV)
            .envs(env.iter().copied())
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

    /// Runs the remora-init binary in the namespace with extra environment.
    fn remora_init_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_env(BIN, args, "", env)
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
        self.restore_with("iptables-restore", input);
    }

    fn restore6(&self, input: &str) {
        self.restore_with("ip6tables-restore", input);
    }

    fn restore_with(&self, program: &str, input: &str) {
        let out = self.run(program, &[], input);
        assert!(out.status.success(), "{program}: {}", text(&out.stderr));
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
        self.view_with("iptables-save")
    }

    /// The IPv6 nat table as the kernel reports it, normalised.
    fn nat6_view(&self) -> String {
        self.view_with("ip6tables-save")
    }

    fn view_with(&self, program: &str) -> String {
        let out = self.run(program, &["-t", "nat"], "");
        assert!(out.status.success(), "{program}: {}", text(&out.stderr));
        normalise(&text(&out.stdout))
    }

    /// Both nat tables, IPv4 then IPv6.
    fn views(&self) -> (String, String) {
        (self.nat_view(), self.nat6_view())
    }

    /// `ip -6 addr show dev lo` in the namespace.
    fn lo6(&self) -> String {
        let out = self.run("ip", &["-6", "addr", "show", "dev", "lo"], "");
        assert!(
            out.status.success(),
            "ip -6 addr show: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// How many times `lo` lists `::6/128`.
    fn inbound_addresses(&self) -> usize {
        self.lo6().matches("inet6 ::6/128 ").count()
    }

    /// Runs `ip args` in the namespace, asserting success.
    fn ip(&self, args: &[&str]) {
        let out = self.run("ip", args, "");
        assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
    }
}

/// A directory of stub commands, put first on `PATH`; removed on drop.
struct Stubs {
    dir: PathBuf,
}

impl Stubs {
    /// `stubs` are (command name, shell script body) pairs.
    fn new(stubs: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rmr-init-stubs-{}", unique()));
        std::fs::create_dir_all(&dir).expect("create the stub directory");
        for (name, body) in stubs {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write a stub");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("make a stub executable");
        }
        Self { dir }
    }

    /// The `PATH` that finds the stubs first.
    fn path(&self) -> String {
        let rest = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        format!("{}:{rest}", self.dir.display())
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Where `program` really is, for stubs that hand over to it.
fn real_path(program: &str) -> String {
    let which = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("run `command -v`");
    let real = text(&which.stdout).trim().to_owned();
    assert!(which.status.success() && !real.is_empty(), "no {program}");
    real
}

/// An `ip` stub failing `ip <args>` and running the real `ip` otherwise.
fn ip_failing(args: &str) -> String {
    format!(
        "if [ \"$*\" = \"{args}\" ]; then echo 'stub ip: simulated failure' >&2; exit 2; fi\n\
         exec {} \"$@\"",
        real_path("ip")
    )
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

/// The default arguments plus `--dual-stack`.
fn dual_stack_args() -> Vec<&'static str> {
    let mut args = DEFAULT_ARGS.to_vec();
    args.push("--dual-stack");
    args
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

#[test]
fn dual_stack_installs_both_fixtures_in_the_kernel() {
    let istio = Netns::new();
    istio.restore(FIXTURE);
    istio.restore6(FIXTURE_V6);
    let ours = Netns::new();
    let out = ours.remora_init_ok(&dual_stack_args());
    let stderr = text(&out.stderr);
    let rules = FIXTURE.lines().filter(|l| l.starts_with("-A ")).count();
    assert!(
        stderr.contains(&format!(
            "installed {rules} IPv4 and {rules} IPv6 nat rules"
        )),
        "{stderr}"
    );

    let (want4, want6) = istio.views();
    assert!(
        want6.contains(":ISTIO_OUTPUT -") && want6.contains("-s ::6/128"),
        "IPv6 fixture did not load: {want6}"
    );
    let (have4, have6) = ours.views();
    assert_eq!(have6, want6);
    assert_eq!(have4, want4);
    assert!(!have6.contains("127.0.0."), "{have6}");
}

#[test]
fn dual_stack_install_twice_leaves_one_copy_in_each_table() {
    let ns = Netns::new();
    ns.remora_init_ok(&dual_stack_args());
    let once = ns.views();
    ns.remora_init_ok(&dual_stack_args());
    assert_eq!(ns.views(), once);
    ns.remora_init_ok(&dual_stack_args());
    assert_eq!(ns.views(), once);
    for view in [&once.0, &once.1] {
        assert_eq!(
            view.matches("-A OUTPUT -j ISTIO_OUTPUT").count(),
            1,
            "{view}"
        );
        assert_eq!(
            view.matches("-A PREROUTING -p tcp -j ISTIO_INBOUND")
                .count(),
            1,
            "{view}"
        );
    }

    // A reinstall with other flags replaces the IPv6 rules too.
    let reference = Netns::new();
    reference.restore6(FIXTURE_V6);
    let mut changed: Vec<String> = default_args_with(&[("-p", "16001")]);
    changed.push("--dual-stack".into());
    ns.remora_init_ok(&as_strs(&changed));
    let view6 = ns.nat6_view();
    assert!(view6.contains("--to-ports 16001"), "{view6}");
    assert!(!view6.contains("--to-ports 15001"), "{view6}");
    ns.remora_init_ok(&dual_stack_args());
    assert_eq!(ns.nat6_view(), reference.nat6_view());
}

#[test]
fn dual_stack_cleanup_returns_both_tables_to_fresh() {
    let ns = Netns::new();
    let fresh = ns.views();
    // A foreign IPv6 rule survives install + cleanup.
    let out = ns.run(
        "ip6tables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "fd09::9/128",
            "-j",
            "RETURN",
        ],
        "",
    );
    assert!(out.status.success(), "ip6tables: {}", text(&out.stderr));
    let with_foreign = ns.views();
    assert_ne!(with_foreign, fresh);

    ns.remora_init_ok(&dual_stack_args());
    assert_ne!(ns.nat6_view(), with_foreign.1);
    let out = ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("IPv4: removed"), "{stderr}");
    assert!(stderr.contains("IPv6: removed"), "{stderr}");
    assert_eq!(ns.views(), with_foreign);
    // Nothing left: a second cleanup succeeds and changes nothing.
    let out = ns.remora_init_ok(&["--dual-stack", "cleanup"]);
    assert!(
        text(&out.stderr).contains("IPv6: nothing to clean up"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(ns.views(), with_foreign);

    // -c RETURNs are removed from both tables.
    let mut args = default_args_with(&[("-c", "eth1")]);
    args.push("--dual-stack".into());
    ns.remora_init_ok(&as_strs(&args));
    assert!(ns.nat6_view().contains("-A OUTPUT -o eth1 -j RETURN"));
    ns.remora_init_ok(&["cleanup", "--dual-stack", "-c", "eth1"]);
    assert_eq!(ns.views(), with_foreign);
}

#[test]
fn without_dual_stack_ip6tables_is_untouched() {
    let ns = Netns::new();
    let (fresh4, fresh6) = ns.views();
    ns.remora_init_ok(DEFAULT_ARGS);
    let (installed4, installed6) = ns.views();
    assert_ne!(installed4, fresh4);
    assert_eq!(installed6, fresh6);
    // The IPv4-only dry run shows no ip6tables input and no labels.
    let mut dry = DEFAULT_ARGS.to_vec();
    dry.push("--dry-run");
    let stdout = text(&ns.remora_init_ok(&dry).stdout);
    assert!(
        !stdout.contains("# ip") && !stdout.contains("::"),
        "{stdout}"
    );

    // A dual-stack install cleaned up without the flag keeps its IPv6 rules.
    ns.remora_init_ok(&dual_stack_args());
    let dual6 = ns.nat6_view();
    ns.remora_init_ok(&["cleanup"]);
    assert_eq!(ns.nat_view(), fresh4);
    assert_eq!(ns.nat6_view(), dual6);
    ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    assert_eq!(ns.views(), (fresh4, fresh6));
}

#[test]
fn istio_dual_stack_env_turns_ipv6_on() {
    let reference = Netns::new();
    reference.restore(FIXTURE);
    reference.restore6(FIXTURE_V6);
    let want = reference.views();

    let ns = Netns::new();
    let fresh = ns.views();
    let on = [(DUAL_STACK_ENV, "true")];
    let out = ns.remora_init_env(DEFAULT_ARGS, &on);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ns.views(), want);
    let out = ns.remora_init_env(&["cleanup"], &on);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ns.views(), fresh);

    // The flag overrides the variable.
    let mut off = DEFAULT_ARGS.to_vec();
    off.push("--dual-stack=false");
    let out = ns.remora_init_env(&off, &on);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ns.views(), (want.0.clone(), fresh.1.clone()));
    ns.remora_init_ok(&["cleanup"]);

    // An empty variable is unset.
    let out = ns.remora_init_env(DEFAULT_ARGS, &[(DUAL_STACK_ENV, "")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ns.views(), (want.0.clone(), fresh.1.clone()));
    ns.remora_init_ok(&["cleanup"]);

    // A bad value is a usage error naming the flag and the variable,
    // reported with the other bad flags, before any table is touched.
    let bad_args = default_args_with(&[("-b", "70000")]);
    let out = ns.remora_init_env(&as_strs(&bad_args), &[(DUAL_STACK_ENV, "maybe")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("-b: port 70000 out of range"), "{stderr}");
    assert!(
        stderr.contains("--dual-stack ($ISTIO_DUAL_STACK): invalid boolean \"maybe\""),
        "{stderr}"
    );
    assert_eq!(ns.views(), fresh);
}

#[test]
fn dual_stack_routes_each_cidr_to_its_family() {
    let ns = Netns::new();
    let mut args = default_args_with(&[
        ("-i", "10.0.0.0/8,fd00::/8"),
        ("-x", "10.1.0.0/16,fd01::/16"),
    ]);
    args.push("--dual-stack".into());
    ns.remora_init_ok(&as_strs(&args));
    let (v4, v6) = ns.views();
    assert!(
        v4.contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"),
        "{v4}"
    );
    assert!(
        v4.contains("-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN"),
        "{v4}"
    );
    assert!(!v4.contains("fd0"), "{v4}");
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT"),
        "{v6}"
    );
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d fd01::/16 -j RETURN"),
        "{v6}"
    );
    assert!(!v6.contains("10.0.0.0") && !v6.contains("10.1.0.0"), "{v6}");
}

#[test]
fn dual_stack_dry_run_prints_both_labelled_inputs() {
    let ns = Netns::new();
    let fresh = ns.views();
    let mut args = dual_stack_args();
    args.push("--dry-run");
    let stdout = text(&ns.remora_init_ok(&args).stdout);
    assert_eq!(
        stdout,
        format!(
            "# ip -6 addr add ::6/128 dev lo\n\
             # iptables-restore --noflush\n{FIXTURE}# ip6tables-restore --noflush\n{FIXTURE_V6}"
        )
    );
    assert_eq!(ns.views(), fresh);
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());

    // Each labelled part, label included, is valid input for its command
    // and installs what the real run installs.
    let (v4, v6) = stdout
        .split_once("# ip6tables-restore --noflush\n")
        .unwrap_or_else(|| panic!("no IPv6 label: {stdout}"));
    let scratch = Netns::new();
    scratch.restore(v4);
    scratch.restore6(&format!("# ip6tables-restore --noflush\n{v6}"));
    let real = Netns::new();
    real.remora_init_ok(&dual_stack_args());
    assert_eq!(scratch.views(), real.views());

    // Each labelled part is exactly what its family would apply.
    ns.remora_init_ok(&dual_stack_args());
    let installed = ns.views();
    let stdout = text(&ns.remora_init_ok(&args).stdout);
    let (v4, v6) = stdout
        .split_once("# ip6tables-restore --noflush\n")
        .unwrap_or_else(|| panic!("no IPv6 label: {stdout}"));
    assert!(
        v4.starts_with("# ip -6 addr add ::6/128 dev lo\n# iptables-restore --noflush\n*nat\n"),
        "{v4}"
    );
    for part in [v4, v6] {
        assert!(part.contains("-D OUTPUT -j ISTIO_OUTPUT\n"), "{part}");
        assert_eq!(part.matches("COMMIT\n").count(), 1, "{part}");
    }
    assert!(v6.contains("::6/128") && !v6.contains("127.0.0."), "{v6}");
    assert_eq!(ns.views(), installed);

    let out = ns.remora_init_ok(&["cleanup", "--dual-stack", "--dry-run"]);
    let stdout = text(&out.stdout);
    let (v4, v6) = stdout
        .split_once("# ip6tables-restore --noflush\n")
        .unwrap_or_else(|| panic!("no IPv6 label: {stdout}"));
    assert!(v4.starts_with("# iptables-restore --noflush\n"), "{v4}");
    assert!(
        v4.contains("-X ISTIO_OUTPUT\n") && v6.contains("-X ISTIO_OUTPUT\n"),
        "{stdout}"
    );
    // The address goes last, as the real cleanup removes it last.
    assert!(
        v6.ends_with("COMMIT\n# ip -6 addr del ::6/128 dev lo\n"),
        "{v6}"
    );
    assert_eq!(ns.views(), installed);
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());
}

/// `ip6tables-restore` that always fails, after reading its input.
const FAILING_RESTORE: &str =
    "cat >/dev/null\necho 'stub ip6tables-restore: simulated failure' >&2\nexit 1";

#[test]
fn failed_ipv6_install_rolls_back_ipv4_and_says_so() {
    let stubs = Stubs::new(&[("ip6tables-restore", FAILING_RESTORE)]);
    let path = stubs.path();
    let ns = Netns::new();
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
    let fresh = ns.views();

    let out = ns.remora_init_env(&dual_stack_args(), &[("PATH", &path)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the IPv6 install failed; the IPv4 rules installed just before were rolled back, \
             so no table was changed"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("ip6tables-restore --noflush failed"),
        "{stderr}"
    );
    assert!(stderr.contains("simulated failure"), "{stderr}");
    assert!(
        stderr.contains("(::6/128, added to lo just before, was removed again)"),
        "{stderr}"
    );
    assert_eq!(ns.views(), fresh);
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());

    // On a reinstall the rollback puts back the previous IPv4 rules, and
    // leaves rules that are not ours alone.
    ns.iptables(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "10.9.9.9/32",
        "-j",
        "RETURN",
    ]);
    ns.remora_init_ok(&as_strs(&default_args_with(&[("-p", "16001")])));
    let before = ns.views();
    let out = ns.remora_init_env(&dual_stack_args(), &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(ns.views(), before);
    assert!(before.0.contains("--to-ports 16001") && before.0.contains("10.9.9.9"));
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());

    // An address that was there before the failed install stays.
    ns.ip(&["-6", "addr", "add", "::6/128", "dev", "lo"]);
    let out = ns.remora_init_env(&dual_stack_args(), &[("PATH", &path)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("::6/128"), "{stderr}");
    assert_eq!(ns.views(), before);
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());

    // Without --dual-stack the IPv6 commands are never run.
    ns.remora_init_ok(&["cleanup"]);
    let out = ns.remora_init_env(DEFAULT_ARGS, &[("PATH", &path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn failed_rollback_is_reported_with_what_is_left() {
    // iptables-restore works once (the install) and fails after that (the
    // rollback); ip6tables-restore always fails.
    let real = real_path("iptables-restore");
    let once = format!(
        "used=\"$(dirname \"$0\")/used\"\n\
         if [ ! -e \"$used\" ]; then touch \"$used\"; exec {real} \"$@\"; fi\n\
         cat >/dev/null\necho 'stub iptables-restore: rollback refused' >&2\nexit 1"
    );
    let stubs = Stubs::new(&[
        ("ip6tables-restore", FAILING_RESTORE),
        ("iptables-restore", &once),
    ]);
    let ns = Netns::new();
    let (_, fresh6) = ns.views();
    let out = ns.remora_init_env(&dual_stack_args(), &[("PATH", &stubs.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "the IPv6 install failed, and rolling back IPv4 failed too",
        "rollback refused",
        "the IPv4 nat table keeps the new rules while the IPv6 one does not",
        "remora-init --dual-stack cleanup",
        "simulated failure",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    let reference = Netns::new();
    reference.restore(FIXTURE);
    assert_eq!(ns.views(), (reference.nat_view(), fresh6));
    ns.remora_init_ok(&["--dual-stack", "cleanup"]);
    assert!(!ns.nat_view().contains("ISTIO"));
}

#[test]
fn unreadable_ipv6_table_changes_nothing() {
    let stubs = Stubs::new(&[(
        "ip6tables-save",
        "echo 'stub ip6tables-save: simulated failure' >&2\nexit 1",
    )]);
    let path = stubs.path();
    let ns = Netns::new();
    let fresh = ns.views();
    for args in [dual_stack_args(), vec!["cleanup", "--dual-stack"]] {
        let out = ns.remora_init_env(&args, &[("PATH", &path)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("could not read the IPv6 nat table; no table was changed"),
            "{args:?}: {stderr}"
        );
        assert_eq!(ns.views(), fresh, "{args:?}");
        assert_eq!(ns.inbound_addresses(), 0, "{args:?}: {}", ns.lo6());
    }
}

#[test]
fn failed_ipv6_cleanup_says_ipv4_was_already_removed() {
    let stubs = Stubs::new(&[("ip6tables-restore", FAILING_RESTORE)]);
    let ns = Netns::new();
    let (fresh4, _) = ns.views();
    ns.remora_init_ok(&dual_stack_args());
    let (_, installed6) = ns.views();
    let out = ns.remora_init_env(&["cleanup", "--dual-stack"], &[("PATH", &stubs.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the IPv6 cleanup failed; the IPv4 rules were already removed \
             (run cleanup again to finish)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("(::6/128 was left on lo)"), "{stderr}");
    assert_eq!(ns.views(), (fresh4, installed6));
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());
    // Running it again with a working ip6tables finishes the job.
    ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    assert!(!ns.nat6_view().contains("ISTIO"));
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());
}

#[test]
fn dual_stack_adds_the_inbound_address_to_lo_and_cleanup_removes_it() {
    let ns = Netns::new();
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());
    let out = ns.remora_init_ok(&dual_stack_args());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("added ::6/128 to lo"), "{stderr}");
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());

    // Installing again is fine: the address is there already.
    let out = ns.remora_init_ok(&dual_stack_args());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("::6/128 was already on lo"), "{stderr}");
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());

    // A cleanup without --dual-stack leaves it (and the IPv6 rules) alone.
    ns.remora_init_ok(&["cleanup"]);
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());

    let out = ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("removed ::6/128 from lo"), "{stderr}");
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());
    // Missing is fine.
    let out = ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("::6/128 is not on lo: nothing to remove"),
        "{stderr}"
    );
    let out = ns.remora_init_ok(&["cleanup", "--dual-stack", "--dry-run"]);
    assert!(
        !text(&out.stdout).contains("# ip "),
        "{}",
        text(&out.stdout)
    );

    // Other addresses on lo are not touched: ::6 with another prefix length
    // counts as there for install, and is not ours to remove.
    ns.ip(&["-6", "addr", "add", "::6/64", "dev", "lo"]);
    ns.ip(&["-6", "addr", "add", "fd00::6/128", "dev", "lo"]);
    let before = ns.lo6();
    let out = ns.remora_init_ok(&dual_stack_args());
    assert!(
        text(&out.stderr).contains("::6/128 was already on lo"),
        "{}",
        text(&out.stderr)
    );
    ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    assert_eq!(ns.lo6(), before);
}

#[test]
fn without_dual_stack_the_inbound_address_is_not_added() {
    let ns = Netns::new();
    let fresh = ns.lo6();
    ns.remora_init_ok(DEFAULT_ARGS);
    assert_eq!(ns.lo6(), fresh);
    let out = ns.remora_init_env(DEFAULT_ARGS, &[(DUAL_STACK_ENV, "false")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());
    // $ISTIO_DUAL_STACK does add it.
    let out = ns.remora_init_env(DEFAULT_ARGS, &[(DUAL_STACK_ENV, "true")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());
}

#[test]
fn dry_run_does_not_add_the_inbound_address() {
    let ns = Netns::new();
    let fresh = ns.lo6();
    let mut args = dual_stack_args();
    args.push("--dry-run");
    let stdout = text(&ns.remora_init_ok(&args).stdout);
    assert!(
        stdout.starts_with("# ip -6 addr add ::6/128 dev lo\n"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("# ip -6 ").count(), 1, "{stdout}");
    assert_eq!(ns.lo6(), fresh);
    // Printed even when the address is there: the real run would run it.
    ns.remora_init_ok(&dual_stack_args());
    let stdout = text(&ns.remora_init_ok(&args).stdout);
    assert!(
        stdout.starts_with("# ip -6 addr add ::6/128 dev lo\n"),
        "{stdout}"
    );
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());
}

#[test]
fn failing_to_add_the_inbound_address_changes_no_table() {
    let stubs = Stubs::new(&[("ip", &ip_failing("-6 addr add ::6/128 dev lo"))]);
    let ns = Netns::new();
    let fresh = ns.views();
    let out = ns.remora_init_env(&dual_stack_args(), &[("PATH", &stubs.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "adding ::6/128 to lo failed; no nat table was changed",
        "ip -6 addr add ::6/128 dev lo failed",
        "stub ip: simulated failure",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    assert_eq!(ns.views(), fresh);
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());

    // Without --dual-stack, ip is not needed.
    let out = ns.remora_init_env(DEFAULT_ARGS, &[("PATH", &stubs.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn failing_to_remove_the_inbound_address_says_the_rules_are_gone() {
    let stubs = Stubs::new(&[("ip", &ip_failing("-6 addr del ::6/128 dev lo"))]);
    let ns = Netns::new();
    let fresh = ns.views();
    ns.remora_init_ok(&dual_stack_args());
    let out = ns.remora_init_env(&["cleanup", "--dual-stack"], &[("PATH", &stubs.path())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "the nat redirection rules were removed, but removing ::6/128 from lo failed \
         (run cleanup again to finish)",
        "ip -6 addr del ::6/128 dev lo failed",
        "stub ip: simulated failure",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    assert_eq!(ns.views(), fresh);
    assert_eq!(ns.inbound_addresses(), 1, "{}", ns.lo6());
    ns.remora_init_ok(&["cleanup", "--dual-stack"]);
    assert_eq!(ns.inbound_addresses(), 0, "{}", ns.lo6());
}
