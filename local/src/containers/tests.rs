use super::*;

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).expect("test pod")
}

const INJECTED: &str = r#"
metadata: {name: web-0, namespace: demo, uid: u-1, labels: {app: web}, annotations: {team: a}}
spec:
  serviceAccountName: web
  securityContext: {runAsUser: 1000}
  initContainers:
    - name: istio-init
      command: [remora-init]
      args: ["-p", "15001"]
      securityContext: {runAsUser: 0}
    - name: istio-proxy
      restartPolicy: Always
      command: [remora-proxy]
      securityContext: {runAsUser: 1337, runAsGroup: 1337}
      resources: {limits: {cpu: 1500m, memory: 1Gi}}
      env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: INSTANCE_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
        - {name: SERVICE_ACCOUNT, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
        - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
        - {name: TEAM, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['team']"}}}
        - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: "1"}}}
        - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
      readinessProbe: {httpGet: {path: /healthz/ready, port: 15021}}
  containers:
    - name: web
      command: [web, --port=8080]
      ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]
      readinessProbe:
        httpGet:
          path: /app-health/web/readyz
          port: 15020
          scheme: HTTPS
          httpHeaders: [{name: X-Probe, value: "1"}]
    - name: plain
      command: [sleep, infinity]
      ports: [{containerPort: 9090}]
      workingDir: /tmp
    - name: tcp
      command: [serve]
      ports: [{containerPort: 7070, name: admin}]
      startupProbe: {tcpSocket: {port: admin}}
"#;

#[test]
fn an_injected_pod_runs_as_its_spec_says() {
    let run = PodRun::of(&pod(INJECTED)).expect("runnable");
    let [init, proxy] = &run.init[..] else {
        panic!("two init containers: {:?}", run.init)
    };
    assert_eq!(init.argv, ["remora-init", "-p", "15001"]);
    assert_eq!(init.user, Some((0, 0)));
    assert!(!init.keeps_running);
    assert!(proxy.keeps_running, "a native sidecar");
    assert_eq!(proxy.user, Some((1337, 1337)));
    let field = |v: &str| EnvValue::Field(v.to_owned());
    let env: Vec<(&str, &EnvValue)> = proxy.env.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", &field("web-0")),
            ("POD_NAMESPACE", &field("demo")),
            ("INSTANCE_IP", &EnvValue::PodIp),
            ("HOST_IP", &EnvValue::PodIp),
            ("SERVICE_ACCOUNT", &field("web")),
            ("NODE", &field(NODE_NAME)),
            ("APP", &field("web")),
            ("TEAM", &field("a")),
            ("CPU", &field("2")),
            ("MEM", &field("1024")),
        ]
    );
    assert_eq!(
        proxy.ready,
        Readiness::Probe(ProbeCheck::Http {
            port: 15021,
            path: "/healthz/ready".to_owned(),
            https: false,
            headers: vec![],
        })
    );
    let [web, plain, tcp] = &run.containers[..] else {
        panic!("three containers")
    };
    assert_eq!(web.user, Some((1000, 1000)), "the pod's user");
    assert_eq!(
        web.ready,
        Readiness::Probe(ProbeCheck::Http {
            port: 15020,
            path: "/app-health/web/readyz".to_owned(),
            https: true,
            headers: vec![("X-Probe".to_owned(), "1".to_owned())],
        })
    );
    assert_eq!(plain.ready, Readiness::Listening(vec![9090]));
    assert_eq!(plain.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(tcp.ready, Readiness::Probe(ProbeCheck::Tcp(7070)));
}

#[test]
fn what_cannot_run_locally_is_refused_naming_the_field() {
    let refused = |container: &str| {
        PodRun::of(&pod(&format!(
            "metadata: {{name: p}}\nspec: {{containers: [{container}], volumes: [{{name: v, emptyDir: {{}}}}]}}\n"
        )))
        .expect_err(container)
    };
    let cases = [
        ("{name: a, image: a}", "containers[0].command"),
        (
            "{name: a, command: [a], env: [{name: X, valueFrom: {fieldRef: {fieldPath: status.phase}}}]}",
            "containers[0].env[0].valueFrom.fieldRef.fieldPath",
        ),
        (
            "{name: a, command: [a], env: [{name: X, valueFrom: {configMapKeyRef: {name: c, key: k}}}]}",
            "containers[0].env[0].valueFrom",
        ),
        (
            "{name: a, command: [a], env: [{name: X, valueFrom: {resourceFieldRef: {resource: limits.ephemeral-storage}}}]}",
            "containers[0].env[0].valueFrom.resourceFieldRef",
        ),
        (
            "{name: a, command: [a], readinessProbe: {httpGet: {port: web}}}",
            "containers[0].readinessProbe.httpGet.port",
        ),
        (
            "{name: a, command: [a], readinessProbe: {grpc: {port: 9000}}}",
            "containers[0].readinessProbe.grpc",
        ),
        (
            "{name: a, command: [a], volumeMounts: [{name: w, mountPath: /w}]}",
            "containers[0].volumeMounts[0].name",
        ),
        (
            "{name: a, command: [a], volumeMounts: [{name: v, mountPath: /w, subPath: x}]}",
            "containers[0].volumeMounts[0].subPath",
        ),
    ];
    for (container, field) in cases {
        assert_eq!(refused(container).0, field, "{container}");
    }
}

#[test]
fn quantities_and_resource_fields_round_up_as_the_kubelet_does() {
    for (text, value) in [("2", 2.0), ("500m", 0.5), ("1Ki", 1024.0), ("1G", 1e9)] {
        assert_eq!(quantity(text), Ok(value), "{text}");
    }
    assert!(quantity("lots").is_err());
    let limits: ResourceRequirements =
        serde_saphyr::from_str("{limits: {cpu: 100m}, requests: {memory: 1500Ki}}")
            .expect("resources");
    assert_eq!(
        resource_value("limits.cpu", Some(&limits), None),
        Ok("1".to_owned())
    );
    assert_eq!(
        resource_value("limits.cpu", Some(&limits), Some("1m")),
        Ok("100".to_owned())
    );
    assert_eq!(
        resource_value("requests.memory", Some(&limits), Some("1Mi")),
        Ok("2".to_owned())
    );
    assert!(resource_value("limits.cpu", None, Some("0")).is_err());
}
