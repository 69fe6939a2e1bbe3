//! The `istio-init` container: `remora-init` with Istio's default arguments, adjusted by the
//! pod's `traffic.sidecar.istio.io/*` annotations exactly as Istio's template adjusts
//! `istio-iptables`'. Every value is checked by `remora-init`'s own flag parser before the pod is
//! admitted, so a pod is refused at injection, naming the annotation, rather than failing to
//! start.

use std::collections::BTreeMap;

use clap::Parser;
use k8s_openapi::api::core::v1::{Capabilities, Container, SecurityContext};
use remora_init::flags::{Cli, INJECTOR_DEFAULT_ARGS};

use super::{resources::proxy_resources, values::Values, InjectError, INIT_CONTAINER};

/// The program the init container runs (on the image's `PATH`).
pub const INIT_COMMAND: &str = "remora-init";

/// Ports that never get inbound interception: the sidecar's Prometheus and health ports.
const ALWAYS_EXCLUDED_INBOUND: &str = "15090,15021";

/// An annotation that becomes a flag.
struct Setting {
    flag: &'static str,
    annotation: &'static str,
}

const fn setting(flag: &'static str, annotation: &'static str) -> Setting {
    Setting { flag, annotation }
}

const INCLUDE_OUTBOUND_IP_RANGES: Setting =
    setting("-i", "traffic.sidecar.istio.io/includeOutboundIPRanges");
const EXCLUDE_OUTBOUND_IP_RANGES: Setting =
    setting("-x", "traffic.sidecar.istio.io/excludeOutboundIPRanges");
const INCLUDE_INBOUND_PORTS: Setting =
    setting("-b", "traffic.sidecar.istio.io/includeInboundPorts");
const EXCLUDE_INBOUND_PORTS: Setting =
    setting("-d", "traffic.sidecar.istio.io/excludeInboundPorts");
const INCLUDE_OUTBOUND_PORTS: Setting =
    setting("-q", "traffic.sidecar.istio.io/includeOutboundPorts");
const EXCLUDE_OUTBOUND_PORTS: Setting =
    setting("-o", "traffic.sidecar.istio.io/excludeOutboundPorts");
const EXCLUDE_INTERFACES: Setting = setting("-c", "traffic.sidecar.istio.io/excludeInterfaces");
/// `REDIRECT` (the default) is the only interception mode `remora-init` installs.
const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

/// The status port, whose inbound traffic is never intercepted (0: none).
pub const STATUS_PORT_ANNOTATION: &str = "status.sidecar.istio.io/port";

/// The init container for a pod with `annotations`.
pub fn container(
    values: &Values,
    annotations: &BTreeMap<String, String>,
    image: &str,
) -> Result<Container, InjectError> {
    let args = arguments(values, annotations)?;
    Ok(Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some(values.global.image_pull_policy.clone()).filter(|p| !p.is_empty()),
        command: Some(vec![INIT_COMMAND.to_owned()]),
        args: Some(args),
        resources: Some(proxy_resources(values, annotations)?),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(values.global.proxy.privileged),
            privileged: Some(values.global.proxy.privileged),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            read_only_root_filesystem: Some(false),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            ..SecurityContext::default()
        }),
        ..Container::default()
    })
}

/// `remora-init`'s arguments, in Istio's order, checked by its own parser.
fn arguments(
    values: &Values,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<String>, InjectError> {
    let proxy = &values.global.proxy;
    let annotated = |setting: &Setting| annotations.get(setting.annotation).cloned();
    if let Some(mode) = annotations.get(INTERCEPTION_MODE) {
        if mode != "REDIRECT" {
            return Err(InjectError::annotation(
                INTERCEPTION_MODE,
                mode,
                "only REDIRECT interception is supported",
            ));
        }
    }
    let status_port = match annotations.get(STATUS_PORT_ANNOTATION) {
        Some(port) => port.parse::<u16>().map_err(|_| {
            InjectError::annotation(STATUS_PORT_ANNOTATION, port, "not a port number")
        })?,
        None => proxy.status_port,
    };
    let excluded =
        annotated(&EXCLUDE_INBOUND_PORTS).unwrap_or_else(|| proxy.exclude_inbound_ports.clone());
    let excluded = with_status_port(status_port, &excluded);
    let mut args: Vec<String> = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT"]
        .map(str::to_owned)
        .to_vec();
    let mut set = |flag: &str, value: String| {
        args.push(flag.to_owned());
        args.push(value);
    };
    set(
        "-i",
        annotated(&INCLUDE_OUTBOUND_IP_RANGES).unwrap_or_else(|| proxy.include_ip_ranges.clone()),
    );
    set(
        "-x",
        annotated(&EXCLUDE_OUTBOUND_IP_RANGES).unwrap_or_else(|| proxy.exclude_ip_ranges.clone()),
    );
    set(
        "-b",
        annotated(&INCLUDE_INBOUND_PORTS).unwrap_or_else(|| proxy.include_inbound_ports.clone()),
    );
    set(
        "-d",
        if excluded.is_empty() {
            ALWAYS_EXCLUDED_INBOUND.to_owned()
        } else {
            format!("{ALWAYS_EXCLUDED_INBOUND},{excluded}")
        },
    );
    for (setting, default) in [
        (&INCLUDE_OUTBOUND_PORTS, &proxy.include_outbound_ports),
        (&EXCLUDE_OUTBOUND_PORTS, &proxy.exclude_outbound_ports),
    ] {
        match annotated(setting) {
            Some(value) => set(setting.flag, value),
            None if !default.is_empty() => set(setting.flag, default.clone()),
            None => {}
        }
    }
    if let Some(value) = annotated(&EXCLUDE_INTERFACES) {
        set(EXCLUDE_INTERFACES.flag, value);
    }
    check(&args, annotations)?;
    Ok(args)
}

/// Istio's `excludeInboundPort`: `port` added to the comma-separated `list` unless it is 0 or
/// listed already.
fn with_status_port(port: u16, list: &str) -> String {
    if port == 0 {
        return list.to_owned();
    }
    let port = port.to_string();
    if list.split(',').any(|p| p == port) {
        return list.to_owned();
    }
    let mut ports: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    ports.push(&port);
    ports.join(",")
}

/// Parses `args` as `remora-init` will; a bad value is reported against the annotation (or
/// injection value) it came from.
fn check(args: &[String], annotations: &BTreeMap<String, String>) -> Result<(), InjectError> {
    let argv = std::iter::once(INIT_COMMAND.to_owned()).chain(args.iter().cloned());
    let problem = match Cli::try_parse_from(argv) {
        Ok(cli) => match cli.validate() {
            Ok(_) => return Ok(()),
            Err(error) => error.to_string(),
        },
        Err(error) => error.to_string(),
    };
    let all = [
        &INCLUDE_OUTBOUND_IP_RANGES,
        &EXCLUDE_OUTBOUND_IP_RANGES,
        &INCLUDE_INBOUND_PORTS,
        &EXCLUDE_INBOUND_PORTS,
        &INCLUDE_OUTBOUND_PORTS,
        &EXCLUDE_OUTBOUND_PORTS,
        &EXCLUDE_INTERFACES,
    ];
    // The first annotation refused on its own (over the defaults) is the culprit.
    for setting in all {
        if let Some(value) = annotations.get(setting.annotation) {
            let alone = with_flag(setting.flag, value);
            let refused = match Cli::try_parse_from(alone) {
                Ok(cli) => cli.validate().err().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(reason) = refused {
                return Err(InjectError::annotation(setting.annotation, value, &reason));
            }
        }
    }
    Err(InjectError::Values(format!(
        "the init container's arguments are refused: {problem}"
    )))
}

/// `remora-init` with Istio's default arguments, `flag` set to `value`.
fn with_flag(flag: &str, value: &str) -> Vec<String> {
    let mut argv = vec![INIT_COMMAND.to_owned()];
    let mut replaced = false;
    for pair in INJECTOR_DEFAULT_ARGS.chunks(2) {
        if let [name, default] = pair {
            argv.push((*name).to_owned());
            if *name == flag {
                argv.push(value.to_owned());
                replaced = true;
            } else {
                argv.push((*default).to_owned());
            }
        }
    }
    if !replaced {
        argv.push(flag.to_owned());
        argv.push(value.to_owned());
    }
    argv
}

#[cfg(test)]
mod tests;
