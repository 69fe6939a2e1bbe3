use remora_api::{
    proto::config::{Node, Push},
    resources::{self, version_text},
};

use super::*;
use crate::server::discovery::held::{self, Contents};

/// Two Services in `shop`, `web` (routed by a VirtualService) and `api`, with a pod each, and
/// a client pod; `extra` more ready addresses behind `api`.
fn mesh(extra: &[&str]) -> Catalog {
    let pod = |name: &str, app: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  \
             labels: {{app: {app}}}\n  annotations: {{sidecar.istio.io/status: '{{}}'}}\n\
             spec:\n  containers: [{{name: app, ports: [{{containerPort: 8080}}]}}]\n\
             status:\n  podIP: {ip}\n"
        )
    };
    let service = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  \
             ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
        )
    };
    let slice = |name: &str, ips: &[&str]| {
        let endpoints: String = ips
            .iter()
            .map(|ip| format!("- addresses: [{ip}]\n"))
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {name}-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}"
        )
    };
    let mut api = vec!["198.18.0.11"];
    api.extend(extra);
    let text = [
        service("web", "198.19.0.10"),
        service("api", "198.19.0.11"),
        pod("web-0", "web", "198.18.0.10"),
        pod("api-0", "api", "198.18.0.11"),
        pod("client-0", "client", "198.18.0.12"),
        slice("web", &["198.18.0.10"]),
        slice("api", &api),
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {name: web, namespace: shop}\nspec:\n  hosts: [web]\n  http:\n  \
         - timeout: 5s\n    route: [{destination: {host: web}}]\n"
            .to_owned(),
    ]
    .concat();
    Catalog::build(vec![("/m/shop.yaml".to_owned(), text)])
}

fn client() -> Node {
    Node {
        pod_name: "client-0".into(),
        namespace: "shop".into(),
        ip: "198.18.0.12".into(),
    }
}

fn contents(published: &Published, node: &Node) -> Contents {
    let catalog = &published.catalog;
    Contents {
        shared: published.shared.clone(),
        view: published.view(&catalog.view_of(node)),
        own: catalog
            .own_resources(node)
            .iter()
            .map(|r| (Arc::from(r.name.as_str()), Encoded::of(r)))
            .collect(),
    }
}

#[test]
fn a_full_push_is_the_catalogs_snapshot() {
    let catalog = Arc::new(mesh(&[]));
    assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
    let published = Published::first(catalog.clone());
    let node = client();
    let change = held::full(&contents(&published, &node));
    assert_eq!(version_text(change.sum), catalog.version_for(&node));
    let staged = resources::Held::default()
        .stage(Push {
            version: version_text(change.sum),
            full: true,
            resources: change.resources,
            removed: vec![],
            more: false,
        })
        .expect("applies");
    let mut expected = catalog.snapshot_for(&node);
    expected.version = version_text(change.sum);
    assert_eq!(staged.snapshot, expected);
    let web = expected
        .services
        .iter()
        .find(|s| s.hostname == "web.shop.svc.cluster.local")
        .expect("web");
    assert_eq!(web.ports[0].http_routes.len(), 1, "routed in the view");
    assert_eq!(web.ports[0].endpoints.len(), 1, "endpoints put back");
}

#[test]
fn an_endpoint_change_changes_only_the_shared_part_it_touches() {
    let first = Published::first(Arc::new(mesh(&[])));
    let node = client();
    let before = contents(&first, &node);

    // Nothing changed: the same shared part, the same view.
    let same = first.next(Arc::new(mesh(&[])));
    assert!(Arc::ptr_eq(&same.shared, &first.shared));
    assert!(Arc::ptr_eq(&contents(&same, &node).view, &before.view));

    // One more ready address behind `api`: only its endpoints changed, the view is reused.
    let second = same.next(Arc::new(mesh(&["198.18.0.99"])));
    assert_eq!(second.shared.generation, first.shared.generation + 1);
    assert_eq!(
        second
            .shared
            .changed
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["endpoints/api.shop.svc.cluster.local"]
    );
    let after = contents(&second, &node);
    assert!(Arc::ptr_eq(&after.view, &before.view));
    let sum = held::full(&before).sum;
    let change = held::delta(
        &held::Held {
            contents: before,
            sum,
        },
        &after,
    );
    assert_eq!(change.resources.len(), 1);
    assert!(change.removed.is_empty());
    assert_eq!(version_text(change.sum), second.catalog.version_for(&node));
}
