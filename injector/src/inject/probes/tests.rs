use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
};

use super::*;

fn app(name: &str) -> Container {
    Container {
        name: name.to_owned(),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: 8080,
            ..ContainerPort::default()
        }]),
        ..Container::default()
    }
}

fn http(port: IntOrString, scheme: Option<&str>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".to_owned()),
            port,
            scheme: scheme.map(str::to_owned),
            http_headers: Some(vec![HTTPHeader {
                name: "x-probe".to_owned(),
                value: "1".to_owned(),
            }]),
            ..HTTPGetAction::default()
        }),
        timeout_seconds: Some(2),
        period_seconds: Some(7),
        ..Probe::default()
    }
}

#[test]
fn probes_move_to_the_status_port_and_their_originals_to_the_sidecar() {
    let mut web = app("web");
    web.readiness_probe = Some(http(IntOrString::String("http".to_owned()), Some("HTTPS")));
    web.liveness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(8080),
            ..TCPSocketAction::default()
        }),
        ..Probe::default()
    });
    web.startup_probe = Some(Probe {
        grpc: Some(GRPCAction {
            port: 9090,
            service: Some("health".to_owned()),
        }),
        timeout_seconds: Some(10),
        ..Probe::default()
    });
    let mut worker = app("worker");
    worker.liveness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec!["true".to_owned()]),
        }),
        ..Probe::default()
    });
    // A port name the container does not have: rewritten, but nothing to perform.
    worker.readiness_probe = Some(http(IntOrString::String("admin".to_owned()), None));
    let mut containers = vec![web, worker];
    let probers = rewrite(&mut containers, 15020);

    let expected = json!({
        "/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS",
            "httpHeaders": [{"name": "x-probe", "value": "1"}]}, "timeoutSeconds": 2},
        "/app-health/web/livez": {"tcpSocket": {"port": 8080}},
        "/app-health/web/startupz": {"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 10},
    });
    assert_eq!(serde_json::to_value(&probers).expect("json"), expected);

    let rewritten = |probe: &Option<Probe>| {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet");
        (http.path.unwrap_or_default(), http.port, http.scheme)
    };
    let web = &containers[0];
    assert_eq!(
        rewritten(&web.readiness_probe),
        (
            "/app-health/web/readyz".to_owned(),
            IntOrString::Int(15020),
            Some("HTTP".to_owned())
        )
    );
    let readiness = web.readiness_probe.as_ref().expect("kept");
    assert_eq!(
        (readiness.period_seconds, readiness.timeout_seconds),
        (Some(7), Some(2))
    );
    assert!(readiness
        .http_get
        .as_ref()
        .and_then(|h| h.http_headers.as_ref())
        .is_some());
    assert_eq!(
        rewritten(&web.liveness_probe),
        (
            "/app-health/web/livez".to_owned(),
            IntOrString::Int(15020),
            None
        )
    );
    assert!(web
        .liveness_probe
        .as_ref()
        .is_some_and(|p| p.tcp_socket.is_none()));
    assert!(web.startup_probe.as_ref().is_some_and(|p| p.grpc.is_none()));
    let worker = &containers[1];
    assert!(worker
        .liveness_probe
        .as_ref()
        .is_some_and(|p| p.exec.is_some() && p.http_get.is_none()));
    assert_eq!(
        rewritten(&worker.readiness_probe).0,
        "/app-health/worker/readyz"
    );

    // Rewritten already: the status port is not a probe to perform.
    let mut again = containers.clone();
    assert!(rewrite(&mut again, 15020).is_empty());
}

#[test]
fn an_earlier_injections_originals_win() {
    let previous = r#"{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}"#;
    let new = BTreeMap::from([(
        "/app-health/web/livez".to_owned(),
        json!({"tcpSocket": {"port": 8080}}),
    )]);
    let merged = env_value(Some(previous), new).expect("set");
    assert_eq!(
        merged,
        r#"{"/app-health/web/livez":{"tcpSocket":{"port":8080}},"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}"#
    );
    assert_eq!(env_value(None, BTreeMap::new()), None);
}

#[test]
fn the_annotation_turns_rewriting_off() {
    let values = Values::default();
    let annotated = |v: &str| BTreeMap::from([(REWRITE_ANNOTATION.to_owned(), v.to_owned())]);
    assert!(enabled(&values, &BTreeMap::new()));
    assert!(!enabled(&values, &annotated("false")));
    assert!(
        enabled(&values, &annotated("maybe")),
        "not a boolean: the values decide"
    );
}
