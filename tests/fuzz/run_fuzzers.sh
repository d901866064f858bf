#!/usr/bin/env bash
# Build the libFuzzer targets with clang and run each for a while on the golden seeds.
#
#   tests/fuzz/run_fuzzers.sh [BUILD_DIR] [SECONDS_PER_TARGET] [TARGET...]
#
# BUILD_DIR defaults to build-fuzz (relative to the current folder), SECONDS to 20, the targets
# to all three (fuzz_safetensors fuzz_index fuzz_config). Each target keeps its growing corpus in
# BUILD_DIR/corpus/<target>; a crashing input lands in BUILD_DIR/crashes/<target>/ and the script
# stops with exit code 1. Environment: MLA_SOURCE_DIR (default: this repository),
# JOBS (parallel fuzzing jobs per target, default 1), CXX (default clang++).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${MLA_SOURCE_DIR:-$(cd "$here/../.." && pwd)}"
build="${1:-build-fuzz}"
seconds="${2:-20}"
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_safetensors fuzz_index fuzz_config)
jobs="${JOBS:-1}"

case "$seconds" in
  ''|*[!0-9]*|0) echo "run_fuzzers.sh: SECONDS must be a positive integer (got '$seconds')" >&2; exit 2 ;;
esac

cmake -S "$src" -B "$build" -DMLA_FUZZ=ON -DCMAKE_CXX_COMPILER="${CXX:-clang++}" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"

fuzz_dir="$build/tests/fuzz"
for t in "${targets[@]}"; do
  seeds="$fuzz_dir/seeds/${t#fuzz_}"
  corpus="$build/corpus/$t"
  crashes="$build/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  echo "== $t: ${seconds}s, seeds from $seeds, corpus $corpus"
  extra=()
  [ "$jobs" -gt 1 ] && extra=(-jobs="$jobs" -workers="$jobs")
  # -rss_limit_mb: the readers must never need much memory, whatever the input says.
  set +e
  "$build/bin/$t" "$corpus" "$seeds" -max_total_time="$seconds" -rss_limit_mb=1024 \
    -artifact_prefix="$crashes/" -print_final_stats=1 "${extra[@]}" > "$build/$t.log" 2>&1
  status=$?
  set -e
  grep -E "^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY" \
    "$build/$t.log" || true
  if [ "$status" -ne 0 ] || [ -n "$(ls -A "$crashes")" ]; then
    echo "== $t FOUND A PROBLEM (exit $status): log $build/$t.log, inputs in $crashes" >&2
    exit 1
  fi
done
echo "== all fuzz targets ran clean"
