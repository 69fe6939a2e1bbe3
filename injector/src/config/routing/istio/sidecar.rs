//! The sidecar's own check of what the control plane accepts: a snapshot compiled with the
//! sidecar's route compiler (`remora_api`). Istio's validation passes things the sidecar refuses
//! (a regex its engine does not take, say), and one such object would make every client refuse
//! its whole snapshot; both readers run their result through this before keeping it.

use remora_api::proto::config as proto;

/// The problems the sidecar finds in a snapshot of one Service with `ports`, as
/// `(path under the port, problem)`.
pub(super) fn sidecar_problems(ports: Vec<proto::ServicePort>) -> Vec<(String, String)> {
    let snapshot = proto::Snapshot {
        services: vec![proto::Service {
            hostname: "check.invalid".to_owned(),
            ports,
            ..Default::default()
        }],
        ..Default::default()
    };
    let found = match remora_api::Snapshot::try_from(snapshot) {
        Ok(_) => return Vec::new(),
        Err(remora_api::ConfigError::Invalid(found)) => found,
        Err(other) => vec![other.to_string()],
    };
    found
        .into_iter()
        .map(|problem| {
            // `services[0].ports[1].httpRoutes[2].matches[0].path: ...`
            let under_port = problem
                .strip_prefix("services[0].ports[")
                .and_then(|rest| rest.split_once("]."))
                .map_or(problem.as_str(), |(_, rest)| rest);
            let (path, message) = under_port.split_once(": ").unwrap_or(("", under_port));
            // Regex errors come on several lines.
            let message: Vec<&str> = message.lines().map(str::trim).collect();
            (path.to_owned(), message.join(" "))
        })
        .collect()
}
