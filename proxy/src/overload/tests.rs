use remora_api::{proto::config as proto, Snapshot};

use super::*;

/// Counters of a sidecar whose `ProxyConfig` sets `limits`.
fn overload(limits: proto::OverloadLimits) -> (Arc<Overload>, Arc<Metrics>) {
    let snapshot = proto::Snapshot {
        mesh: Some(proto::MeshSettings {
            overload: Some(limits),
            ..Default::default()
        }),
        ..Default::default()
    };
    let config = Arc::new(Config::new(
        Snapshot::try_from(snapshot).expect("valid snapshot"),
    ));
    let metrics = Arc::new(Metrics::default());
    (Overload::new(config, metrics.clone()), metrics)
}

fn refused(metrics: &Metrics, kind: &str, listener: &str) -> String {
    let text = metrics.encode();
    let name = format!("remora_proxy_overload_{kind}_refused_total{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&name))
        .unwrap_or("0")
        .to_owned()
}

#[test]
fn each_listener_holds_its_limit_and_frees_places_as_connections_end() {
    let (overload, metrics) = overload(proto::OverloadLimits {
        listener_max_connections: 2,
        ..Default::default()
    });
    let first = overload.admit(Listener::Inbound).expect("first");
    let _second = overload.admit(Listener::Inbound).expect("second");
    assert!(overload.admit(Listener::Inbound).is_none());
    // Another listener has its own places.
    let _outbound = overload.admit(Listener::Outbound).expect("outbound");
    drop(first);
    let _third = overload.admit(Listener::Inbound).expect("a freed place");
    assert!(overload.admit(Listener::Inbound).is_none());
    assert_eq!(refused(&metrics, "connections", "inbound"), "2");
    assert_eq!(refused(&metrics, "connections", "outbound"), "0");
}

#[test]
fn the_global_limit_counts_every_listener() {
    let (overload, metrics) = overload(proto::OverloadLimits {
        global_max_connections: 2,
        ..Default::default()
    });
    let _a = overload.admit(Listener::Inbound).expect("a");
    let b = overload.admit(Listener::Tunnel).expect("b");
    assert!(overload.admit(Listener::Outbound).is_none());
    // A refusal by the global limit gives its listener's place back.
    drop(b);
    let _c = overload.admit(Listener::Outbound).expect("c");
    assert!(overload.admit(Listener::Tunnel).is_none());
    assert_eq!(refused(&metrics, "connections", "outbound"), "1");
    assert_eq!(refused(&metrics, "connections", "tunnel"), "1");
}

#[test]
fn requests_wait_up_to_their_listeners_limit() {
    let (overload, metrics) = overload(proto::OverloadLimits {
        listener_max_pending_requests: 1,
        ..Default::default()
    });
    let gate = RequestGate {
        overload: overload.clone(),
        listener: Listener::Tunnel,
    };
    let waiting = gate.admit().expect("first");
    assert!(gate.admit().is_none());
    assert!(overload.admit_request(Listener::Inbound).is_some());
    drop(waiting);
    assert!(gate.admit().is_some());
    assert_eq!(refused(&metrics, "requests", "tunnel"), "1");
}

#[test]
fn unset_limits_are_the_defaults() {
    let (overload, _) = overload(proto::OverloadLimits::default());
    let permits: Vec<_> = (0..1000)
        .map(|_| overload.admit(Listener::Outbound))
        .collect();
    assert!(permits.iter().all(Option::is_some));
}
