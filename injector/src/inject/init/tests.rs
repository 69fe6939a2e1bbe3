use super::*;

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn args(pairs: &[(&str, &str)]) -> Result<Vec<String>, InjectError> {
    arguments(&Values::default(), &annotations(pairs))
}

/// The default arguments with `changes` (flag, value) made, extra flags appended in order.
fn expected(changes: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = INJECTOR_DEFAULT_ARGS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for (flag, value) in changes {
        match out.iter().position(|a| a == flag) {
            Some(i) => out[i + 1] = (*value).to_owned(),
            None => {
                out.push((*flag).to_owned());
                out.push((*value).to_owned());
            }
        }
    }
    out
}

#[test]
fn traffic_annotations_become_remora_init_flags() {
    type Pairs<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Pairs, Pairs); 8] = [
        (&[], &[]),
        (
            &[(
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/8,172.16.0.0/12",
            )],
            &[("-i", "10.0.0.0/8,172.16.0.0/12")],
        ),
        (
            &[(
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "169.254.169.254/32",
            )],
            &[("-x", "169.254.169.254/32")],
        ),
        (
            &[("traffic.sidecar.istio.io/includeInboundPorts", "8080,9090")],
            &[("-b", "8080,9090")],
        ),
        // Excluded inbound ports are added to the sidecar's own, the status port last.
        (
            &[("traffic.sidecar.istio.io/excludeInboundPorts", "8081,8082")],
            &[("-d", "15090,15021,8081,8082,15020")],
        ),
        (
            &[
                ("traffic.sidecar.istio.io/includeOutboundPorts", "443"),
                ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306,5432"),
            ],
            &[("-q", "443"), ("-o", "3306,5432")],
        ),
        (
            &[("traffic.sidecar.istio.io/excludeInterfaces", "eth1")],
            &[("-c", "eth1")],
        ),
        // A status port of 0 is not excluded; another one is.
        (
            &[("status.sidecar.istio.io/port", "0")],
            &[("-d", "15090,15021")],
        ),
    ];
    for (pairs, changes) in cases {
        assert_eq!(args(pairs).expect("valid"), expected(changes), "{pairs:?}");
    }
    assert_eq!(
        args(&[("status.sidecar.istio.io/port", "15999")]).expect("valid"),
        expected(&[("-d", "15090,15021,15999")])
    );
}

#[test]
fn bad_values_name_the_annotation_and_the_value() {
    let cases = [
        ("traffic.sidecar.istio.io/includeInboundPorts", "80,http"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "70000"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/33",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "not-a-cidr",
        ),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "-1"),
        ("status.sidecar.istio.io/port", "http"),
        ("sidecar.istio.io/interceptionMode", "TPROXY"),
    ];
    for (annotation, value) in cases {
        let err = args(&[(annotation, value)]).expect_err("refused");
        let InjectError::Annotation {
            annotation: named,
            value: seen,
            ..
        } = &err
        else {
            panic!("{annotation}: {err}");
        };
        assert_eq!(
            (named.as_str(), seen.as_str()),
            (annotation, value),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "invalid value '{value}' for annotation '{annotation}'"
            )),
            "{message}"
        );
    }
}

#[test]
fn the_init_container_runs_as_root_with_only_the_network_capabilities() {
    let init = container(&Values::default(), &BTreeMap::new(), "registry/proxy:1").expect("valid");
    assert_eq!(init.name, "istio-init");
    assert_eq!(init.command, Some(vec!["remora-init".to_owned()]));
    let security = init.security_context.expect("set");
    assert_eq!(
        (security.run_as_user, security.run_as_non_root),
        (Some(0), Some(false))
    );
    let capabilities = security.capabilities.expect("set");
    assert_eq!(
        capabilities.add,
        Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()])
    );
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
}
