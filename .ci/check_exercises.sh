#!/usr/bin/env bash
# Exercise mode check (issue #5, "Tests as exercises").
#
# Builds with -DMLA_EXERCISES=ON, where each chapter's key functions are stubs that throw
# "exercise N.k: implement <function> — hint: see chapters/NN_*/README.md, exercise N.k" (the
# README's exercise list is the one place where the task and its hint are written), and checks,
# for every chapter with stubs, that
#   (0) before building: its README has an entry "**Exercise N.k" for every stub, and the stub
#       points to it (a stub that still writes its hint in the code is noted),
#   (a) its tests fail (mla_tests "[chNN]"),
#   (b) the output names one of its exercises ("exercise N."),
#   (c) the failure is an ordinary test failure, not a crash or a hang: Catch2 exits with the
#       number of failed assertions (1 .. 255, here a handful), a crash is a signal (exit > 128),
#       a hang runs into the timeout (exit 124);
# and that its program stops with the exercise's message and exit code 1 (mla::run_program).
# Chapters without stubs (no MLA_EXERCISE in chapters/NN_*/ sources) are skipped with a note.
#
# Usage: bash .ci/check_exercises.sh [build-dir]      (default: build-exercises in the repo)
# JOBS (default: all cores) and TEST_TIMEOUT (seconds per chapter, default 300) may be set.
set -euo pipefail

if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: bash .ci/check_exercises.sh [build-dir]   (default: build-exercises)" >&2
  exit 2
fi
# A build dir given on the command line is relative to where the script was called from.
if [ $# -eq 1 ]; then
  case "$1" in /*) build=$1 ;; *) build=$PWD/$1 ;; esac
fi
cd "$(dirname "$0")/.."
build=${build:-$PWD/build-exercises}
jobs=${JOBS:-$(nproc)}
timeout_s=${TEST_TIMEOUT:-300}

start=$SECONDS
fail=0
problem() {
  echo "FAIL: $*" >&2
  fail=1
}

# ---- which chapters have stubs, and their programs ---------------------------------------------
chapters=()  # "NN dir program ids..."
for dir in chapters/[0-9][0-9]_*/; do
  dir=${dir%/}
  nn=$(basename "$dir" | cut -c1-2)
  # The ids of MLA_EXERCISE("N.k", …) calls (clang-format may break the line after the paren).
  ids=$(find "$dir" -name '*.cpp' -o -name '*.hpp' | sort | xargs cat | tr '\n' ' ' |
        grep -oE 'MLA_EXERCISE\( *"[0-9]+\.[0-9]+"' | grep -oE '[0-9]+\.[0-9]+' | sort -V | uniq |
        tr '\n' ' ' || true)
  if [ -z "$ids" ]; then
    echo "note: ch$nn ($dir) has no exercise stubs: skipped"
    continue
  fi
  program=$(grep -oE 'PROGRAM +[A-Za-z0-9_]+' "$dir/CMakeLists.txt" 2>/dev/null | awk '{print $2}' |
            head -1 || true)
  chapters+=("$nn $dir ${program:--} $ids")
  # (0) the stubs point to the README, and the README holds each exercise. (A stub that still
  # carries its hint in the code is reported as a note, not a failure.)
  src=$(find "$dir" -name '*.cpp' -o -name '*.hpp' | sort | xargs cat | tr '\n' ' ')
  for id in $ids; do
    if ! grep -qE "MLA_EXERCISE\( *\"$id\", *\"[^\"]*\", *\"see $dir/README.md, exercise $id\"" \
         <<<"$src"; then
      echo "note: ch$nn: the stub of exercise $id does not point to $dir/README.md (its hint is" \
           "written in the code)"
    fi
    grep -qF "**Exercise $id" "$dir/README.md" 2>/dev/null ||
      problem "ch$nn: $dir/README.md has no entry \"**Exercise $id\""
  done
done
if [ ${#chapters[@]} -eq 0 ]; then
  echo "FAIL: no chapter has exercise stubs (grep MLA_EXERCISE chapters/*/)" >&2
  exit 1
fi

# ---- configure and build in exercise mode ----------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== configure $build (Release, MLA_EXERCISES=ON)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLA_EXERCISES=ON >"$log" 2>&1 ||
  { cat "$log" >&2; echo "FAIL: cmake configure failed" >&2; exit 1; }

targets=(mla_tests)
for c in "${chapters[@]}"; do
  read -r _ _ program _ <<<"$c"
  [ "$program" != "-" ] && targets+=("$program")
done
echo "== build ${targets[*]} (-j$jobs)"
if ! cmake --build "$build" -j "$jobs" --target "${targets[@]}" >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "FAIL: the exercise build does not compile" >&2
  exit 1
fi
warnings=$(grep -c 'warning:' "$log" || true)
[ "$warnings" -gt 0 ] && grep 'warning:' "$log" | head -20 >&2 &&
  problem "the exercise build has $warnings compiler warning(s)"
build_time=$((SECONDS - start))
echo "   built in ${build_time}s"

# ---- each chapter: tests fail with its exercise, program stops with exit code 1 ---------------
tests_start=$SECONDS
for c in "${chapters[@]}"; do
  read -r nn dir program ids <<<"$c"
  n=$((10#$nn))
  echo "== ch$nn: exercises $ids"
  set +e
  timeout "$timeout_s" "$build/bin/mla_tests" "[ch$nn]" >"$log" 2>&1
  rc=$?
  set -e
  if [ $rc -eq 0 ]; then
    problem "ch$nn: the tests pass in exercise mode (a stub is not reached by any test?)"
  elif [ $rc -eq 124 ]; then
    problem "ch$nn: the tests did not finish within ${timeout_s}s (a hang in exercise mode?)"
  elif [ $rc -gt 128 ] || grep -q 'FATAL ERROR' "$log"; then
    tail -20 "$log" >&2
    problem "ch$nn: the tests crashed (exit code $rc) instead of failing"
  elif ! grep -q "exercise $n\." "$log"; then
    tail -20 "$log" >&2
    problem "ch$nn: the tests fail (exit code $rc) but never say \"exercise $n.…\""
  else
    seen=$(grep -oE 'exercise [0-9]+\.[0-9]+: implement' "$log" | sort -V | uniq -c |
           awk '{printf "%s%s (%d×)", sep, $3, $1; sep=", "}' | tr -d ':')
    summary=$(grep -E '^test cases:' "$log" | tail -1)
    echo "   tests fail as they should (exit code $rc): $seen; $summary"
  fi

  if [ "$program" != "-" ]; then
    set +e
    timeout "$timeout_s" "$build/bin/$program" >"$log" 2>&1 </dev/null
    rc=$?
    set -e
    if [ $rc -eq 1 ] && grep -q "exercise [0-9]*\.[0-9]*: implement" "$log"; then
      echo "   $program stops with: $(grep -oE 'exercise [0-9]+\.[0-9]+: implement [^ ]+' "$log" | head -1)"
    else
      tail -5 "$log" >&2
      problem "$program: expected exit code 1 and an exercise message, got exit code $rc"
    fi
  fi
done
echo "   tests and programs ran in $((SECONDS - tests_start))s"

echo "== total ${SECONDS}s"
if [ $fail -ne 0 ]; then
  echo "check_exercises: FAILED (see above)" >&2
  exit 1
fi
echo "check_exercises: every chapter with stubs fails its tests with its exercise message: ok"
