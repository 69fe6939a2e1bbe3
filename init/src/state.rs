//! Reading the current nat table and reconciling the plan with it.
//!
//! `iptables-restore --noflush` appends: feeding it the plan twice would
//! leave two copies of the PREROUTING/OUTPUT jumps. This module parses
//! `iptables-save -t nat` output into a [`NatState`] and computes restore
//! inputs that are idempotent: declaring a managed chain flushes it, and any
//! copy of our rules already in the built-in chains is deleted (`-D`, by the
//! exact text `iptables-save` printed) in the same atomic transaction that
//! appends the fresh ones. Cleanup is computed the same way. The format of
//! `iptables-save` and `ip6tables-save` is the same, so one [`NatState`]
//! serves both families; each family is read and reconciled on its own.
//! Everything here is pure; [`crate::apply`] does the I/O.

use std::collections::BTreeSet;

use crate::flags::Interface;
use crate::rules::{exclude_interface_rules, Chain, Plan, Rule, TABLE};

/// What `iptables-save` printed that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("line {line}: unexpected {text:?} in the {TABLE} table")]
    UnexpectedLine { line: usize, text: String },
    #[error("line {line}: unterminated quote in {text:?}")]
    UnterminatedQuote { line: usize, text: String },
}

/// One rule as `iptables-save` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    pub chain: String,
    /// Everything after `-A CHAIN `, verbatim (valid `iptables-restore` input).
    pub spec: String,
    /// `spec` split into arguments (quotes removed).
    pub args: Vec<String>,
}

impl SavedRule {
    /// The chain this rule jumps (`-j`) or goes (`-g`) to.
    pub fn target(&self) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
            .map(|w| w[1].as_str())
    }

    /// The `iptables-restore` line deleting this exact rule.
    pub fn delete_line(&self) -> String {
        format!("-D {} {}", self.chain, self.spec)
    }

    /// Whether this is the same rule as `rule`, compared argument by argument.
    fn same_as(&self, rule: &Rule) -> bool {
        self.chain == rule.chain.name() && self.args == rule.args
    }
}

/// The nat table as `iptables-save -t nat` showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    chains: BTreeSet<String>,
    rules: Vec<SavedRule>,
}

impl NatState {
    /// Parses `iptables-save` output. Sections for other tables are
    /// skipped; no `*nat` section at all means an empty table.
    pub fn parse(save_output: &str) -> Result<Self, StateError> {
        let mut state = NatState::default();
        let mut in_nat = false;
        for (index, raw) in save_output.lines().enumerate() {
            let line = index + 1;
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            if let Some(table) = text.strip_prefix('*') {
                in_nat = table.trim() == TABLE;
                continue;
            }
            if !in_nat {
                continue;
            }
            if text == "COMMIT" {
                in_nat = false;
            } else if let Some(decl) = text.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.is_empty() {
                    return Err(StateError::UnexpectedLine {
                        line,
                        text: raw.to_owned(),
                    });
                }
                state.chains.insert(name.to_owned());
            } else if let Some(rest) = text.strip_prefix("-A ") {
                let rest = rest.trim_start();
                let (chain, spec) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let spec = spec.trim();
                let args = split_args(spec).ok_or_else(|| StateError::UnterminatedQuote {
                    line,
                    text: raw.to_owned(),
                })?;
                state.rules.push(SavedRule {
                    chain: chain.to_owned(),
                    spec: spec.to_owned(),
                    args,
                });
            } else {
                return Err(StateError::UnexpectedLine {
                    line,
                    text: raw.to_owned(),
                });
            }
        }
        Ok(state)
    }

    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.contains(name)
    }

    pub fn rules(&self) -> &[SavedRule] {
        &self.rules
    }

    /// Rules in PREROUTING/OUTPUT that are ours: jumps into a managed chain,
    /// or exactly one of `also` (our other built-in-chain rules).
    fn our_builtin_rules<'a>(&'a self, also: &'a [Rule]) -> impl Iterator<Item = &'a SavedRule> {
        self.rules.iter().filter(move |saved| {
            let builtin = Chain::BUILTIN.iter().any(|c| c.name() == saved.chain);
            builtin
                && (saved.target().and_then(Chain::managed).is_some()
                    || also.iter().any(|r| saved.same_as(r)))
        })
    }

    /// Whether nothing of ours is in the table.
    pub fn is_clean(&self, exclude_interfaces: &[Interface]) -> bool {
        cleanup_input(self, exclude_interfaces).is_none()
    }
}

/// Splits an `iptables-save` rule spec into arguments, honouring the double
/// quotes (with backslash escapes) it uses around values such as comments.
/// `None` if a quote is left open.
fn split_args(spec: &str) -> Option<Vec<String>> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => current.push(chars.next()?),
                        other => current.push(other),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        args.push(current);
    }
    Some(args)
}

/// The `iptables-restore --noflush` input that leaves the table with exactly
/// one copy of `plan`, whatever of ours is already there.
///
/// On a table without any of our rules it is exactly [`Plan::restore_text`].
pub fn install_input(plan: &Plan, state: &NatState) -> String {
    let builtin: Vec<Rule> = plan
        .rules()
        .iter()
        .filter(|r| r.chain.is_builtin())
        .cloned()
        .collect();
    let deletes: Vec<String> = state
        .our_builtin_rules(&builtin)
        .map(SavedRule::delete_line)
        .collect();
    plan.restore_text_with(&deletes)
}

/// The `iptables-restore --noflush` input removing everything of ours:
/// the jumps from PREROUTING/OUTPUT (and the `-c` RETURNs for
/// `exclude_interfaces`), then the managed chains. `None` when there is
/// nothing to remove.
pub fn cleanup_input(state: &NatState, exclude_interfaces: &[Interface]) -> Option<String> {
    removal_input(state, &exclude_interface_rules(exclude_interfaces))
}

/// Like [`cleanup_input`] for what installing `plan` adds: its jumps and
/// its own `-c` RETURNs, then the managed chains. `None` when the table has
/// none of it — i.e. when installing `plan` would start from a clean table.
pub fn uninstall_input(plan: &Plan, state: &NatState) -> Option<String> {
    let builtin: Vec<Rule> = plan
        .rules()
        .iter()
        .filter(|r| r.chain.is_builtin())
        .cloned()
        .collect();
    removal_input(state, &builtin)
}

/// The input removing the managed chains and, from the built-in chains, the
/// jumps into them and the rules equal to one of `also`.
fn removal_input(state: &NatState, also: &[Rule]) -> Option<String> {
    let mut lines: Vec<String> = state
        .our_builtin_rules(also)
        .map(SavedRule::delete_line)
        .collect();
    let present: Vec<Chain> = Chain::MANAGED
        .into_iter()
        .filter(|c| state.has_chain(c.name()))
        .collect();
    // Flush all before deleting any: the managed chains jump to each other.
    lines.extend(present.iter().map(|c| format!("-F {c}")));
    lines.extend(present.iter().map(|c| format!("-X {c}")));
    if lines.is_empty() {
        return None;
    }
    let mut out = format!("*{TABLE}\n");
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::flags::Cli;
    use crate::rules::{plan, Family};

    const FIXTURE: &str = include_str!("../tests/fixtures/istio-default.rules");
    const FIXTURE_V6: &str = include_str!("../tests/fixtures/istio-default-v6.rules");

    fn default_plan(extra: &[&str]) -> Plan {
        default_plan_for(Family::V4, extra)
    }

    fn default_plan_for(family: Family, extra: &[&str]) -> Plan {
        let mut argv = vec![
            "remora-init",
            "-i",
            "*",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let cfg = cli.capture.validate().unwrap_or_else(|e| panic!("{e}"));
        plan(&cfg, family)
    }

    /// What `iptables-save -t nat` prints after the default install
    /// (reordered options, `-m tcp`), plus an unrelated rule of someone else.
    const SAVED_AFTER_INSTALL: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 23:33:22 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -s 10.9.0.0/16 -m comment --comment \"keep -j ISTIO_INBOUND\" -j OTHER
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed on Sun Nov 22 23:33:22 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ISTIO_OUTPUT
COMMIT
";

    #[test]
    fn parse_reads_chains_and_rules_of_nat_only() {
        let state = NatState::parse(SAVED_AFTER_INSTALL).unwrap_or_else(|e| panic!("{e}"));
        assert!(state.has_chain("ISTIO_OUTPUT"));
        assert!(state.has_chain("PREROUTING"));
        assert_eq!(state.rules().len(), 7);
        let other = &state.rules()[1];
        assert_eq!(other.target(), Some("OTHER"));
        assert!(other.args.contains(&"keep -j ISTIO_INBOUND".to_string()));
        assert_eq!(state.rules()[0].target(), Some("ISTIO_INBOUND"));
    }

    #[test]
    fn parse_rejects_garbage_and_open_quotes() {
        assert!(matches!(
            NatState::parse("*nat\nwhat is this\nCOMMIT\n"),
            Err(StateError::UnexpectedLine { line: 2, .. })
        ));
        assert!(matches!(
            NatState::parse("*nat\n-A OUTPUT -m comment --comment \"open -j X\nCOMMIT\n"),
            Err(StateError::UnterminatedQuote { line: 2, .. })
        ));
        assert_eq!(NatState::parse(""), Ok(NatState::default()));
    }

    #[test]
    fn install_on_empty_table_is_the_fixture() {
        let p = default_plan(&[]);
        let fresh = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(install_input(&p, &fresh), FIXTURE);
    }

    #[test]
    fn v6_install_on_empty_table_is_the_v6_fixture() {
        let p = default_plan_for(Family::V6, &[]);
        let fresh = NatState::parse(
            "# Generated by ip6tables-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(install_input(&p, &fresh), FIXTURE_V6);
    }

    #[test]
    fn v6_reinstall_and_cleanup_read_ip6tables_save_output() {
        // What `ip6tables-save -t nat` prints after a dual-stack install.
        let saved = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN\n-A ISTIO_OUTPUT ! -d ::1/128 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let input = install_input(&default_plan_for(Family::V6, &[]), &saved);
        let deletes: Vec<&str> = input.lines().filter(|l| l.starts_with("-D ")).collect();
        assert_eq!(
            deletes,
            vec![
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -j ISTIO_OUTPUT"
            ]
        );
        let cleanup = cleanup_input(&saved, &[]).unwrap_or_default();
        assert!(cleanup.contains("-X ISTIO_OUTPUT\n"), "{cleanup}");
    }

    #[test]
    fn reinstall_deletes_every_old_jump_and_nothing_else() {
        let p = default_plan(&[]);
        let state = NatState::parse(SAVED_AFTER_INSTALL).unwrap_or_else(|e| panic!("{e}"));
        let input = install_input(&p, &state);
        let deletes: Vec<&str> = input.lines().filter(|l| l.starts_with("-D ")).collect();
        assert_eq!(
            deletes,
            vec![
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -j ISTIO_OUTPUT",
                "-D OUTPUT -j ISTIO_OUTPUT",
            ]
        );
        // Apart from the deletions it is the plain plan.
        let rest: String = input
            .lines()
            .filter(|l| !l.starts_with("-D "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(rest, p.restore_text());
    }

    #[test]
    fn reinstall_replaces_exclude_interface_returns() {
        let p = default_plan(&["-c", "eth1"]);
        let state = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -i eth1 -j RETURN\n-A PREROUTING -i eth2 -j RETURN\n-A OUTPUT -o eth1 -j RETURN\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let input = install_input(&p, &state);
        let deletes: Vec<&str> = input.lines().filter(|l| l.starts_with("-D ")).collect();
        assert_eq!(
            deletes,
            vec![
                "-D PREROUTING -i eth1 -j RETURN",
                "-D OUTPUT -o eth1 -j RETURN"
            ]
        );
    }

    #[test]
    fn cleanup_removes_jumps_then_flushes_then_deletes_chains() {
        let state = NatState::parse(SAVED_AFTER_INSTALL).unwrap_or_else(|e| panic!("{e}"));
        let input = cleanup_input(&state, &[]).unwrap_or_default();
        assert_eq!(
            input,
            "*nat
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D OUTPUT -j ISTIO_OUTPUT
-D OUTPUT -j ISTIO_OUTPUT
-F ISTIO_INBOUND
-F ISTIO_IN_REDIRECT
-F ISTIO_OUTPUT
-F ISTIO_REDIRECT
-X ISTIO_INBOUND
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
-X ISTIO_REDIRECT
COMMIT
"
        );
        assert!(!state.is_clean(&[]));
    }

    #[test]
    fn uninstall_removes_the_plans_own_builtin_rules() {
        let p = default_plan(&["-c", "eth1"]);
        let state = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -i eth1 -j RETURN\n-A PREROUTING -i eth2 -j RETURN\n-A OUTPUT -o eth1 -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            uninstall_input(&p, &state).unwrap_or_default(),
            "*nat\n-D PREROUTING -i eth1 -j RETURN\n-D OUTPUT -o eth1 -j RETURN\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        );
        let foreign = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i eth2 -j RETURN\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(uninstall_input(&p, &foreign), None);
        assert_eq!(uninstall_input(&p, &NatState::default()), None);
    }

    #[test]
    fn cleanup_of_a_clean_table_is_nothing() {
        let state = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OTHER - [0:0]\n-A PREROUTING -i eth1 -j RETURN\n-A PREROUTING -j OTHER\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cleanup_input(&state, &[]), None);
        assert!(state.is_clean(&[]));
    }

    #[test]
    fn cleanup_with_interfaces_removes_their_returns() {
        let state = NatState::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -i eth1 -j RETURN\n-A PREROUTING -i eth2 -j RETURN\n-A OUTPUT -o eth1 -j RETURN\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let iface: Interface = "eth1".parse().unwrap_or_else(|e| panic!("{e}"));
        let input = cleanup_input(&state, &[iface]).unwrap_or_default();
        assert_eq!(
            input,
            "*nat\n-D PREROUTING -i eth1 -j RETURN\n-D OUTPUT -o eth1 -j RETURN\nCOMMIT\n"
        );
    }

    #[test]
    fn split_args_handles_quotes() {
        assert_eq!(
            split_args(r#"-m comment --comment "a \"b\" c" -j X"#),
            Some(vec![
                "-m".to_string(),
                "comment".into(),
                "--comment".into(),
                "a \"b\" c".into(),
                "-j".into(),
                "X".into()
            ])
        );
        assert_eq!(
            split_args(r#"--comment """#),
            Some(vec!["--comment".to_string(), String::new()])
        );
        assert_eq!(split_args(r#"--comment "x"#), None);
    }
}
