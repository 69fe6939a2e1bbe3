#!/usr/bin/env bash
# The injection webhook as the API server calls it: AdmissionReviews for a typical pod (ports,
# probes, prometheus annotations) POSTed over HTTPS with kept-alive connections to a release
# `remora-injector serve` on loopback, one at a time and then 8 at a time; prints oha's latency
# summary (the issue's target: p99 <= 2 ms). The in-process cost is Criterion's
# (`cargo bench -p remora-injector --bench inject`).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh --bench
cargo build --release -p remora-injector
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/config" "$work/ca"
openssl ecparam -name prime256v1 -genkey -noout -out "$work/key.pem"
openssl ec -in "$work/key.pem" -pubout -out "$work/token-key.pem" 2>/dev/null
cat > "$work/review.json" <<'JSON'
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"bench",
 "kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
 "namespace":"demo","operation":"CREATE","object":{"apiVersion":"v1","kind":"Pod",
 "metadata":{"name":"web-0","namespace":"demo","labels":{"app":"web","version":"v1"},
  "annotations":{"prometheus.io/scrape":"true","prometheus.io/port":"8080"}},
 "spec":{"containers":[{"name":"web","image":"web:1","ports":[{"containerPort":8080}],
  "readinessProbe":{"httpGet":{"path":"/ready","port":8080}},"livenessProbe":{"tcpSocket":{"port":8080}}}]}}}}
JSON
"${CARGO_TARGET_DIR:-target}/release/remora-injector" serve --config-dir "$work/config" \
  --ca-dir "$work/ca" --token-key "$work/token-key.pem" --grpc-addr 127.0.0.1:25012 \
  --http-addr 127.0.0.1:25014 --webhook-addr 127.0.0.1:25017 >"$work/injector.log" 2>&1 &
server=$!
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:25014/ready >/dev/null && break
  sleep 0.2
done
for concurrency in 1 8; do
  echo "== $concurrency at a time"
  # The serving certificate is for istiod.istio-system.svc, issued by the fresh mesh root.
  oha -n 3000 -c "$concurrency" --no-tui --insecure -m POST \
    -H 'Content-Type: application/json' -D "$work/review.json" https://127.0.0.1:25017/inject |
    grep -E 'Success rate|Requests/sec|50.00%|99.00%|99.90%|[0-9]+ responses'
done
