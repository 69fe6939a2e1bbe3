#!/usr/bin/env bash
# The soak (not in CI): a Remora pair on the local cluster under 1,000 req/s for 10 minutes, a
# tenth of them on new connections, certificates renewed every 2 minutes and a config push every
# minute; prints the sidecars' RSS and descriptors every 10 s and fails on any failed request or
# on more than 10% growth after minute 2. Options go to remora-soak (--minutes, --rate, --keep).
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh --bench
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/remora-soak" "$@"
