use super::*;

fn telemetry(namespace: &str, name: &str, created: &str, spec: &str) -> Result<Telemetry, String> {
    let text = format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  \
         namespace: {namespace}\n  creationTimestamp: \"{created}\"\nspec:\n{spec}"
    );
    let value: Value = yaml::from_str(&text).map_err(|e| e.to_string())?;
    read(value, namespace, name)
}

fn ok(namespace: &str, name: &str, created: &str, spec: &str) -> Telemetry {
    telemetry(namespace, name, created, spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn mesh(text: &str) -> MeshConfig {
    MeshConfig::parse(text).expect("mesh config")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn what_remora_does_not_do_is_refused_by_name() {
    let cases = [
        (
            "  tracing:\n  - randomSamplingPercentage: 101\n",
            "spec.tracing[0].randomSamplingPercentage: 101 is not a percentage",
        ),
        (
            "  tracing:\n  - customTags:\n      t: {formatter: {value: \"%REQ(x)%\"}}\n",
            "spec.tracing[0].customTags.t.formatter: not supported",
        ),
        (
            "  tracing:\n  - customTags:\n      t: {literal: {value: a}, header: {name: x}}\n",
            "spec.tracing[0].customTags.t: set exactly one",
        ),
        (
            "  tracing:\n  - match: {mode: BOTH}\n",
            "spec.tracing[0].match.mode",
        ),
        (
            "  targetRefs:\n  - {kind: Gateway, name: gw}\n",
            "spec.targetRefs: they select gateways and waypoints",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {customMetric: my_metric}\n",
            "spec.metrics[0].overrides[0].match.customMetric: custom metrics are not supported",
        ),
        (
            "  metrics:\n  - reportingInterval: 5s\n",
            "spec.metrics[0].reportingInterval: not supported",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {metric: REQUESTS}\n",
            "spec.metrics[0].overrides[0].match.metric: \"REQUESTS\" is not an Istio metric",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {mode: BOTH}\n",
            "spec.metrics[0].overrides[0].match.mode: \"BOTH\" is not one of",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        user: {value: \"request.url_path\"}\n",
            "spec.metrics[0].overrides[0].tagOverrides.user.value: \"request.url_path\" is not an expression Remora evaluates",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        user: {operation: REMOVE, value: \"'x'\"}\n",
            "tagOverrides.user.value: must not be set with REMOVE",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        user: {}\n",
            "tagOverrides.user.value: required with UPSERT",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        bad-name: {value: \"'x'\"}\n",
            "tagOverrides.bad-name: not a Prometheus label name",
        ),
        (
            "  accessLogging:\n  - filter: {expression: \"response.code >= 400 && response.code < 500 || response.code == 0\"}\n",
            "spec.accessLogging[0].filter.expression: ",
        ),
        (
            "  accessLogging:\n  - filter: {expression: \"response.flags != '-'\"}\n",
            "is not a filter Remora evaluates",
        ),
        ("  metrics:\n  - providerz: []\n", "unknown field `providerz`"),
    ];
    for (spec, expected) in cases {
        let err = telemetry("demo", "t", "", spec).expect_err(spec);
        assert!(err.contains(expected), "{spec}: {err}");
    }
}

#[test]
fn tag_values_are_read_as_istio_writes_them() {
    use proto::tag_value::Value as V;
    let header = |name: &str, fallback: &str| {
        Some(V::RequestHeader(proto::RequestHeader {
            name: name.into(),
            fallback: fallback.into(),
        }))
    };
    let cases = [
        ("'payments'", Some(V::Literal("payments".into()))),
        ("\"v2\"", Some(V::Literal("v2".into()))),
        ("request.headers['X-User']", header("x-user", "unknown")),
        ("request.host", header(":authority", "unknown")),
        ("request.method", header(":method", "unknown")),
        (
            "has(request.headers['x-user']) ? request.headers['x-user'] : 'anonymous'",
            header("x-user", "anonymous"),
        ),
    ];
    for (expression, expected) in cases {
        let value = tag_value(expression, "v").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value.value, expected, "{expression}");
    }
    // The tested header must be the one taken.
    assert!(tag_value(
        "has(request.headers['a']) ? request.headers['b'] : 'x'",
        "v"
    )
    .is_err());
}

#[test]
fn filters_are_read_into_code_checks() {
    let check = |op: &str, code| proto::CodeCheck {
        op: op.into(),
        code,
    };
    let cases = [
        ("response.code >= 400", vec![check(">=", 400)], false),
        (
            "response.code >= 500 || response.code == 429",
            vec![check(">=", 500), check("==", 429)],
            true,
        ),
        (
            "response.code>199 && response.code<300",
            vec![check(">", 199), check("<", 300)],
            false,
        ),
    ];
    for (expression, checks, any) in cases {
        assert_eq!(
            code_filter(expression, "f"),
            Ok((checks, any)),
            "{expression}"
        );
    }
}

#[test]
fn resources_merge_root_then_namespace_then_workload() {
    let mesh = mesh("accessLogFile: /var/log/legacy.log\n");
    let root = ok(
        "istio-system",
        "mesh-default",
        "2026-01-01T00:00:00Z",
        "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides:\n        team: {value: \"'platform'\"}\n  accessLogging:\n  - providers: [{name: envoy}]\n",
    );
    let namespace = ok(
        "demo",
        "ns",
        "2026-01-02T00:00:00Z",
        "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      tagOverrides:\n        source_principal: {operation: REMOVE}\n        team: {value: \"'payments'\"}\n  accessLogging:\n  - filter: {expression: \"response.code >= 400\"}\n",
    );
    // A younger namespace-wide one is ignored, as istiod ignores it.
    let younger = ok(
        "demo",
        "zz-younger",
        "2026-03-01T00:00:00Z",
        "  metrics:\n  - overrides:\n    - disabled: true\n",
    );
    let workload = ok(
        "demo",
        "httpbin",
        "2026-01-03T00:00:00Z",
        "  selector:\n    matchLabels: {app: httpbin}\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_SIZE}\n      disabled: true\n",
    );
    let other_namespace = ok(
        "shop",
        "off",
        "2026-01-01T00:00:00Z",
        "  accessLogging:\n  - disabled: true\n",
    );
    let all = [&root, &namespace, &younger, &workload, &other_namespace];
    let httpbin = resolve(all, "demo", &labels(&[("app", "httpbin")]), &mesh, None);
    let server = httpbin.server.expect("server side");
    assert!(!server.metrics_disabled);
    let requests = server
        .metric_overrides
        .iter()
        .find(|o| o.metric == "requests_total")
        .expect("requests_total overridden");
    assert_eq!(requests.remove_tags, vec!["source_principal".to_owned()]);
    assert_eq!(
        requests.tags["team"].value,
        Some(proto::tag_value::Value::Literal("payments".into()))
    );
    assert!(server
        .metric_overrides
        .iter()
        .any(|o| o.metric == "request_bytes" && o.disabled));
    let log = server.access_log.expect("a log");
    assert_eq!(log.path, "/dev/stdout");
    assert_eq!(
        log.checks,
        vec![proto::CodeCheck {
            op: ">=".into(),
            code: 400
        }]
    );
    // The client side: only the root's tag, no filter.
    let client = httpbin.client.expect("client side");
    let requests = client
        .metric_overrides
        .iter()
        .find(|o| o.metric == "requests_total")
        .expect("overridden");
    assert!(requests.remove_tags.is_empty());
    assert_eq!(
        requests.tags["team"].value,
        Some(proto::tag_value::Value::Literal("platform".into()))
    );
    // The selector's override has no mode: both sides.
    let disabled: Vec<&str> = client
        .metric_overrides
        .iter()
        .filter(|o| o.disabled)
        .map(|o| o.metric.as_str())
        .collect();
    assert_eq!(disabled, ["request_bytes"]);

    // Another workload of demo does not get the selector's override.
    let sleep = resolve(all, "demo", &labels(&[("app", "sleep")]), &mesh, None);
    assert!(!sleep
        .server
        .expect("server")
        .metric_overrides
        .iter()
        .any(|o| o.metric == "request_bytes"));
    // shop disables its logs; a namespace without any Telemetry... gets the root's.
    let shop = resolve(all, "shop", &labels(&[]), &mesh, None);
    assert!(shop.server.expect("server").access_log.is_none());
}

#[test]
fn without_telemetry_the_mesh_config_decides() {
    let none: [&Telemetry; 0] = [];
    let quiet = resolve(none, "demo", &labels(&[]), &mesh(""), None);
    let client = quiet.client.expect("client");
    assert!(!client.metrics_disabled && client.access_log.is_none());
    let legacy = resolve(
        none,
        "demo",
        &labels(&[]),
        &mesh("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n"),
        None,
    );
    let log = legacy.server.expect("server").access_log.expect("a log");
    assert!(log.json && log.path == "/dev/stdout");
    // defaultProviders without prometheus: no metrics.
    let no_metrics = resolve(
        none,
        "demo",
        &labels(&[]),
        &mesh("defaultProviders:\n  metrics: []\n"),
        None,
    );
    assert!(no_metrics.client.expect("client").metrics_disabled);
    // A file provider with its own format.
    let custom = mesh(
        "extensionProviders:\n- name: file\n  envoyFileAccessLog:\n    path: /tmp/a.log\n    logFormat:\n      text: \"%RESPONSE_CODE%\\n\"\ndefaultProviders:\n  accessLogging: [file]\n",
    );
    let log = resolve(none, "demo", &labels(&[]), &custom, None)
        .client
        .expect("client")
        .access_log
        .expect("a log");
    assert_eq!(
        (log.path.as_str(), log.text_format.as_str()),
        ("/tmp/a.log", "%RESPONSE_CODE%\n")
    );
}

#[test]
fn a_later_access_log_rule_replaces_disabled_and_filter() {
    let mesh =
        mesh("accessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\n");
    let root = ok(
        "istio-system",
        "off",
        "2026-01-01T00:00:00Z",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true\n    filter: {expression: \"response.code >= 500\"}\n",
    );
    let namespace = ok(
        "demo",
        "on",
        "2026-01-02T00:00:00Z",
        "  accessLogging:\n  - providers: [{name: envoy}]\n",
    );
    let log = resolve([&root, &namespace], "demo", &labels(&[]), &mesh, None)
        .server
        .expect("server")
        .access_log
        .expect("enabled again by the namespace's rule");
    assert!(log.checks.is_empty(), "the namespace's rule has no filter");
    // The built-in provider prints the mesh's format: its JSON fields.
    assert_eq!(
        (log.json, log.json_fields.len()),
        (true, 1),
        "{:?}",
        log.json_fields
    );
    assert_eq!(log.json_fields[0].format, "%RESPONSE_CODE%");
}

#[test]
fn providers_must_exist_and_provide_what_they_are_named_for() {
    let mesh = mesh(
        "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.obs.svc.cluster.local, port: 4317}\n",
    );
    let cases = [
        (
            "  metrics:\n  - providers: [{name: missing}]\n",
            "spec.metrics[0].providers[0]: no extension provider \"missing\"",
        ),
        (
            "  metrics:\n  - providers: [{name: otel}]\n",
            "spec.metrics[0].providers[0]: \"otel\" does not provide metrics",
        ),
        (
            "  accessLogging:\n  - providers: [{name: otel}]\n",
            "spec.accessLogging[0].providers[0]: \"otel\" does not provide access logs",
        ),
        (
            "  accessLogging:\n  - providers: [{name: envoy}, {name: envoy}]\n",
            "spec.accessLogging[0].providers: a sidecar writes one access log",
        ),
    ];
    for (spec, expected) in cases {
        let err = ok("demo", "t", "", spec)
            .check_providers(&mesh)
            .expect_err(spec);
        assert!(err.contains(expected), "{spec}: {err}");
    }
    ok(
        "demo",
        "t",
        "",
        "  metrics:\n  - providers: [{name: prometheus}]\n  accessLogging:\n  - providers: [{name: envoy}]\n",
    )
    .check_providers(&mesh)
    .expect("built-in providers");
}

/// A mesh with an OpenTelemetry collector and a Zipkin one.
const TRACING_MESH: &str = "extensionProviders:\n\
- name: otel\n  opentelemetry: {service: observability/otel.observability.svc.cluster.local, port: 4317}\n\
- name: zipkin\n  zipkin: {service: zipkin.observability, port: 9411}\n\
- name: datadog\n  datadog: {service: dd.observability, port: 8126}\n";

#[test]
fn tracing_merges_as_istiod_merges_it() {
    let mesh = mesh(&format!(
        "{TRACING_MESH}defaultProviders:\n  tracing: [zipkin]\n"
    ));
    let root = ok(
        "istio-system",
        "mesh",
        "2026-01-01T00:00:00Z",
        "  tracing:\n  - randomSamplingPercentage: 10\n    customTags:\n      team: {literal: {value: platform}}\n",
    );
    let namespace = ok(
        "demo",
        "ns",
        "2026-01-02T00:00:00Z",
        "  tracing:\n  - providers: [{name: otel}]\n    match: {mode: SERVER}\n    customTags:\n      user: {header: {name: X-User, defaultValue: nobody}}\n  - match: {mode: CLIENT}\n    disableContextPropagation: true\n",
    );
    let resolved = resolve([&root, &namespace], "demo", &labels(&[]), &mesh, None);
    let server = resolved.server.expect("server").tracing.expect("traced");
    let provider = server.provider.expect("provider");
    assert_eq!(provider.name, "otel");
    assert_eq!(provider.service, "otel.observability.svc.cluster.local");
    assert_eq!(server.sampling, 10.0, "the root's sampling is kept");
    assert_eq!(
        server.custom_tags.len(),
        1,
        "the namespace's tags replace the root's"
    );
    assert_eq!(server.custom_tags[0].name, "user");
    let client = resolved.client.expect("client").tracing.expect("traced");
    assert_eq!(client.provider.expect("provider").name, "zipkin");
    assert!(client.propagation_disabled && !server.propagation_disabled);
    assert_eq!(client.custom_tags[0].name, "team");
    // Another namespace: the root's rule over the default provider.
    let shop = resolve([&root, &namespace], "shop", &labels(&[]), &mesh, None);
    let shop = shop.server.expect("server").tracing.expect("traced");
    assert_eq!(
        shop.provider.expect("provider").protocol(),
        proto::trace_provider::Protocol::Zipkin
    );
    // A workload's rule: span reporting off (no tracing at all on that side, as istiod
    // configures none) and the inherited tags cleared by an empty map.
    let workload = ok(
        "demo",
        "quiet",
        "2026-01-03T00:00:00Z",
        "  selector:\n    matchLabels: {app: quiet}\n  tracing:\n  - match: {mode: SERVER}\n    disableSpanReporting: true\n  - match: {mode: CLIENT}\n    customTags: {}\n",
    );
    let quiet = resolve(
        [&root, &namespace, &workload],
        "demo",
        &labels(&[("app", "quiet")]),
        &mesh,
        None,
    );
    assert!(quiet.server.expect("server").tracing.is_none());
    let client = quiet.client.expect("client").tracing.expect("traced");
    assert!(client.custom_tags.is_empty());
}

#[test]
fn without_a_tracing_provider_the_legacy_tracer_or_nothing() {
    let none: [&Telemetry; 0] = [];
    // Istio's defaults: no tracer at all.
    let nothing = resolve(none, "demo", &labels(&[]), &mesh(""), None);
    assert!(nothing.client.expect("client").tracing.is_none());
    // The legacy tracer: enableTracing (the default) and a Zipkin address, 1% (0 is unset).
    let legacy_mesh = mesh(
        "defaultConfig:\n  tracing:\n    sampling: 0\n    zipkin: {address: \"zipkin.istio-system:9411\"}\n",
    );
    let legacy = resolve(none, "demo", &labels(&[]), &legacy_mesh, None);
    let tracing = legacy
        .client
        .expect("client")
        .tracing
        .expect("legacy tracer");
    assert_eq!(tracing.sampling, 1.0);
    let provider = tracing.provider.expect("zipkin");
    assert_eq!(
        (provider.service.as_str(), provider.port),
        ("zipkin.istio-system.svc.cluster.local", 9411)
    );
    // The pod's own sampling and collector.
    let pod = ProxyConfig::from_annotation(
        "tracing:\n  sampling: 50\n  zipkin: {address: \"jaeger.tracing:9411\"}\n",
    )
    .expect("proxy config");
    let own = resolve(none, "demo", &labels(&[]), &mesh(""), Some(&pod));
    let own = own.server.expect("server").tracing.expect("traced");
    assert_eq!(own.sampling, 50.0);
    assert_eq!(
        own.provider.expect("provider").service,
        "jaeger.tracing.svc.cluster.local"
    );
    // enableTracing: false, nothing.
    let off = resolve(
        none,
        "demo",
        &labels(&[]),
        &mesh("enableTracing: false\ndefaultConfig:\n  tracing:\n    zipkin: {address: \"z.ns:9411\"}\n"),
        None,
    );
    assert!(off.client.expect("client").tracing.is_none());
    // A rule without a provider, and none by default: neither side traces, not even the side
    // the rule does not match (any tracing rule turns the legacy tracer off, as in istiod).
    let sampling_only = ok(
        "demo",
        "t",
        "",
        "  tracing:\n  - match: {mode: SERVER}\n    randomSamplingPercentage: 100\n",
    );
    let resolved = resolve([&sampling_only], "demo", &labels(&[]), &legacy_mesh, None);
    assert!(resolved.server.expect("server").tracing.is_none());
    assert!(resolved.client.expect("client").tracing.is_none());
}

#[test]
fn tracing_providers_must_trace() {
    let mesh = mesh(TRACING_MESH);
    let check = |spec: &str| ok("demo", "t", "", spec).check_providers(&mesh);
    assert_eq!(check("  tracing:\n  - providers: [{name: otel}]\n"), Ok(()));
    let datadog = check("  tracing:\n  - providers: [{name: datadog}]\n").expect_err("datadog");
    assert!(
        datadog.contains("spec.tracing[0].providers[0]: \"datadog\" is a datadog provider"),
        "{datadog}"
    );
    let missing = check("  tracing:\n  - providers: [{name: jaeger}]\n").expect_err("missing");
    assert!(
        missing.contains("no extension provider \"jaeger\""),
        "{missing}"
    );
    let metrics =
        check("  tracing:\n  - providers: [{name: prometheus}]\n").expect_err("prometheus");
    assert!(metrics.contains("does not provide tracing"), "{metrics}");
}
