use super::*;

/// A CRD's name, its versions (name, stored) and short names.
type Described = (String, Vec<(String, bool)>, Vec<String>);

#[test]
fn every_kind_read_is_defined_in_every_version_istio_serves() {
    let crds = crds().expect("versions merge");
    let described: Vec<Described> = crds
        .iter()
        .map(|crd| {
            let versions = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.clone(), v.storage))
                .collect();
            let short = crd.spec.names.short_names.clone().unwrap_or_default();
            (
                crd.metadata.name.clone().unwrap_or_default(),
                versions,
                short,
            )
        })
        .collect();
    let v = |name: &str, stored: bool| (name.to_owned(), stored);
    let names = |short: &str| vec![short.to_owned()];
    assert_eq!(
        described,
        [
            (
                "authorizationpolicies.security.istio.io".into(),
                vec![v("v1", true), v("v1beta1", false)],
                names("ap")
            ),
            (
                "peerauthentications.security.istio.io".into(),
                vec![v("v1", true), v("v1beta1", false)],
                names("pa")
            ),
            (
                "requestauthentications.security.istio.io".into(),
                vec![v("v1", true), v("v1beta1", false)],
                names("ra")
            ),
            (
                "virtualservices.networking.istio.io".into(),
                vec![v("v1", true), v("v1alpha3", false), v("v1beta1", false)],
                names("vs")
            ),
            (
                "destinationrules.networking.istio.io".into(),
                vec![v("v1", true), v("v1alpha3", false), v("v1beta1", false)],
                names("dr")
            ),
            (
                "serviceentries.networking.istio.io".into(),
                vec![v("v1", true), v("v1alpha3", false), v("v1beta1", false)],
                names("se")
            ),
            (
                "sidecars.networking.istio.io".into(),
                vec![v("v1", true), v("v1alpha3", false), v("v1beta1", false)],
                vec![]
            ),
            (
                "telemetries.telemetry.istio.io".into(),
                vec![v("v1", true), v("v1alpha1", false)],
                names("telemetry")
            ),
        ]
    );
}

#[test]
fn specs_keep_every_field() {
    for crd in crds().expect("versions merge") {
        for version in &crd.spec.versions {
            let schema = serde_json::to_value(&version.schema).expect("schema");
            let properties = &schema["openAPIV3Schema"]["properties"];
            for part in ["spec", "status"] {
                assert_eq!(
                    properties[part]["x-kubernetes-preserve-unknown-fields"], true,
                    "{:?} {} {part}: {}",
                    crd.metadata.name, version.name, properties[part]
                );
            }
            assert!(version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()));
        }
    }
}

#[test]
fn the_install_carries_these_crds() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds.yaml");
    let installed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        installed == crds_yaml().expect("yaml"),
        "{path} is not what `remoractl crds` prints: run `cargo run -p remoractl -- crds > manifests/crds.yaml`"
    );
}
