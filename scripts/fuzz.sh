#!/usr/bin/env bash
# Fuzzes each target (all, or those named) with libFuzzer for SECONDS (default 600) of the
# fuzzer's own CPU time, not wall time (so the budget holds on a busy machine, niced, or paused
# with SIGSTOP), starting from the committed corpus; then merges into fuzz/corpus/<target>/ only
# the inputs that add coverage (the stable test suite replays them). Prints executions and
# coverage per target; stops at the first crash, leaving the input in
# fuzz/libfuzzer/artifacts/<target>/ (copy it into the target's corpus once fixed: it becomes a
# regression test). A unit running longer than FUZZ_UNIT_TIMEOUT seconds (default 10, wall time)
# counts as a crash: raise it before pausing the fuzzers.
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
  cargo +nightly fuzz build --fuzz-dir "$dir" "$target" >"$log" 2>&1
  cargo +nightly fuzz run --fuzz-dir "$dir" "$target" "$work" "fuzz/corpus/$target" -- \
    -print_final_stats=1 -timeout="${FUZZ_UNIT_TIMEOUT:-10}" -rss_limit_mb=4096 \
    -artifact_prefix="$dir/artifacts/$target/" >>"$log" 2>&1 &
  runner=$!
  # The fuzzer is the runner's child; interrupt it once it has used its CPU budget
  # (libFuzzer prints its final stats and exits with 72 when interrupted).
  while kill -0 "$runner" 2>/dev/null; do
    sleep 5
    pid=$(pgrep -f -n "release/$target( |\$)" || true)
    [ -n "$pid" ] || continue
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    if [ "$ticks" -ge $((seconds * $(getconf CLK_TCK))) ]; then
      kill -INT "$pid" 2>/dev/null || true
      break
    fi
  done
  wait "$runner" || status=$?
  grep -q 'libFuzzer: run interrupted' "$log" && status=0
  if [ "$status" -ne 0 ]; then
    echo "$target: crashed (exit $status); see $log and $dir/artifacts/$target/" >&2
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 >&2
    exit "$status"
  fi
  executions=$(grep -oP 'stat::number_of_executed_units: \K[0-9]+' "$log" | tail -1)
  coverage=$(grep -oP '^#[0-9]+\s+\S+\s+cov: \K[0-9]+' "$log" | tail -1)
  # Keep what adds coverage, and nothing else, in the committed corpus.
  cargo +nightly fuzz run --fuzz-dir "$dir" "$target" "fuzz/corpus/$target" "$work" -- \
    -merge=1 >>"$log" 2>&1
  printf '%-18s %14s %10s %8s\n' "$target" "${executions:-?}" "${coverage:-?}" \
    "$(ls "fuzz/corpus/$target" | wc -l)"
done
