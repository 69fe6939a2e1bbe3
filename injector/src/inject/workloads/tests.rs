use super::*;

fn run(text: &str) -> Result<Injected, ManifestError> {
    inject_manifests(&Injector::default(), text)
}

/// The documents of `out`, parsed.
fn documents(out: &str) -> Vec<Value> {
    split_documents(out)
        .into_iter()
        .map(|d| serde_saphyr::from_str(d).expect("valid YAML out"))
        .collect()
}

fn template(kind: &str, api_version: &str, spec_prefix: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: w, namespace: shop}}\nspec:\n{spec_prefix}  template:\n    metadata: {{labels: {{app: w}}}}\n    spec:\n      containers: [{{name: app, image: app:1}}]\n"
    )
}

#[test]
fn every_kind_with_pods_is_injected_and_the_rest_passes_through_as_written() {
    let service = "# the Service, comments kept\napiVersion: v1\nkind: Service\nmetadata: {name: w}\nspec: {ports: [{port: 80}]}\n";
    let workloads = [
        template("Deployment", "apps/v1", "  selector: {matchLabels: {app: w}}\n"),
        template("ReplicaSet", "apps/v1", "  selector: {matchLabels: {app: w}}\n"),
        template("StatefulSet", "apps/v1", "  serviceName: w\n  selector: {matchLabels: {app: w}}\n"),
        template("DaemonSet", "apps/v1", "  selector: {matchLabels: {app: w}}\n"),
        template("ReplicationController", "v1", ""),
        template("Job", "batch/v1", ""),
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly, namespace: shop}\nspec:\n  schedule: \"0 1 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{name: app, image: app:1}]\n".to_owned(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: solo, namespace: shop}\nspec: {containers: [{name: app, image: app:1}]}\n".to_owned(),
    ];
    let mut text = service.to_owned();
    for workload in &workloads {
        text.push_str("---\n");
        text.push_str(workload);
    }
    let out = run(&text).expect("injected");
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    assert!(out.text.starts_with(service), "{}", out.text);
    let docs = documents(&out.text);
    assert_eq!(docs.len(), 9);
    let pod_spec = |doc: &Value| -> Value {
        match doc["kind"].as_str() {
            Some("Pod") => doc["spec"].clone(),
            Some("CronJob") => doc["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => doc["spec"]["template"]["spec"].clone(),
        }
    };
    for doc in &docs[1..] {
        let spec = pod_spec(doc);
        let containers: Vec<&str> = spec["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(containers, ["app", "istio-proxy"], "{}", doc["kind"]);
        assert_eq!(
            spec["initContainers"][0]["name"], "istio-init",
            "{}",
            doc["kind"]
        );
    }
    // The workload, not the pod, names the sidecar's owner.
    let cron = &docs[7];
    let env = pod_spec(cron)["containers"][1]["env"].clone();
    let owner = env
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "ISTIO_META_OWNER")
        .map(|e| e["value"].clone());
    assert_eq!(
        owner,
        Some(Value::from(
            "kubernetes://apis/batch/v1/namespaces/shop/cronjobs/nightly"
        ))
    );
    // The Deployment's own metadata and selector are untouched.
    assert_eq!(
        docs[1]["metadata"],
        serde_json::json!({"name": "w", "namespace": "shop"})
    );
    assert_eq!(
        docs[1]["spec"]["selector"],
        serde_json::json!({"matchLabels": {"app": "w"}})
    );
}

#[test]
fn lists_are_injected_item_by_item() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n  data: {a: b}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: w}\n  spec:\n    selector: {matchLabels: {app: w}}\n    template:\n      metadata: {labels: {app: w}}\n      spec: {containers: [{name: app}]}\n";
    let out = run(text).expect("injected");
    let docs = documents(&out.text);
    let items = docs[0]["items"].as_array().expect("items");
    assert_eq!(items[0]["data"]["a"], "b");
    assert_eq!(
        items[1]["spec"]["template"]["spec"]["containers"][1]["name"],
        "istio-proxy"
    );
}

#[test]
fn pods_that_opt_out_are_left_alone_with_a_note() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {sidecar.istio.io/inject: \"false\"}}\nspec: {containers: [{name: app}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {hostNetwork: true, containers: [{name: app}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: kube-system}\nspec: {containers: [{name: app}]}\n";
    let out = run(text).expect("passed through");
    assert_eq!(
        out.skipped,
        [
            "Skipping injection because Pod \"a\" has sidecar injection disabled",
            "Skipping injection because Pod \"b\" has host networking enabled",
            "Skipping injection because Pod \"kube-system/c\" is in a namespace Kubernetes owns",
        ]
    );
    assert!(!out.text.contains("istio-proxy"), "{}", out.text);
}

#[test]
fn one_bad_document_fails_the_stream_naming_it() {
    let good = template(
        "Deployment",
        "apps/v1",
        "  selector: {matchLabels: {app: w}}\n",
    );
    let cases = [
        (format!("{good}---\nkind: [unclosed\n"), "document 2: not valid YAML"),
        (
            format!("{good}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, annotations: {{traffic.sidecar.istio.io/includeInboundPorts: \"80,x\"}}}}\nspec: {{containers: [{{name: app}}]}}\n"),
            "document 2 (Pod \"p\"): invalid value '80,x' for annotation 'traffic.sidecar.istio.io/includeInboundPorts'",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: many}\n".to_owned(),
            "document 1 (Deployment \"d\"):",
        ),
        (
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec: {replicas: 1}\n".to_owned(),
            "document 1 (ReplicationController \"rc\"): spec.template is required",
        ),
    ];
    for (text, expected) in cases {
        let err = run(&text).expect_err("refused").to_string();
        assert!(err.starts_with(expected), "{expected:?} vs {err}");
    }
}

/// Golden files: `testdata/NAME.yaml` injected must equal `testdata/NAME.yaml.injected`, which
/// is written by hand from the rules (compared as data: key order and YAML style are free).
#[test]
fn golden_files_match_what_the_rules_say() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/inject/testdata");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("testdata") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let input = std::fs::read_to_string(&path).expect("input");
        let expected_path = path.with_extension("yaml.injected");
        let expected = std::fs::read_to_string(&expected_path).expect("expected output");
        let out = run(&input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = documents(&out.text);
        let want = documents(&expected);
        assert_eq!(got.len(), want.len(), "{}", path.display());
        for (got, want) in got.iter().zip(&want) {
            assert_eq!(
                got,
                want,
                "{} differs from {}",
                path.display(),
                expected_path.display()
            );
        }
        // Injecting the output again changes nothing.
        let again = run(&out.text).expect("re-injects");
        assert_eq!(documents(&again.text), got, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} golden files");
}

#[test]
fn the_policy_decides_for_pods_that_say_nothing() {
    let injector = Injector::default()
        .with_policy(crate::inject::InjectionPolicy::parse("policy: disabled").expect("valid"));
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\nspec: {containers: [{name: app}]}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: keen, labels: {sidecar.istio.io/inject: \"true\"}}\nspec: {containers: [{name: app}]}\n";
    let out = inject_manifests(&injector, text).expect("injected");
    assert_eq!(
        out.skipped,
        ["Skipping injection because Pod \"quiet\" is not selected by the injection policy"]
    );
    assert!(out.text.contains("istio-proxy"));
    let docs = documents(&out.text);
    assert!(docs[0]["spec"]["initContainers"].is_null());
    assert_eq!(docs[1]["spec"]["initContainers"][0]["name"], "istio-init");
}
