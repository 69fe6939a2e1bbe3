//! A synthetic cluster for the control plane's scale bench, as manifests the fake API server
//! serves: namespaces, Services, the Pods behind them (ready, with IPs), their EndpointSlices,
//! and AuthorizationPolicies and VirtualServices, half each; scoped, a `Sidecar` per namespace
//! that keeps each workload to its own namespace's Services.

use std::fmt::Write;

/// Namespaces the objects are spread over.
const NAMESPACES: usize = 10;

/// How big the cluster is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub pods: usize,
    pub services: usize,
    pub policies: usize,
    /// A Sidecar in each namespace (`egress: [{hosts: ["./*"]}]`).
    pub scoped: bool,
}

/// One pod of the registry.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub ip: String,
}

pub fn namespace_of(service: usize) -> String {
    format!("ns-{}", service % NAMESPACES)
}

/// Pod `index`: behind Service `index % services`, running as that Service's account.
pub fn pod(size: Size, index: usize) -> PodInfo {
    let service = index % size.services;
    PodInfo {
        namespace: namespace_of(service),
        name: format!("pod-{index}"),
        service_account: format!("sa-{service}"),
        ip: format!(
            "10.{}.{}.{}",
            1 + index / 65536,
            (index / 256) % 256,
            index % 256
        ),
    }
}

/// The most documents a manifest file holds (a YAML reader bounds documents per file).
const PER_FILE: usize = 200;

/// Every object but the EndpointSlices, as manifest files of at most [`PER_FILE`] documents.
pub fn objects(size: Size) -> Vec<String> {
    let mut text = String::new();
    for namespace in 0..NAMESPACES {
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{namespace}}}\n"
        );
    }
    for service in 0..size.services {
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{service}, namespace: {ns}}}\n\
             spec:\n  clusterIP: 10.96.{a}.{b}\n  selector: {{app: svc-{service}}}\n\
             \x20 ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
            ns = namespace_of(service),
            a = service / 256,
            b = service % 256,
        );
    }
    for index in 0..size.pods {
        let pod = pod(size, index);
        let service = index % size.services;
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             \x20 labels: {{app: svc-{service}}}\nspec:\n  serviceAccountName: {sa}\n\
             \x20 containers: [{{name: app, image: app}}]\nstatus:\n  phase: Running\n\
             \x20 podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n\
             \x20 conditions: [{{type: Ready, status: \"True\"}}]\n",
            name = pod.name,
            ns = pod.namespace,
            sa = pod.service_account,
            ip = pod.ip,
        );
    }
    for policy in 0..size.policies {
        let service = policy % size.services;
        let ns = namespace_of(service);
        if policy % 2 == 0 {
            let _ = write!(
                text,
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: allow-{policy}, namespace: {ns}}}\nspec:\n\
                 \x20 selector: {{matchLabels: {{app: svc-{service}}}}}\n  rules:\n\
                 \x20 - from: [{{source: {{namespaces: [ns-{from}]}}}}]\n\
                 \x20   to: [{{operation: {{methods: [GET]}}}}]\n",
                from = (service + 1) % NAMESPACES,
            );
        } else {
            let _ = write!(
                text,
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                 metadata: {{name: vs-{policy}, namespace: {ns}}}\nspec:\n\
                 \x20 hosts: [svc-{service}]\n  http:\n  - timeout: 5s\n\
                 \x20   route: [{{destination: {{host: svc-{service}}}}}]\n",
            );
        }
    }
    if size.scoped {
        for namespace in 0..NAMESPACES {
            let _ = write!(
                text,
                "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
                 metadata: {{name: default, namespace: ns-{namespace}}}\n\
                 spec:\n  egress: [{{hosts: [\"./*\"]}}]\n"
            );
        }
    }
    files(&text)
}

/// `documents` (`---`-separated) in files of at most [`PER_FILE`] documents.
fn files(documents: &str) -> Vec<String> {
    let documents: Vec<&str> = documents.split("---\n").filter(|d| !d.is_empty()).collect();
    documents
        .chunks(PER_FILE)
        .map(|chunk| chunk.iter().map(|d| format!("---\n{d}")).collect())
        .collect()
}

/// The ready addresses behind Service `service`: its pods (with their names), plus `extra`
/// more (an endpoint change is one more).
fn endpoint_addresses(size: Size, service: usize, extra: usize) -> Vec<(String, Option<String>)> {
    let pods = (service..size.pods)
        .step_by(size.services)
        .map(|index| pod(size, index))
        .map(|pod| (pod.ip, Some(pod.name)));
    let added = (0..extra).map(|added| (format!("10.250.{}.{}", added / 256, added % 256), None));
    pods.chain(added).collect()
}

/// The EndpointSlice of Service `service`.
fn endpoint_slice(size: Size, service: usize) -> String {
    let ns = namespace_of(service);
    let mut text = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: svc-{service}-x\n  namespace: {ns}\n\
         \x20 labels: {{kubernetes.io/service-name: svc-{service}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for (ip, name) in endpoint_addresses(size, service, 0) {
        let _ = write!(text, "- addresses: [{ip}]\n  conditions: {{ready: true}}\n");
        if let Some(name) = name {
            let _ = writeln!(
                text,
                "  targetRef: {{kind: Pod, name: {name}, namespace: {ns}}}"
            );
        }
    }
    text
}

/// Where Service `service`'s EndpointSlice is, under the API server's root.
pub fn slice_path(service: usize) -> String {
    format!(
        "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices/svc-{service}-x",
        namespace_of(service)
    )
}

/// A JSON merge patch giving Service `service`'s EndpointSlice `extra` more addresses.
pub fn endpoints_patch(size: Size, service: usize, extra: usize) -> String {
    let ns = namespace_of(service);
    let endpoints: Vec<serde_json::Value> = endpoint_addresses(size, service, extra)
        .into_iter()
        .map(|(ip, name)| {
            let mut endpoint =
                serde_json::json!({"addresses": [ip], "conditions": {"ready": true}});
            if let Some(name) = name {
                endpoint["targetRef"] =
                    serde_json::json!({"kind": "Pod", "name": name, "namespace": ns});
            }
            endpoint
        })
        .collect();
    serde_json::json!({ "endpoints": endpoints }).to_string()
}

/// Every Service's EndpointSlice, in files of at most [`PER_FILE`] documents.
pub fn endpoint_slices(size: Size) -> Vec<String> {
    let all: String = (0..size.services)
        .map(|service| endpoint_slice(size, service))
        .collect();
    files(&all)
}
