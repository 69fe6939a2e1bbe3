#!/usr/bin/env bash
# Everything CI checks: formatting, lints, and the whole test suite (unit and end-to-end).
# Needs root: the end-to-end tests build pods out of network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh --bench
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The docs build, with every intra-doc link resolving.
RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links" cargo doc --workspace --no-deps
# The e2e harness runs these binaries; building them first keeps the test run itself quick.
cargo build --workspace --bins
cargo test --workspace
# The benchmark harness end to end, for a few seconds (debug build: checks it works, not speed).
"${CARGO_TARGET_DIR:-target}/debug/remora-bench" --smoke
