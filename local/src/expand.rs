//! Kubernetes' `$(NAME)` references in a container's `env` values, `command` and `args`,
//! expanded as the kubelet expands them, so a manifest that relies on them (`args:
//! ["--listen=$(POD_IP):8080"]`) runs locally as it would in a cluster.
//!
//! The rules are those of Kubernetes' `third_party/forked/golang/expansion`: `$(NAME)` becomes
//! the value of the container's variable `NAME`; a reference to a variable the container does
//! not define, and an unterminated `$(`, stay as written; `$$` is a literal `$` (so `$$(NAME)`
//! stays `$(NAME)`); any other `$` is kept. An `env` `value` sees only the variables listed
//! before it, `command` and `args` see them all; values from `valueFrom` are never expanded.
//! Only the container's own `env` counts, not what the launcher or injection add around it.
//!
//! Expansion happens when the container starts rather than when the pod is planned, because a
//! `status.podIP` variable has no value before the pod has its address.

use std::net::IpAddr;

use super::containers::EnvValue;

/// The container's environment as its process gets it: `env` in order, each `value` expanded
/// against the variables before it, `status.podIP` as `pod_ip`.
pub fn environment(env: &[(String, EnvValue)], pod_ip: IpAddr) -> Vec<(String, String)> {
    let mut resolved: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (name, value) in env {
        let value = match value {
            EnvValue::Value(text) => expand(text, &resolved),
            EnvValue::Field(text) => text.clone(),
            EnvValue::PodIp => pod_ip.to_string(),
        };
        resolved.push((name.clone(), value));
    }
    resolved
}

/// `argv` (`command` then `args`) with references to the variables of `env` (as
/// [`environment`] resolves them) expanded.
pub fn command_line(argv: &[String], env: &[(String, String)]) -> Vec<String> {
    argv.iter().map(|arg| expand(arg, env)).collect()
}

/// `text` with its references to `vars` expanded; of two variables with one name, the later
/// wins, as it does in the process's environment.
fn expand(text: &str, vars: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(var, _)| var == name)
            .map(|(_, value)| value.as_str())
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        rest = if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            escaped
        } else if let Some(reference) = after.strip_prefix('(') {
            match reference.split_once(')') {
                Some((name, tail)) => {
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => out.push_str(&format!("$({name})")),
                    }
                    tail
                }
                // Unterminated: kept, and what follows is read as text again.
                None => {
                    out.push_str("$(");
                    reference
                }
            }
        } else {
            out.push('$');
            after
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn references_expand_as_kubernetes_expands_them() {
        let env = vars(&[("A", "1"), ("PORT", "8080"), ("A", "2"), ("EMPTY", "")]);
        let cases = [
            ("plain", "plain"),
            ("", ""),
            ("$(PORT)", "8080"),
            ("--listen=:$(PORT)/x", "--listen=:8080/x"),
            ("$(PORT)$(PORT)", "80808080"),
            ("$(A)", "2"),
            ("[$(EMPTY)]", "[]"),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("a $(UNDEFINED) $(PORT)", "a $(UNDEFINED) 8080"),
            ("$()", "$()"),
            ("$$", "$"),
            ("$$(PORT)", "$(PORT)"),
            ("$$$(PORT)", "$8080"),
            ("$$$$", "$$"),
            ("$", "$"),
            ("cost: 5$", "cost: 5$"),
            ("$HOME $PORT", "$HOME $PORT"),
            ("${PORT}", "${PORT}"),
            ("$(PORT", "$(PORT"),
            ("$(PORT $$", "$(PORT $"),
            ("$($(PORT)", "$($(PORT)"),
            ("$(a$(PORT)", "$(a$(PORT)"),
            ("é$(PORT)é", "é8080é"),
            ("$é", "$é"),
        ];
        for (text, expected) in cases {
            assert_eq!(expand(text, &env), expected, "{text:?}");
        }
    }

    #[test]
    fn env_values_see_earlier_variables_and_argv_sees_all() {
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
        let env = [
            ("EARLY", EnvValue::Value("$(LATE)-$(IP)".to_owned())),
            ("IP", EnvValue::PodIp),
            ("URL", EnvValue::Value("http://$(IP):$(PORT)".to_owned())),
            ("PORT", EnvValue::Value("8080".to_owned())),
            ("POD", EnvValue::Field("$(PORT)".to_owned())),
            ("LATE", EnvValue::Value("late".to_owned())),
            ("ESCAPED", EnvValue::Value("$$(IP)".to_owned())),
        ]
        .map(|(name, value)| (name.to_owned(), value));
        let resolved = environment(&env, ip);
        assert_eq!(
            resolved,
            vars(&[
                ("EARLY", "$(LATE)-$(IP)"),
                ("IP", "198.18.0.7"),
                ("URL", "http://198.18.0.7:$(PORT)"),
                ("PORT", "8080"),
                ("POD", "$(PORT)"),
                ("LATE", "late"),
                ("ESCAPED", "$(IP)"),
            ])
        );
        let argv = [
            "serve",
            "--listen=$(IP):$(PORT)",
            "$(LATE)",
            "$(URL)",
            "$(HOSTNAME)",
        ]
        .map(String::from);
        assert_eq!(
            command_line(&argv, &resolved),
            [
                "serve",
                "--listen=198.18.0.7:8080",
                "late",
                "http://198.18.0.7:$(PORT)",
                "$(HOSTNAME)",
            ],
            "all of env, expanded values not expanded again, nothing from outside env"
        );
    }
}
