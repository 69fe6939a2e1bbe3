use super::*;

fn side(edit: impl FnOnce(&mut proto::TelemetrySide)) -> proto::Telemetry {
    let mut side = proto::TelemetrySide::default();
    edit(&mut side);
    proto::Telemetry {
        client: Some(side),
        server: None,
    }
}

#[test]
fn nothing_sent_is_istios_default() {
    let mut problems = Vec::new();
    let telemetry = Telemetry::compile(None, &mut problems);
    assert!(problems.is_empty());
    assert!(telemetry.client.metrics && telemetry.server.metrics);
    assert!(telemetry.client.access_log.is_none());
    assert_eq!(telemetry.server.metric(Metric::RequestsTotal), None);
}

#[test]
fn overrides_compile_with_the_headers_they_read() {
    let source = side(|s| {
        s.metric_overrides.push(proto::MetricOverride {
            metric: "requests_total".into(),
            disabled: false,
            remove_tags: vec!["source_principal".into()],
            tags: [
                (
                    "team".to_owned(),
                    proto::TagValue {
                        value: Some(proto::tag_value::Value::Literal("payments".into())),
                    },
                ),
                (
                    "user".to_owned(),
                    proto::TagValue {
                        value: Some(proto::tag_value::Value::RequestHeader(
                            proto::RequestHeader {
                                name: "X-User".into(),
                                fallback: "unknown".into(),
                            },
                        )),
                    },
                ),
            ]
            .into(),
        });
        s.metric_overrides.push(proto::MetricOverride {
            metric: "request_bytes".into(),
            disabled: true,
            ..Default::default()
        });
    });
    let mut problems = Vec::new();
    let telemetry = Telemetry::compile(Some(&source), &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let client = &telemetry.client;
    let requests = client.metric(Metric::RequestsTotal).expect("overridden");
    assert_eq!(requests.remove, vec!["source_principal".to_owned()]);
    assert_eq!(
        requests.tags,
        vec![
            ("team".to_owned(), TagValue::Literal("payments".into())),
            (
                "user".to_owned(),
                TagValue::RequestHeader {
                    name: "x-user".into(),
                    fallback: "unknown".into()
                }
            ),
        ]
    );
    assert!(
        client
            .metric(Metric::RequestBytes)
            .expect("overridden")
            .disabled
    );
    assert_eq!(client.request_tags(), ["x-user".to_owned()]);
    // The side nothing was sent for keeps the defaults.
    assert!(telemetry.server.request_tags().is_empty());
}

#[test]
fn filters_keep_what_the_expression_keeps() {
    let log = |checks: Vec<(&str, u32)>, any: bool| {
        let source = side(|s| {
            s.access_log = Some(proto::AccessLogPolicy {
                path: "/dev/stdout".into(),
                checks: checks
                    .into_iter()
                    .map(|(op, code)| proto::CodeCheck {
                        op: op.into(),
                        code,
                    })
                    .collect(),
                any_check: any,
                ..Default::default()
            });
        });
        let mut problems = Vec::new();
        let telemetry = Telemetry::compile(Some(&source), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        telemetry.client.access_log.expect("a log").filter
    };
    let errors = log(vec![(">=", 400)], false);
    assert!(!errors.keeps(200) && errors.keeps(400) && errors.keeps(503));
    let odd = log(vec![("==", 418), ("<", 200)], true);
    assert!(odd.keeps(418) && odd.keeps(0) && !odd.keeps(404));
    let band = log(vec![(">", 199), ("<=", 299), ("!=", 204)], false);
    assert!(band.keeps(200) && !band.keeps(204) && !band.keeps(300));
    assert!(log(vec![], false).keeps(500));
    // A connection has no response code: only an unfiltered log has its line.
    assert!(log(vec![], false).keeps_connection());
    assert!(!errors.keeps_connection());
    for name in ["le", "quantile", "__name__", "1x", "a-b"] {
        assert!(!is_label_name(name), "{name}");
    }
    assert!(is_label_name("team") && is_label_name("_x1"));
}

#[test]
fn problems_are_named() {
    let cases: Vec<(proto::Telemetry, &str)> = vec![
        (
            side(|s| {
                s.metric_overrides.push(proto::MetricOverride {
                    metric: "requests".into(),
                    ..Default::default()
                })
            }),
            "telemetry.client.metricOverrides[0].metric: \"requests\" is not a standard metric",
        ),
        (
            side(|s| {
                s.metric_overrides.push(proto::MetricOverride {
                    metric: "requests_total".into(),
                    remove_tags: vec!["bad-name".into()],
                    ..Default::default()
                })
            }),
            "telemetry.client.metricOverrides[0].removeTags: \"bad-name\" is not a label name",
        ),
        (
            side(|s| {
                s.access_log = Some(proto::AccessLogPolicy {
                    path: "/dev/stdout".into(),
                    text_format: "%NOPE%".into(),
                    ..Default::default()
                })
            }),
            "telemetry.client.accessLog: %NOPE% is not a command operator Remora supports",
        ),
        (
            side(|s| {
                s.access_log = Some(proto::AccessLogPolicy {
                    path: "/dev/stdout".into(),
                    checks: vec![proto::CodeCheck {
                        op: "=~".into(),
                        code: 1,
                    }],
                    ..Default::default()
                })
            }),
            "telemetry.client.accessLog.checks[0].op: \"=~\" is not a comparison",
        ),
    ];
    for (source, expected) in cases {
        let mut problems = Vec::new();
        Telemetry::compile(Some(&source), &mut problems);
        assert_eq!(problems, vec![expected.to_owned()]);
    }
}

fn traced(sampling: f64) -> proto::TracingPolicy {
    proto::TracingPolicy {
        sampling,
        provider: Some(proto::TraceProvider {
            name: "otel".into(),
            service: "otel.observability.svc.cluster.local".into(),
            port: 4317,
            timeout_ms: 3000,
            max_tag_length: 256,
            ..proto::TraceProvider::default()
        }),
        ..proto::TracingPolicy::default()
    }
}

#[test]
fn sampling_honours_the_callers_decision_then_draws() {
    let mut problems = Vec::new();
    let compiled = |percent| {
        let source = side(|s| s.tracing = Some(traced(percent)));
        Telemetry::compile(Some(&source), &mut Vec::new())
            .client
            .tracing
            .expect("traced")
    };
    let one = compiled(1.0);
    assert!(problems.is_empty());
    assert_eq!(one.provider.export, spans::Export::OtlpGrpc);
    assert_eq!(one.provider.max_tag_length, Some(256));
    // (caller's decision, draw, sampled)
    let cases = [
        (Some(true), 999_999, true),
        (Some(false), 0, false),
        (None, 0, true),
        (None, 9_999, true),
        (None, 10_000, false),
        (None, 1_999_999, false),
    ];
    for (parent, draw, expected) in cases {
        assert_eq!(one.sampled(parent, || draw), expected, "{parent:?} {draw}");
    }
    assert!(!compiled(0.0).sampled(None, || 0));
    assert!(compiled(100.0).sampled(None, || 999_999));
    assert!(one.sampled(Some(true), || unreachable!(
        "no draw when the caller decided"
    )));
    // A bad policy is a problem named by its path, and the side does not trace.
    let mut bad = traced(150.0);
    let source = side(|s| s.tracing = Some(bad.clone()));
    let telemetry = Telemetry::compile(Some(&source), &mut problems);
    assert!(telemetry.client.tracing.is_none());
    assert_eq!(
        problems,
        ["telemetry.client.tracing.sampling: 150 is not a percentage between 0 and 100"]
    );
    bad.sampling = 1.0;
    if let Some(provider) = bad.provider.as_mut() {
        provider.protocol = proto::trace_provider::Protocol::OtlpHttp.into();
    }
    let source = side(|s| s.tracing = Some(bad));
    problems.clear();
    Telemetry::compile(Some(&source), &mut problems);
    assert_eq!(
        problems,
        ["telemetry.client.tracing.provider.path: \"\" is not a path"]
    );
}
