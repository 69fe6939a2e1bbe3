//! The blocks of a traffic policy, each read on its own: load balancer, connection pool, outlier
//! detection (Envoy's defaults written out) and TLS mode, what the sidecar cannot do yet rejected
//! by name.

use remora_api::proto::config as proto;

use crate::config::routing::istio::{
    checks::{is_set, ranged, Problems},
    duration::millis,
    spec::{ConnectionPoolSpec, LoadBalancerSpec, OutlierDetectionSpec, TlsSpec},
};

pub(super) fn load_balancing(spec: LoadBalancerSpec, path: &str, p: &mut Problems) -> String {
    for (field, value) in [
        ("consistentHash", &spec.consistent_hash),
        ("localityLbSetting", &spec.locality_lb_setting),
        ("zoneAwareLbSetting", &spec.zone_aware_lb_setting),
        ("warmupDurationSecs", &spec.warmup_duration_secs),
        ("warmup", &spec.warmup),
    ] {
        if is_set(value) {
            p.unsupported(&format!("{path}.{field}"));
        }
    }
    match spec.simple.as_deref() {
        None | Some("UNSPECIFIED") => String::new(),
        // Deprecated, and Istio's synonym.
        Some("LEAST_CONN") => "LEAST_REQUEST".to_owned(),
        Some(simple @ ("ROUND_ROBIN" | "LEAST_REQUEST" | "RANDOM" | "PASSTHROUGH")) => {
            simple.to_owned()
        }
        Some(other) => {
            p.add(
                &format!("{path}.simple"),
                format!(
                    "{other:?} is not one of UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH"
                ),
            );
            String::new()
        }
    }
}

pub(super) fn pool(
    spec: ConnectionPoolSpec,
    path: &str,
    p: &mut Problems,
) -> proto::ConnectionPool {
    let int32 = 0..=i64::from(i32::MAX);
    let mut out = proto::ConnectionPool::default();
    if spec.tcp.is_none() && spec.http.is_none() {
        p.add(path, "must set tcp or http");
    }
    if let Some(tcp) = spec.tcp {
        let path = format!("{path}.tcp");
        if let Some(max) = tcp.max_connections {
            out.max_connections =
                ranged(max, int32.clone(), &format!("{path}.maxConnections"), p).unwrap_or(0);
        }
        for (field, value) in [
            ("connectTimeout", &tcp.connect_timeout),
            ("tcpKeepalive", &tcp.tcp_keepalive),
            ("maxConnectionDuration", &tcp.max_connection_duration),
            ("idleTimeout", &tcp.idle_timeout),
        ] {
            if is_set(value) {
                p.unsupported(&format!("{path}.{field}"));
            }
        }
    }
    if let Some(http) = spec.http {
        let path = format!("{path}.http");
        let mut limit = |value: Option<i64>, field: &str| {
            value.map_or(0, |v| {
                ranged(v, int32.clone(), &format!("{path}.{field}"), p).unwrap_or(0)
            })
        };
        out.http1_max_pending_requests =
            limit(http.http1_max_pending_requests, "http1MaxPendingRequests");
        out.http2_max_requests = limit(http.http2_max_requests, "http2MaxRequests");
        out.max_requests_per_connection =
            limit(http.max_requests_per_connection, "maxRequestsPerConnection");
        out.max_retries = limit(http.max_retries, "maxRetries");
        if limit(http.max_concurrent_streams, "maxConcurrentStreams") > 0 {
            p.unsupported(&format!("{path}.maxConcurrentStreams"));
        }
        for (field, value) in [
            ("idleTimeout", &http.idle_timeout),
            ("http2KeepAlive", &http.http2_keep_alive),
        ] {
            if is_set(value) {
                p.unsupported(&format!("{path}.{field}"));
            }
        }
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT") => {}
            Some("DO_NOT_UPGRADE" | "UPGRADE") => {
                p.unsupported(&format!("{path}.h2UpgradePolicy"));
            }
            Some(other) => p.add(
                &format!("{path}.h2UpgradePolicy"),
                format!("{other:?} is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
            ),
        }
        if http.use_client_protocol == Some(true) {
            p.unsupported(&format!("{path}.useClientProtocol"));
        }
    }
    out
}

/// Envoy's outlier detection defaults, which Istio leaves in place for unset fields: ejection
/// after 5 consecutive 5xx (gateway errors are counted but eject nobody), checked every 10 s,
/// ejected for 30 s, at most 10% of the endpoints.
pub(super) fn outlier(
    spec: OutlierDetectionSpec,
    path: &str,
    p: &mut Problems,
) -> proto::OutlierDetection {
    let at = |field: &str| format!("{path}.{field}");
    // `consecutiveErrors` is deprecated and Istio translates it to nothing.
    if let Some(errors) = spec.consecutive_errors {
        ranged(errors, 0..=i64::from(i32::MAX), &at("consecutiveErrors"), p);
    }
    if spec.split_external_local_origin_errors == Some(true) {
        p.unsupported(&at("splitExternalLocalOriginErrors"));
    }
    for (field, value) in [
        (
            "consecutiveLocalOriginFailures",
            &spec.consecutive_local_origin_failures,
        ),
        (
            "outlierDetectionHttpErrorCodes",
            &spec.outlier_detection_http_error_codes,
        ),
    ] {
        if is_set(value) {
            p.unsupported(&at(field));
        }
    }
    let count = |value: Option<i64>, field: &str, default: u32, p: &mut Problems| {
        value.map_or(default, |v| {
            ranged(v, 0..=i64::from(u32::MAX), &at(field), p).unwrap_or(default)
        })
    };
    let consecutive_5xx_errors = count(spec.consecutive_5xx_errors, "consecutive5xxErrors", 5, p);
    let consecutive_gateway_errors = count(
        spec.consecutive_gateway_errors,
        "consecutiveGatewayErrors",
        0,
        p,
    );
    let max_ejection_percent = match spec.max_ejection_percent {
        None => 10,
        Some(percent) => match ranged(percent, 0..=100, &at("maxEjectionPercent"), p) {
            Some(0) | None => 10,
            Some(percent) => percent,
        },
    };
    if let Some(percent) = spec.min_health_percent {
        if ranged(percent, 0..=100, &at("minHealthPercent"), p).is_some_and(|v| v > 0) {
            p.unsupported(&at("minHealthPercent"));
        }
    }
    proto::OutlierDetection {
        consecutive_5xx_errors,
        consecutive_gateway_errors,
        interval_ms: spec
            .interval
            .map_or(10_000, |interval| millis(interval, &at("interval"), p)),
        base_ejection_time_ms: spec
            .base_ejection_time
            .map_or(30_000, |base| millis(base, &at("baseEjectionTime"), p)),
        max_ejection_percent,
    }
}

/// The `tls` block: the mode, and for `SIMPLE` and `MUTUAL` what the sidecar originates with
/// (its files are paths in the sidecar's filesystem, as Istio's are).
pub(super) fn tls_mode(
    spec: TlsSpec,
    path: &str,
    p: &mut Problems,
) -> (String, Option<proto::OriginateTls>) {
    let at = |field: &str| format!("{path}.{field}");
    for (field, value) in [
        ("credentialName", &spec.credential_name),
        ("caCrl", &spec.ca_crl),
    ] {
        if is_set(value) {
            p.unsupported(&at(field));
        }
    }
    let mode = match spec.mode.as_deref() {
        // The protobuf default.
        None | Some("DISABLE") => "DISABLE",
        Some(mode @ ("ISTIO_MUTUAL" | "SIMPLE" | "MUTUAL")) => mode,
        Some(other) => {
            p.add(
                &at("mode"),
                format!("{other:?} is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
            );
            return (String::new(), None);
        }
    };
    let originate = proto::OriginateTls {
        ca_certificates: spec.ca_certificates.unwrap_or_default(),
        client_certificate: spec.client_certificate.unwrap_or_default(),
        private_key: spec.private_key.unwrap_or_default(),
        sni: spec.sni.unwrap_or_default(),
        subject_alt_names: spec.subject_alt_names.unwrap_or_default(),
        insecure_skip_verify: spec.insecure_skip_verify.unwrap_or(false),
    };
    let fields = [
        ("caCertificates", !originate.ca_certificates.is_empty()),
        (
            "clientCertificate",
            !originate.client_certificate.is_empty(),
        ),
        ("privateKey", !originate.private_key.is_empty()),
        ("sni", !originate.sni.is_empty()),
        ("subjectAltNames", !originate.subject_alt_names.is_empty()),
        ("insecureSkipVerify", originate.insecure_skip_verify),
    ];
    match mode {
        "SIMPLE" | "MUTUAL" => {
            let key_pair = [
                ("clientCertificate", &originate.client_certificate),
                ("privateKey", &originate.private_key),
            ];
            for (field, value) in key_pair {
                if mode == "MUTUAL" && value.is_empty() {
                    p.add(&at(field), "required with mode MUTUAL");
                } else if mode == "SIMPLE" && !value.is_empty() {
                    p.add(&at(field), "only with mode MUTUAL");
                }
            }
            (mode.to_owned(), Some(originate))
        }
        _ => {
            for (field, set) in fields {
                if set {
                    p.add(
                        &at(field),
                        format!("only with mode SIMPLE or MUTUAL (the mode is {mode})"),
                    );
                }
            }
            (mode.to_owned(), None)
        }
    }
}
