use super::*;

const FULL: &str = r#"
rootNamespace: mesh-root
trustDomain: example.org
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
enableTracing: false
accessLogFile: /dev/stdout
accessLogEncoding: JSON
accessLogFormat: '{"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%"}'
pathNormalization:
  normalization: MERGE_SLASHES
defaultConfig:
  drainDuration: 45s
  concurrency: 2
  tracing:
    sampling: 12.5
  gatewayTopology:
    numTrustedProxies: 2
  runtimeValues:
    overload.global_downstream_max_connections: "20000"
  discoveryAddress: istiod.istio-system.svc:15012
extensionProviders:
- name: otel
  opentelemetry:
    service: otel-collector.observability.svc.cluster.local
    port: 4317
    resource_detectors:
      environment: {}
- name: prom
  prometheus: {}
- name: log
  envoyFileAccessLog:
    path: /dev/stdout
ingressClass: istio
"#;

#[test]
fn parses_every_field() {
    let mesh = MeshConfig::parse(FULL).expect("valid mesh config");
    assert_eq!(mesh.default_config.concurrency, Some(2));
    let settings = mesh.settings(None);
    assert_eq!(
        settings,
        proto::MeshSettings {
            trust_domain: "example.org".into(),
            root_namespace: "mesh-root".into(),
            outbound_traffic_policy: "REGISTRY_ONLY".into(),
            drain_duration_ms: 45_000,
            enable_tracing: false,
            tracing_sampling: 12.5,
            access_log_file: "/dev/stdout".into(),
            access_log_encoding: "JSON".into(),
            path_normalization: "MERGE_SLASHES".into(),
            extension_providers: vec![
                proto::ExtensionProvider {
                    name: "otel".into(),
                    kind: "opentelemetry".into(),
                    service: "otel-collector.observability.svc.cluster.local".into(),
                    port: 4317,
                    settings_json: r#"{"resource_detectors":{"environment":{}}}"#.into(),
                },
                proto::ExtensionProvider {
                    name: "prom".into(),
                    kind: "prometheus".into(),
                    service: String::new(),
                    port: 0,
                    settings_json: "{}".into(),
                },
                proto::ExtensionProvider {
                    name: "log".into(),
                    kind: "envoyFileAccessLog".into(),
                    service: String::new(),
                    port: 0,
                    settings_json: r#"{"path":"/dev/stdout"}"#.into(),
                },
            ],
            num_trusted_proxies: 2,
            cluster_id: String::new(),
            overload: Some(proto::OverloadLimits {
                global_max_connections: 20_000,
                ..Default::default()
            }),
        }
    );
}

#[test]
fn empty_config_has_istio_defaults() {
    let settings = MeshConfig::parse("")
        .expect("empty is valid")
        .settings(None);
    assert_eq!(
        settings,
        proto::MeshSettings {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            outbound_traffic_policy: "ALLOW_ANY".into(),
            drain_duration_ms: 5_000,
            enable_tracing: true,
            tracing_sampling: 1.0,
            access_log_file: String::new(),
            access_log_encoding: "TEXT".into(),
            path_normalization: "BASE".into(),
            extension_providers: Vec::new(),
            num_trusted_proxies: 0,
            cluster_id: String::new(),
            overload: Some(proto::OverloadLimits::default()),
        }
    );
    assert_eq!(MeshConfig::default().settings(None), settings);
}

#[test]
fn invalid_fields_are_named() {
    let cases = [
        (
            "outboundTrafficPolicy:\n  mode: DENY\n",
            "outboundTrafficPolicy.mode: unknown variant `DENY`",
        ),
        ("enableTracing: maybe\n", "enableTracing: "),
        (
            "trustDomain: Example.ORG\n",
            "trustDomain: \"Example.ORG\" is not a valid trust domain",
        ),
        (
            "accessLogEncoding: XML\n",
            "accessLogEncoding: unknown variant",
        ),
        (
            "accessLogFormat: \"%FILTER_STATE(x)% %RESPONSE_CODE%\"\n",
            "accessLogFormat: %FILTER_STATE(x)% is not a command operator Remora supports",
        ),
        (
            "accessLogEncoding: JSON\naccessLogFormat: \"%RESPONSE_CODE%\"\n",
            "accessLogFormat: with accessLogEncoding JSON, a JSON object of strings",
        ),
        (
            "accessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%NOPE%\"}'\n",
            "accessLogFormat: %NOPE% is not a command operator Remora supports",
        ),
        (
            "defaultProviders:\n  accessLogging: [a, b]\n",
            "defaultProviders.accessLogging: a sidecar writes one access log",
        ),
        (
            "pathNormalization:\n  normalization: ALL\n",
            "pathNormalization.normalization: unknown variant",
        ),
        (
            "defaultConfig:\n  drainDuration: soon\n",
            "defaultConfig.drainDuration: \"soon\" is not a duration",
        ),
        (
            "defaultConfig:\n  drainDuration: 5\n",
            "defaultConfig.drainDuration: invalid type",
        ),
        (
            "defaultConfig:\n  tracing:\n    sampling: 101\n",
            "defaultConfig.tracing.sampling: 101 is not a percentage",
        ),
        (
            "defaultConfig:\n  concurrency: -1\n",
            "defaultConfig.concurrency: ",
        ),
        (
            "extensionProviders:\n- opentelemetry: {port: 4317}\n",
            "extensionProviders[0]: missing field `name`",
        ),
        (
            "extensionProviders:\n- name: a\n",
            "extensionProviders[0]: provider \"a\" names no kind",
        ),
        (
            "extensionProviders:\n- name: a\n  zipkin: {}\n  opentelemetry: {}\n",
            "extensionProviders[0]: sets both \"opentelemetry\" and \"zipkin\"",
        ),
        (
            "extensionProviders:\n- name: a\n  zipkin:\n    port: http\n",
            "extensionProviders[0].zipkin.port: invalid type",
        ),
        (
            "extensionProviders:\n- name: a\n  zipkin: {service: z.ns, port: 9411}\n- name: a\n  prometheus: {}\n",
            "extensionProviders[1].name: \"a\" is defined twice",
        ),
        (
            "extensionProviders:\n- name: a\n  zipkin: {}\n",
            "extensionProviders[0].zipkin: service and port",
        ),
        (
            "extensionProviders:\n- name: a\n  opentelemetry: {service: o.ns, port: 4318, http: {}}\n",
            "extensionProviders[0].opentelemetry: http.path",
        ),
        (
            "defaultConfig:\n  tracing:\n    zipkin: {address: zipkin}\n",
            "defaultConfig.tracing.zipkin: address: \"zipkin\" is not a host:port",
        ),
        ("mode: [", "not valid YAML"),
    ];
    for (text, expected) in cases {
        let err = MeshConfig::parse(text).expect_err(text).to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
}

#[test]
fn durations_accept_protobuf_and_human_forms() {
    let cases = [
        ("5s", 5_000),
        ("0.5s", 500),
        ("1m30s", 90_000),
        ("250ms", 250),
    ];
    for (text, millis) in cases {
        let mesh =
            MeshConfig::parse(&format!("defaultConfig:\n  drainDuration: {text}\n")).expect(text);
        assert_eq!(mesh.settings(None).drain_duration_ms, millis, "{text}");
    }
}

#[test]
fn pod_annotation_overrides_only_what_it_sets() {
    let mesh = MeshConfig::parse(
        "defaultConfig:\n  drainDuration: 20s\n  concurrency: 2\n  tracing:\n    sampling: 10\n",
    )
    .expect("valid mesh config");
    let cases = [
        ("", 20_000, 10.0, Some(2)),
        ("drainDuration: 3s\n", 3_000, 10.0, Some(2)),
        ("tracing:\n  sampling: 100\n", 20_000, 100.0, Some(2)),
        ("concurrency: 0\n", 20_000, 10.0, Some(0)),
        // 0 counts as unset, as istiod reads it: Istio's default 1%.
        (
            "{drainDuration: 1s, tracing: {sampling: 0}}",
            1_000,
            1.0,
            Some(2),
        ),
    ];
    for (annotation, drain_ms, sampling, concurrency) in cases {
        let pod = ProxyConfig::from_annotation(annotation).expect(annotation);
        let settings = mesh.settings(Some(&pod));
        assert_eq!(settings.drain_duration_ms, drain_ms, "{annotation}");
        assert_eq!(settings.tracing_sampling, sampling, "{annotation}");
        assert_eq!(
            mesh.default_config.overridden_by(&pod).concurrency,
            concurrency,
            "{annotation}"
        );
    }
    let err = ProxyConfig::from_annotation("tracing:\n  sampling: high\n")
        .expect_err("bad sampling")
        .to_string();
    assert!(err.starts_with("tracing.sampling: "), "{err}");
}

#[test]
fn proxy_metadata_merges_key_by_key_with_the_pod_winning() {
    let mesh = MeshConfig::parse("defaultConfig:\n  proxyMetadata: {SECRET_TTL: 1h, OTHER: x}\n")
        .expect("valid mesh config");
    let annotations =
        |text: &str| BTreeMap::from([(PROXY_CONFIG_ANNOTATION.to_owned(), text.to_owned())]);
    let metadata = |pod: Option<&ProxyConfig>| mesh.proxy_config(pod).proxy_metadata;
    let pairs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        metadata(None),
        pairs(&[("OTHER", "x"), ("SECRET_TTL", "1h")])
    );
    let json = annotations(r#"{"proxyMetadata": {"SECRET_TTL": "20s"}, "drainDuration": "5s"}"#);
    let pod = ProxyConfig::of_pod(Some(&json))
        .expect("valid")
        .expect("present");
    assert_eq!(
        metadata(Some(&pod)),
        pairs(&[("OTHER", "x"), ("SECRET_TTL", "20s")])
    );
    let yaml = annotations("proxyMetadata:\n  A: b\n");
    let pod = ProxyConfig::of_pod(Some(&yaml))
        .expect("valid")
        .expect("present");
    assert_eq!(
        metadata(Some(&pod)),
        pairs(&[("A", "b"), ("OTHER", "x"), ("SECRET_TTL", "1h")])
    );
    assert_eq!(ProxyConfig::of_pod(None).expect("no annotations"), None);
    assert_eq!(
        ProxyConfig::of_pod(Some(&BTreeMap::new())).expect("no annotation"),
        None
    );
    let err = ProxyConfig::of_pod(Some(&annotations("proxyMetadata: [1, 2]")))
        .expect_err("not a map")
        .to_string();
    assert!(
        err.starts_with("metadata.annotations[proxy.istio.io/config]: proxyMetadata: "),
        "{err}"
    );
}
