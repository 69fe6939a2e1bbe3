#!/usr/bin/env bash
# Fuzzes each target (all, or those named) for SECONDS (default 600) with libFuzzer, from the
# committed corpus, then merges into fuzz/corpus/<target>/ only the inputs that add coverage
# (the stable test suite replays them). Prints executions and coverage per target; stops at the
# first crash, leaving the input in fuzz/libfuzzer/artifacts/<target>/ (copy it into the
# target's corpus once fixed: it becomes a regression test).
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(detect http1_head tunnel_headers snapshot yaml_objects admission_review authz route)
fi
rustup toolchain list | grep -q '^nightly' || {
  echo "fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

dir=fuzz/libfuzzer
# The targets build against the versions the workspace ships with (cargo adds libFuzzer's).
cp -f Cargo.lock "$dir/Cargo.lock"
printf '%-18s %14s %10s %8s\n' target executions coverage corpus
for target in "${targets[@]}"; do
  work=$dir/corpus/$target
  mkdir -p "$work" "$dir/artifacts/$target"
  log=$dir/$target.log
  status=0
  cargo +nightly fuzz run --fuzz-dir "$dir" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix="$dir/artifacts/$target/" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "$target: crashed (exit $status); see $log and $dir/artifacts/$target/" >&2
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 >&2
    exit "$status"
  fi
  # Keep what adds coverage, and nothing else, in the committed corpus.
  cargo +nightly fuzz run --fuzz-dir "$dir" "$target" "fuzz/corpus/$target" "$work" -- \
    -merge=1 >>"$log" 2>&1
  executions=$(grep -oP 'stat::number_of_executed_units: \K[0-9]+' "$log" | head -1)
  coverage=$(grep -oP '^#[0-9]+\s+DONE\s+cov: \K[0-9]+' "$log" | head -1)
  printf '%-18s %14s %10s %8s\n' "$target" "${executions:-?}" "${coverage:-?}" \
    "$(ls "fuzz/corpus/$target" | wc -l)"
done
