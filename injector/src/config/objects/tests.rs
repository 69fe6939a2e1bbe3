use super::*;

fn parse(files: &[(&str, &str)]) -> (Objects, Vec<Rejection>) {
    Objects::from_documents(documents_of(files))
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

const EVERY_KIND: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: 2
  selector:
    matchLabels:
      app: httpbin
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: kennethreitz/httpbin
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: httpbin-0
  namespace: shop
spec:
  containers:
  - name: httpbin
    ports:
    - containerPort: 8080
status:
  podIP: 198.18.0.3
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
spec:
  selector:
    app: httpbin
  ports:
  - name: http
    port: 8000
    targetPort: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: httpbin-abc
  labels:
    kubernetes.io/service-name: httpbin
addressType: IPv4
ports:
- name: http
  port: 80
endpoints:
- addresses: [198.18.0.3]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |
    trustDomain: example.org
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: unrelated
data:
  mesh: "not: [valid"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: ingress
spec: {}
"#;

#[test]
fn reads_every_kind_and_ignores_unknown_ones() {
    let (objects, rejected) = parse(&[("/dir/app.yaml", EVERY_KIND)]);
    assert!(rejected.is_empty(), "{rejected:#?}");
    assert_eq!(
        objects.pods.keys().collect::<Vec<_>>(),
        vec![&key("shop", "httpbin-0")]
    );
    assert_eq!(
        objects.pods[&key("shop", "httpbin-0")].label,
        "Pod shop/httpbin-0 in /dir/app.yaml (document 4)"
    );
    assert_eq!(
        objects.services.keys().collect::<Vec<_>>(),
        vec![&key("default", "httpbin")]
    );
    assert_eq!(
        objects.endpoint_slices.keys().collect::<Vec<_>>(),
        vec![&key("default", "httpbin-abc")]
    );
    let mesh = objects.mesh.expect("mesh from the istio ConfigMap");
    assert_eq!(mesh.trust_domain(), "example.org");
    let seen: Vec<_> = objects.seen.keys().map(|(kind, _)| *kind).collect();
    for kind in ["Namespace", "ServiceAccount", "Deployment"] {
        assert!(seen.contains(&kind), "{kind} not checked");
    }
}

#[test]
fn invalid_documents_are_rejected_one_by_one() {
    let text = r#"
apiVersion: v1
kind: Service
metadata:
  name: good
spec:
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: wrong-type
spec:
  ports:
  - port: http
---
apiVersion: v1
kind: Service
metadata:
  name: out-of-range
  namespace: shop
spec:
  clusterIP: 10.0.0.300
  ports:
  - {name: a, port: 70000}
  - {name: b, port: 80}
  - {name: c, port: 80}
---
apiVersion: v1
kind: Service
metadata:
  name: bad-ports
spec:
  ports:
  - {name: http, port: 80, targetPort: 0}
  - {port: 81, targetPort: 70000}
  - {name: http, port: 82, targetPort: Http}
  - {name: grpc, port: 83, targetPort: "8080"}
  - {name: admin, port: 84, targetPort: admin-port-number}
  - {name: ok, port: 85, targetPort: web-1}
---
apiVersion: v1
kind: Pod
metadata:
  labels:
    app: nameless
spec:
  containers: []
---
apiVersion: v1
kind: Pod
metadata:
  name: bad-ip
spec:
  containers:
  - name: app
    ports:
    - containerPort: 0
status:
  podIP: nowhere
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mismatch
spec:
  selector:
    matchLabels:
      app: a
  template:
    metadata:
      labels:
        app: b
    spec:
      containers: []
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: unlabelled
spec:
  selector:
    matchLabels:
      app: a
  template:
    spec:
      containers: []
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: slice
addressType: IPv4
endpoints:
- addresses: [198.18.0.999]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |
    outboundTrafficPolicy:
      mode: DENY
---
kind: Service
metadata:
  name: no-version
---
apiVersion: v1
kind: Pod
metadata:
  name: good-pod
spec:
  containers: []
"#;
    let (objects, rejected) = parse(&[("/dir/app.yaml", text)]);
    let expected = [
        (
            "Service default/wrong-type in /dir/app.yaml (document 2)",
            "spec.ports[0].port: invalid type: string \"http\"",
        ),
        (
            "Service shop/out-of-range in /dir/app.yaml (document 3)",
            "spec.ports[0].port: 70000 is not a port number (1-65535); \
             spec.ports[2].port: 80 is listed twice; \
             spec.clusterIP: \"10.0.0.300\" is not an IP address",
        ),
        (
            "Service default/bad-ports in /dir/app.yaml (document 4)",
            "spec.ports[1].name: required when a Service has more than one port; \
             spec.ports[1].targetPort: 70000 is not a port number (1-65535); \
             spec.ports[2].name: \"http\" is listed twice; \
             spec.ports[2].targetPort: \"Http\" is not a port name (IANA_SVC_NAME: \
             at most 15 lowercase letters, digits and '-', at least one letter, no '-' at \
             either end or twice in a row); \
             spec.ports[3].targetPort: \"8080\" is not a port name (IANA_SVC_NAME: ",
        ),
        (
            "Pod in /dir/app.yaml (document 5)",
            "metadata.name: required",
        ),
        (
            "Pod default/bad-ip in /dir/app.yaml (document 6)",
            "spec.containers[0].ports[0].containerPort: 0 is not a port number (1-65535); \
             status.podIP: \"nowhere\" is not an IP address",
        ),
        (
            "Deployment default/mismatch in /dir/app.yaml (document 7)",
            "spec.template.metadata.labels: must match spec.selector.matchLabels",
        ),
        (
            "Deployment default/unlabelled in /dir/app.yaml (document 8)",
            "spec.template.metadata.labels: must match spec.selector.matchLabels",
        ),
        (
            "EndpointSlice default/slice in /dir/app.yaml (document 9)",
            "endpoints[0].addresses[0]: \"198.18.0.999\" is not an IP address",
        ),
        (
            "ConfigMap istio-system/istio in /dir/app.yaml (document 10)",
            "data.mesh: outboundTrafficPolicy.mode: unknown variant `DENY`",
        ),
        (
            "/dir/app.yaml (document 11)",
            "apiVersion and kind are required",
        ),
    ];
    assert_eq!(rejected.len(), expected.len(), "{rejected:#?}");
    for (rejection, (object, reason)) in rejected.iter().zip(expected) {
        assert_eq!(rejection.object, object);
        assert!(
            rejection.reason.starts_with(reason),
            "{object}: {} does not start with {reason}",
            rejection.reason
        );
    }
    let bad_ports = &rejected[2].reason;
    assert!(
        bad_ports.contains("spec.ports[4].targetPort: \"admin-port-number\" is not a port name")
            && !bad_ports.contains("spec.ports[0]")
            && !bad_ports.contains("spec.ports[5]"),
        "{bad_ports}"
    );
    assert_eq!(
        objects.services.keys().collect::<Vec<_>>(),
        vec![&key("default", "good")]
    );
    assert_eq!(
        objects.pods.keys().collect::<Vec<_>>(),
        vec![&key("default", "good-pod")]
    );
    assert!(objects.endpoint_slices.is_empty());
    assert!(objects.mesh.is_none());
}

#[test]
fn later_duplicates_are_rejected() {
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec: {}\n";
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n";
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  \
                      namespace: istio-system\ndata:\n  mesh: 'trustDomain: second.org'\n";
    let (objects, rejected) = parse(&[
        ("/dir/a.yaml", &format!("{service}---\n{namespace}")),
        ("/dir/b.yaml", &format!("{namespace}---\n{service}")),
        ("/dir/mesh.yaml", "trustDomain: first.org\n"),
        ("/dir/z.yaml", config_map),
        // Same name, other namespace or kind: not duplicates.
        (
            "/dir/c.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: other\n\
             ---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n",
        ),
    ]);
    let objects_rejected: Vec<(&str, &str)> = rejected
        .iter()
        .map(|r| (r.object.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        objects_rejected,
        vec![
            (
                "Namespace a in /dir/b.yaml (document 1)",
                "duplicate: the same Namespace is already defined as Namespace a in /dir/a.yaml (document 2)"
            ),
            (
                "Service default/a in /dir/b.yaml (document 2)",
                "duplicate: the same Service is already defined as Service default/a in /dir/a.yaml (document 1)"
            ),
            (
                "ConfigMap istio-system/istio in /dir/z.yaml (document 1)",
                "duplicate: the same MeshConfig is already defined as MeshConfig in /dir/mesh.yaml"
            ),
        ]
    );
    assert_eq!(objects.services.len(), 2);
    assert_eq!(
        objects.mesh.map(|m| m.trust_domain().to_owned()),
        Some("first.org".to_owned())
    );
}

#[test]
fn a_file_that_is_not_yaml_is_rejected_whole() {
    let (objects, rejected) = parse(&[
        ("/dir/broken.yaml", "apiVersion: v1\nkind: [Service\n"),
        ("/dir/mesh.yaml", "defaultConfig: [\n"),
        (
            "/dir/ok.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n",
        ),
    ]);
    assert_eq!(rejected.len(), 2, "{rejected:#?}");
    assert_eq!(rejected[0].object, "/dir/broken.yaml");
    assert!(rejected[0].reason.starts_with("not valid YAML"));
    assert_eq!(rejected[1].object, "MeshConfig in /dir/mesh.yaml");
    assert!(rejected[1].reason.starts_with("not valid YAML"));
    assert_eq!(objects.services.len(), 1);
}

#[test]
fn port_names_are_iana_service_names() {
    let cases = [
        ("http", true),
        ("http-2", true),
        ("h2c", true),
        ("a", true),
        ("abcdefghijklmno", true),
        ("abcdefghijklmnop", false),
        ("", false),
        ("8080", false),
        ("Http", false),
        ("-http", false),
        ("http-", false),
        ("http--web", false),
        ("http_web", false),
        ("http.web", false),
    ];
    for (name, valid) in cases {
        assert_eq!(is_port_name(name), valid, "{name:?}");
    }
}

#[test]
fn list_items_are_read_one_by_one() {
    // As `kubectl get services,pods -o yaml` prints them, with one bad item.
    let list = r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: good
    namespace: demo
  spec:
    ports:
    - port: 80
- metadata:
    name: kindless
- apiVersion: v1
  kind: Service
  metadata:
    name: broken
    namespace: demo
  spec:
    ports:
    - port: 0
- apiVersion: v1
  kind: ServiceList
  items:
  - apiVersion: v1
    kind: Service
    metadata:
      name: nested
      namespace: demo
    spec:
      ports:
      - port: 81
- apiVersion: v1
  kind: Service
  metadata:
    name: good
    namespace: demo
---
apiVersion: v1
kind: List
---
apiVersion: v1
kind: List
items: {apiVersion: v1, kind: Service}
---
apiVersion: v1
kind: List
items: []
---
apiVersion: v1
kind: Pod
metadata:
  name: after-the-lists
spec:
  containers: []
"#;
    let (objects, rejected) = parse(&[("/dir/list.yaml", list)]);
    let expected = [
        (
            "/dir/list.yaml (document 1, items[1])",
            "apiVersion and kind are required",
        ),
        (
            "Service demo/broken in /dir/list.yaml (document 1, items[2])",
            "spec.ports[0].port: 0 is not a port number (1-65535)",
        ),
        (
            "Service demo/good in /dir/list.yaml (document 1, items[4])",
            "duplicate: the same Service is already defined as Service demo/good in \
             /dir/list.yaml (document 1, items[0])",
        ),
        (
            "List in /dir/list.yaml (document 3)",
            "items: invalid type: map, expected a sequence",
        ),
    ];
    assert_eq!(rejected.len(), expected.len(), "{rejected:#?}");
    for (rejection, (object, reason)) in rejected.iter().zip(expected) {
        assert_eq!(rejection.object, object);
        assert!(
            rejection.reason.starts_with(reason),
            "{object}: {} does not start with {reason}",
            rejection.reason
        );
    }
    assert_eq!(
        objects.services[&key("demo", "good")].label,
        "Service demo/good in /dir/list.yaml (document 1, items[0])"
    );
    assert_eq!(
        objects.services[&key("demo", "nested")].label,
        "Service demo/nested in /dir/list.yaml (document 1, items[3], items[0])",
        "a List in a List is flattened"
    );
    assert_eq!(objects.services.len(), 2);
    assert!(
        rejected.iter().all(
            |r| r.may_concern("Deployment", "demo", "web", "/dir/list.yaml")
                == matches!(r.subject, Subject::Unidentified { .. })
        ),
        "only what could not be told apart may be any object of its file"
    );
    assert_eq!(
        objects.pods[&key("default", "after-the-lists")].label,
        "Pod default/after-the-lists in /dir/list.yaml (document 5)",
        "documents after a List keep their numbers"
    );
}

#[test]
fn a_kind_kubernetes_does_not_have_is_rejected_and_may_be_any_object_of_its_file() {
    let text = "apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: web, namespace: demo}\n\
                ---\napiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n\
                ---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";
    let (_, rejected) = parse(&[("/dir/web.yaml", text)]);
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!(
        rejected[0].object,
        "Deploymnet demo/web in /dir/web.yaml (document 1)"
    );
    assert!(
        rejected[0]
            .reason
            .starts_with("kind: no kind \"Deploymnet\" in apps/v1"),
        "{}",
        rejected[0].reason
    );
    assert!(rejected[0].may_concern("Deployment", "demo", "web", "/dir/web.yaml"));
    assert!(!rejected[0].may_concern("Deployment", "demo", "web", "/dir/other.yaml"));
}

#[test]
fn objects_from_the_api_server_are_checked_as_files_are() {
    let object = |version: &str, yaml: &str| {
        Ok(Document {
            origin: "the Kubernetes API".to_owned(),
            position: format!("resourceVersion {version}"),
            body: Body::Object(yaml::from_str(yaml).expect("yaml")),
        })
    };
    let (objects, rejected) = Objects::from_documents([
        object(
            "41",
            "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: demo}\nspec:\n  ports: [{port: 8000}]\n",
        ),
        object(
            "42",
            "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec:\n  ports: [{port: http}]\n",
        ),
    ]);
    assert!(objects.services.contains_key(&key("demo", "httpbin")));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        rejected[0].object,
        "Service demo/broken in the Kubernetes API (resourceVersion 42)"
    );
    assert_eq!(
        rejected[0].subject,
        Subject::Object {
            kind: "Service".into(),
            namespace: "demo".into(),
            name: "broken".into()
        }
    );
}
