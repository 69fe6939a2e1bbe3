#!/usr/bin/env bash
# The benchmark: direct vs a Remora sidecar pair vs an nginx mTLS pair, interleaved, on a release
# build. Options go to remora-bench (e.g. --rounds 5, --seconds 30, --smoke). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh --bench
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/remora-bench" "$@"
