#!/usr/bin/env bash
# CI: the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer).
#
#   .ci/asan.sh [BUILD_DIR]        (default: build-asan in the repository, as the asan preset)
#
# Configures with MLA_SANITIZE=ON (RelWithDebInfo at -O1 -g1), builds everything, runs every ctest except
# the documentation build (label docs) with MLA_SMALL=1, then the tour (every program at small
# sizes), with sanitizer options that make any report fatal: the first error ends the program
# with a stack trace, and so does a leak at exit. Exit code 0 only if all of it ran clean.
# Environment: JOBS (parallel build and test jobs, default: nproc).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "$here/.." && pwd)"
build="${1:-$src/build-asan}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"  # absolute: the script changes folder below
jobs="${JOBS:-$(nproc)}"

# -O1 -g1 (line tables): the sanitizers' advice, and half the compile time of -O2 -g (measured on
# one test file: 25 s against 55 s); reports still name every function, file and line.
cmake -S "$src" -B "$build" -DMLA_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
cmake --build "$build" -j"$jobs"

# halt_on_error: stop at the first report (UBSan is already -fno-sanitize-recover); detect_leaks:
# LeakSanitizer at exit; abort_on_error=0: exit with an error code rather than a core dump.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:print_stacktrace=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export MLA_SMALL=1

cd "$build"
status=0
ctest -LE docs -j"$jobs" --output-on-failure --timeout 900 || status=1
# Every program once more, at the tour's small sizes: their main() paths under the sanitizers.
# build/tour.txt holds the tour's commands, one per line (CMakeLists.txt writes it); they run
# $jobs at a time — in order they take minutes under the sanitizers — each into its own log.
tour_logs="$build/asan-tour"
rm -rf "$tour_logs" && mkdir -p "$tour_logs"
n=0
while IFS= read -r cmd; do
  [ -n "$cmd" ] || continue
  n=$((n + 1))
  (eval "$cmd" >"$tour_logs/$n.log" 2>&1 && touch "$tour_logs/$n.ok") &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
done <"$build/tour.txt"
wait
for ((i = 1; i <= n; i++)); do
  if [ ! -f "$tour_logs/$i.ok" ]; then
    status=1
    echo "asan.sh: a tour program failed under the sanitizers: $(sed -n "${i}p" "$build/tour.txt")" >&2
    tail -n 40 "$tour_logs/$i.log" >&2
  fi
done
[ "$n" -gt 0 ] || { status=1; echo "asan.sh: $build/tour.txt lists no programs" >&2; }
[ "$status" -eq 0 ] && echo "asan.sh: the tests and the tour ran clean under ASan + UBSan + LSan"
exit "$status"
