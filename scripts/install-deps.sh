#!/usr/bin/env bash
# Installs what the local mesh needs, only what is missing (safe to run again):
# Debian packages for namespaces, iptables, captures and Prometheus; the test apps from PyPI.
# With --bench, also the benchmark's peers: nginx, wrk and oha.
set -euo pipefail
bench=false
[ "${1:-}" = "--bench" ] && bench=true

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (network namespaces, iptables, sidecars as uid 1337):" >&2
  echo "  sudo -E env \"PATH=\$PATH\" $0" >&2
  exit 1
fi

# command -> Debian package providing it
declare -A packages=(
  [iptables]=iptables
  [iptables-restore]=iptables
  [ip]=iproute2
  [ss]=iproute2
  [curl]=curl
  [tcpdump]=tcpdump
  [setpriv]=util-linux
  [python3]=python3
  [openssl]=openssl
  # The observability tests scrape the sidecars with a real Prometheus and lint with promtool.
  [prometheus]=prometheus
  [promtool]=prometheus
)
if $bench; then
  packages[nginx]=nginx-light
  packages[wrk]=wrk
fi
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Real peers for the e2e tests: httpbin under gunicorn, grpcio, websockets; kubernetes-validate,
# which checks what kube-inject writes against the Kubernetes schemas; and the official OTLP
# protos (opentelemetry-proto, with the protobuf runtime it needs) for the trace receiver
# tests/fixtures/otlp_receiver.py.
if ! python3 -c 'import httpbin, gunicorn, grpc, websockets, kubernetes_validate, opentelemetry.proto' >/dev/null 2>&1; then
  echo "installing Python packages: httpbin gunicorn grpcio websockets kubernetes-validate opentelemetry-proto"
  python3 -m pip install --quiet --disable-pip-version-check \
    'httpbin==0.10.4' 'gunicorn==27.0.1' 'grpcio==1.85.1' 'websockets==17.4' \
    'kubernetes-validate==1.37.0' 'opentelemetry-proto==1.45.2' 'protobuf==7.36.2'
fi
# The benchmark's open-loop load generator (latency-corrected), from crates.io.
if $bench && ! command -v oha >/dev/null 2>&1; then
  echo "installing oha (cargo install; a few minutes the first time)"
  cargo install --quiet --locked oha@1.16.0
fi

if ! command -v gunicorn >/dev/null 2>&1; then
  echo "error: gunicorn was installed but is not on PATH ($PATH)" >&2
  exit 1
fi
