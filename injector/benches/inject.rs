//! What injection costs: one AdmissionReview as the webhook answers it (parse, decide, inject,
//! diff, encode; the target is a p99 under 2 ms over HTTPS, of which this is the
//! compute), and `kube-inject` of a 1,000-document manifest stream.

use criterion::{criterion_group, criterion_main, Criterion};
use remora_injector::inject::{
    admission::{review, PathParams},
    inject_manifests, Injector,
};
use serde_json::json;

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "generateName": "reviews-v1-7f9c8d6b5-", "namespace": "shop",
                    "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7f9c8d6b5"},
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9100"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "reviews-v1-7f9c8d6b5", "uid": "u", "controller": true}]
                },
                "spec": {
                    "serviceAccountName": "reviews",
                    "containers": [{
                        "name": "reviews", "image": "reviews:1",
                        "ports": [{"name": "http", "containerPort": 9080, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"},
                                           "timeoutSeconds": 1, "periodSeconds": 10},
                        "livenessProbe": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 1}
                    }]
                }
            }
        }
    }))
    .unwrap_or_default()
}

fn manifests(documents: usize) -> String {
    (0..documents)
        .map(|i| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: shop}}\n\
                 spec:\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}, version: v1}}}}\n\
                 \x20   spec:\n      containers:\n        - name: app\n          image: app:1\n          ports: [{{containerPort: 8080}}]\n\
                 \x20         readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}\n---\n"
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let injector = Injector::default();
    let body = review_body();
    let params = PathParams::default();
    c.bench_function("admission review of a Pod", |b| {
        b.iter(|| review(&injector, &body, &params).map(|r| r.to_string().len()))
    });
    let stream = manifests(1_000);
    let mut group = c.benchmark_group("kube-inject");
    group.sample_size(10);
    group.bench_function("1,000 Deployments", |b| {
        b.iter(|| inject_manifests(&injector, &stream).map(|out| out.text.len()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
