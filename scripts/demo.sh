#!/usr/bin/env bash
# The local mesh demo: brings up examples/ (httpbin and a sleep client, each with a Remora
# sidecar, and the control plane issuing their certificates), sends one curl from sleep to
# http://httpbin.demo:8000 over mTLS and shows what the app saw. `--keep` leaves it running
# until Ctrl-C; `--dir DIR` brings up other manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --workspace --bins --quiet
exec "${CARGO_TARGET_DIR:-target}/debug/remora-demo" "$@"
