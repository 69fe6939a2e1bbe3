#!/usr/bin/env bash
# The local mesh demo: two pods (network namespaces) with Remora sidecars, one curl through
# them over mTLS, and what the app saw. `--keep` leaves it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --workspace --bins --quiet
exec "${CARGO_TARGET_DIR:-target}/debug/remora-demo" "$@"
