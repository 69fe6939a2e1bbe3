use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(namespace: &str, labels: &[(&str, &str)]) -> Pod {
    let mut pod: Pod = serde_saphyr::from_str(
        "metadata: {name: web-0}\nspec: {containers: [{name: web, command: [web]}]}\n",
    )
    .expect("test pod");
    pod.metadata.namespace = Some(namespace.to_owned());
    pod.metadata.labels = Some(map(labels));
    pod
}

type Pairs<'a> = &'a [(&'a str, &'a str)];

/// The installed configuration calls the webhook for exactly the pods Istio's does: the
/// namespace label, the revision label and the pod label, each as Istio's charts select.
#[test]
fn the_installed_configuration_selects_as_istios_charts_do() {
    let webhooks = Webhooks::installed();
    let enabled = [("istio-injection", "enabled")];
    let disabled = [("istio-injection", "disabled")];
    let revision = [("istio.io/rev", "default")];
    let canary = [("istio.io/rev", "canary")];
    let enabled_and_canary = [("istio-injection", "enabled"), ("istio.io/rev", "canary")];
    let yes = [("sidecar.istio.io/inject", "true")];
    let no = [("sidecar.istio.io/inject", "false")];
    let pod_revision = [("istio.io/rev", "default")];
    let pod_canary_yes = [
        ("istio.io/rev", "canary"),
        ("sidecar.istio.io/inject", "true"),
    ];
    // (what, namespace labels, pod labels, called)
    let cases: &[(&str, Pairs, Pairs, bool)] = &[
        ("unlabelled namespace", &[], &[], false),
        ("enabled namespace", &enabled, &[], true),
        ("enabled namespace, pod label false", &enabled, &no, false),
        ("disabled namespace", &disabled, &[], false),
        ("disabled namespace, pod label true", &disabled, &yes, false),
        ("pod label true alone", &[], &yes, true),
        ("pod revision default alone", &[], &pod_revision, false),
        (
            "pod label true with another revision",
            &[],
            &pod_canary_yes,
            false,
        ),
        ("default revision namespace", &revision, &[], true),
        (
            "default revision namespace, pod label false",
            &revision,
            &no,
            false,
        ),
        ("another revision", &canary, &[], false),
        ("another revision, pod label true", &canary, &yes, false),
        (
            "istio-injection wins over the revision",
            &enabled_and_canary,
            &[],
            true,
        ),
    ];
    for (what, namespace, labels, called) in cases {
        let selected = webhooks.for_pod(&map(namespace), &pod("demo", labels));
        assert!(selected.len() <= 1, "{what}: at most one of them");
        assert_eq!(!selected.is_empty(), *called, "{what}");
        if let Some(webhook) = selected.first() {
            assert_eq!(path_of(webhook).as_deref(), Ok("/inject"), "{what}");
        }
    }
}

/// A configuration in the user's manifests replaces the installed one; namespaces are
/// selectable by name, as the API server labels them.
#[test]
fn a_users_configuration_replaces_the_installed_one() {
    let catalog = Catalog::build(vec![(
        "/m/hook.yaml".to_owned(),
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mine}
webhooks:
  - name: team.example.com
    clientConfig: {service: {name: istiod, namespace: istio-system, path: /inject/cluster/c1/net/n1}}
    rules: [{operations: ["*"], apiGroups: [""], apiVersions: [v1], resources: [pods]}]
    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: team}}
    sideEffects: None
    admissionReviewVersions: [v1]
"#
        .to_owned(),
    )]);
    assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
    let webhooks = Webhooks::of(&catalog);
    let enabled = map(&[("istio-injection", "enabled")]);
    assert!(webhooks.for_pod(&enabled, &pod("demo", &[])).is_empty());
    let selected = webhooks.for_pod(&BTreeMap::new(), &pod("team", &[]));
    assert_eq!(selected.len(), 1);
    assert_eq!(
        path_of(selected[0]).as_deref(),
        Ok("/inject/cluster/c1/net/n1")
    );
}

#[test]
fn answers_are_applied_or_reported() {
    let original = pod("demo", &[("app", "web")]);
    let request: Value = serde_json::from_slice(&review(&original, "u1")).expect("JSON");
    assert_eq!(request["request"]["operation"], "CREATE");
    assert_eq!(request["request"]["object"]["metadata"]["name"], "web-0");
    let patch = base64::engine::general_purpose::STANDARD
        .encode(r#"[{"op":"add","path":"/metadata/labels/injected","value":"yes"}]"#);
    let answer = |response: Value| json!({"response": response}).to_string().into_bytes();

    let patched = admitted(
        &original,
        "w",
        "u1",
        &answer(json!({"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": patch})),
    )
    .expect("patched");
    assert_eq!(patched.metadata.labels.expect("labels")["injected"], "yes");
    assert_eq!(
        admitted(
            &original,
            "w",
            "u1",
            &answer(json!({"uid": "u1", "allowed": true}))
        ),
        Ok(original.clone())
    );
    let denied = admitted(
        &original,
        "w",
        "u1",
        &answer(json!({"uid": "u1", "allowed": false, "status": {"message": "bad annotation"}})),
    );
    assert_eq!(
        denied.expect_err("denied").to_string(),
        "admission webhook \"w\" denied the request: bad annotation"
    );
    for (body, expected) in [
        (b"not json".to_vec(), "not JSON"),
        (answer(json!({"uid": "other", "allowed": true})), "uid"),
        (
            answer(json!({"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": "%%"})),
            "not base64",
        ),
    ] {
        let error = admitted(&original, "w", "u1", &body).expect_err(expected);
        assert!(
            matches!(&error, AdmissionError::Failed { message, .. } if message.contains(expected)),
            "{error}"
        );
    }
}
