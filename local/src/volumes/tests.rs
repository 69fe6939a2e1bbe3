use std::os::unix::fs::MetadataExt;

use super::*;

/// An injected pod's volumes as injection declares them.
fn injected() -> Vec<VolumePlan> {
    let pod: Pod = serde_saphyr::from_str(
        r#"
metadata: {name: web-0, namespace: demo, labels: {app: web}, annotations: {a: "say \"hi\""}}
spec:
  containers:
    - name: istio-proxy
      command: [remora-proxy]
      securityContext: {runAsUser: 1337, runAsGroup: 1337}
      volumeMounts:
        - {name: istio-token, mountPath: /var/run/secrets/tokens}
        - {name: istiod-ca-cert, mountPath: /var/run/secrets/istio}
        - {name: istio-podinfo, mountPath: /etc/istio/pod}
        - {name: istio-envoy, mountPath: /etc/istio/proxy}
  volumes:
    - {name: istio-envoy, emptyDir: {medium: Memory}}
    - name: istio-podinfo
      downwardAPI:
        items:
          - {path: labels, fieldRef: {fieldPath: metadata.labels}}
          - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
    - name: istio-token
      projected:
        sources:
          - serviceAccountToken: {audience: istio-ca, expirationSeconds: 43200, path: istio-token}
    - name: istiod-ca-cert
      configMap: {name: istio-ca-root-cert}
"#,
    )
    .expect("test pod");
    plan(&pod, pod.spec.as_ref().expect("spec")).expect("provided locally")
}

#[test]
fn volumes_are_planned_from_the_spec() {
    let volumes = injected();
    let sources: Vec<(&str, &Source)> = volumes
        .iter()
        .map(|v| (v.name.as_str(), &v.source))
        .collect();
    assert_eq!(
        sources,
        [
            ("istio-envoy", &Source::Empty),
            (
                "istio-podinfo",
                &Source::Files(vec![
                    ("labels".to_owned(), File::Text("app=\"web\"\n".to_owned())),
                    (
                        "annotations".to_owned(),
                        File::Text("a=\"say \\\"hi\\\"\"\n".to_owned())
                    ),
                ])
            ),
            (
                "istio-token",
                &Source::Files(vec![("istio-token".to_owned(), File::Token)])
            ),
            (
                "istiod-ca-cert",
                &Source::Files(vec![("root-cert.pem".to_owned(), File::Root)])
            ),
        ]
    );
    assert!(has_token(&volumes));
}

#[test]
fn volumes_the_launcher_cannot_provide_are_refused_naming_the_field() {
    let refused = |volume: &str| {
        let pod: Pod = serde_saphyr::from_str(&format!(
            "metadata: {{name: p}}\nspec: {{containers: [{{name: a, command: [a]}}], volumes: [{volume}]}}\n"
        ))
        .expect("test pod");
        plan(&pod, pod.spec.as_ref().expect("spec")).expect_err(volume)
    };
    let (field, message) = refused("{name: s, secret: {secretName: s}}");
    assert_eq!(field, "volumes[0]");
    assert!(message.contains("only emptyDir"), "{message}");
    let (field, message) = refused("{name: c, configMap: {name: app-config}}");
    assert_eq!(field, "volumes[0].configMap");
    assert!(message.contains("app-config"), "{message}");
    let (field, message) = refused(
        "{name: t, projected: {sources: [{serviceAccountToken: {audience: vault, path: t}}]}}",
    );
    assert_eq!(field, "volumes[0].projected.sources[0]");
    assert!(message.contains("vault"), "{message}");
    let (_, message) = refused(
        "{name: d, downwardAPI: {items: [{path: ../x, fieldRef: {fieldPath: metadata.name}}]}}",
    );
    assert!(message.contains("inside the volume"), "{message}");
}

#[test]
fn a_refreshed_token_replaces_the_old_one_whole_and_stays_its_containers() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "writing files owned by uid 1337 needs root; run the tests as root"
    );
    let volumes = injected();
    let pod = tempfile::tempdir().expect("pod dir");
    let write_with = |token: &str| {
        let mint = || Ok(token.to_owned());
        let secrets = Secrets {
            mint: &mint,
            roots_pem: "ROOT",
        };
        // The sidecar (uid 1337) mounts them all, as in an injected pod.
        write(pod.path(), &volumes, |_| Some(1337), &secrets).expect("write");
    };
    write_with("first-token");
    write_with("second-token");
    let token = token_path(pod.path());
    assert_eq!(fs::read_to_string(&token).expect("token"), "second-token");
    let meta = fs::metadata(&token).expect("token metadata");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (1337, 0o600));
    let guard = fs::metadata(guard_dir(pod.path())).expect("guard metadata");
    assert_eq!((guard.uid(), guard.mode() & 0o777), (ROOT_UID, 0o700));
    let files = fs::metadata(volume_dir(pod.path(), "istio-token")).expect("volume metadata");
    assert_eq!((files.uid(), files.mode() & 0o777), (ROOT_UID, 0o555));
    let scratch = fs::metadata(volume_dir(pod.path(), "istio-envoy")).expect("emptyDir");
    assert_eq!((scratch.uid(), scratch.mode() & 0o777), (1337, 0o777));
    let root = volume_dir(pod.path(), "istiod-ca-cert").join("root-cert.pem");
    assert_eq!(fs::read_to_string(root).expect("root"), "ROOT");
    let leftovers: Vec<_> = fs::read_dir(token.parent().expect("token dir"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["istio-token"], "nothing left aside");
}
