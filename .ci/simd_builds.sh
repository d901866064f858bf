#!/usr/bin/env bash
# CI: every SIMD width the kernels have is compiled, and tested where this CPU can run it.
#
#   bash .ci/simd_builds.sh [BUILD_PREFIX]     (default: build-simd -> build-simd-sse42, ...)
#
# The kernels' vector width is fixed at compile time (xsimd's default batch), so a build with
# -march=native compiles one path only. For each preset (CMakePresets.json)
#   sse42   x86-64-v2: 4-float vectors (the 8-head groups of the head-blocked kernel)
#   avx2    x86-64-v3: 8-float vectors (16-head groups)
#   avx512  x86-64-v4 + AVX512_BF16: 16-float vectors (16- and 32-head groups)
# it configures and builds mla_tests_ch07 (chapter 7's tests alone: the kernels are what the width
# changes) and mla_bench, fails on any compiler warning in the log, and, if this CPU has every
# instruction set the preset's -march allows, runs those tests (mla_tests_ch07 "[ch07]") and a
# short mla_bench (it validates every kernel against v1 before timing).
# Otherwise it says "compiled, not run: this CPU lacks <flag>".
# Environment: JOBS (parallel build jobs, default: nproc); PRESETS (default: "sse42 avx2 avx512");
# TESTS (the Catch2 test spec, default "[ch07]"; the [ch07][speed] ratios hold with a margin on an
# idle machine, "[ch07]~[speed]" leaves them to the native build on a crowded one); the compiler
# cache is used when ccache is installed.
set -euo pipefail

if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: bash .ci/simd_builds.sh [build-prefix]   (default: build-simd)" >&2
  exit 2
fi
# A prefix given on the command line is relative to where the script was called from.
if [ $# -eq 1 ]; then
  case "$1" in /*) prefix=$1 ;; *) prefix=$PWD/$1 ;; esac
fi
cd "$(dirname "$0")/.."
prefix=${prefix:-$PWD/build-simd}
jobs=${JOBS:-$(nproc)}
presets=${PRESETS:-sse42 avx2 avx512}
tests=${TESTS:-[ch07]}
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

# The /proc/cpuinfo flags each preset's code may use (x86-64-v2, -v3, -v4 as GCC defines them,
# plus -mavx512bf16 for avx512; Linux names SSE3 "pni" and LZCNT "abm").
required_flags() {
  case "$1" in
    sse42) echo "cx16 popcnt pni ssse3 sse4_1 sse4_2" ;;
    avx2) echo "cx16 popcnt pni ssse3 sse4_1 sse4_2 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave" ;;
    avx512) echo "cx16 popcnt pni ssse3 sse4_1 sse4_2 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave
                  avx512f avx512bw avx512cd avx512dq avx512vl avx512_bf16" ;;
    *) echo "unknown preset $1" >&2; exit 2 ;;
  esac
}
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
# The first flag of the preset this CPU does not have (empty if it has them all).
missing_flag() {
  local f
  for f in $(required_flags "$1"); do
    case "$cpu_flags" in *" $f "*) ;; *) echo "$f"; return ;; esac
  done
}

start=$SECONDS
fail=0
summary=()
for preset in $presets; do
  build="$prefix-$preset"
  echo "######## $preset  ($build, +$((SECONDS - start))s)"
  mkdir -p "$build"
  log="$build/simd_build.log"
  lacks=$(missing_flag "$preset")
  # Chapter 7's own test binary (no test discovery runs at build time) and mla_bench, which
  # links every library: each SIMD path is compiled whether or not this CPU can run it.
  targets=(mla_tests_ch07 mla_bench)
  if ! { cmake -S . -B "$build" --preset "$preset" "${launcher[@]}" &&
         cmake --build "$build" -j "$jobs" --target "${targets[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "FAIL: $preset does not build (log: $log)" >&2
    summary+=("$preset: BUILD FAILED")
    fail=1
    continue
  fi
  if grep -n 'warning:' "$log"; then
    echo "FAIL: $preset builds with compiler warnings (log: $log)" >&2
    summary+=("$preset: WARNINGS")
    fail=1
    continue
  fi
  if [ -n "$lacks" ]; then
    echo "compiled, not run: this CPU lacks $lacks"
    summary+=("$preset: compiled (zero warnings), not run: this CPU lacks $lacks")
    continue
  fi
  if ! OPENBLAS_NUM_THREADS=1 "$build/bin/mla_tests_ch07" "$tests"; then
    echo "FAIL: $preset: mla_tests_ch07 $tests" >&2
    summary+=("$preset: TESTS FAILED")
    fail=1
    continue
  fi
  if ! (cd "$build" && bin/mla_bench --heads 16 --context 512 --impl all --quick); then
    echo "FAIL: $preset: mla_bench" >&2
    summary+=("$preset: MLA_BENCH FAILED")
    fail=1
    continue
  fi
  summary+=("$preset: compiled (zero warnings), $tests passed, mla_bench validated")
done

echo
echo "######## SIMD builds  (+$((SECONDS - start))s)"
printf '  %s\n' "${summary[@]}"
exit $fail
