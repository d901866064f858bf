#!/usr/bin/env bash
# The layering rule, checked: chapter N uses common/ and chapters before N, never after.
#
#   bash .ci/check_layering.sh [ROOT]      check the tree at ROOT (default: this repository)
#   bash .ci/check_layering.sh --self-test prove the check can fail: plant bad trees, expect exit 1
#
# Fails (exit 1), printing file:line and both chapters for each, when
#   - a file of chapter N (chapters/NN_name/...) includes a header of a chapter M > N
#     (#include "07_optimized_mla/..." from chapter 6), or of chapters/tools/;
#   - a file of common/ includes a header of any chapter (or of chapters/tools/);
#   - a CMake file of chapter N names the library of a chapter M > N (DEPENDS ch07, LIBS ch07,
#     a variable holding ch07: any word "chMM" outside a comment), or common/'s CMake names one.
# chapters/tools/ (programs that use every chapter, such as mla_verify) and tests/ may include
# anything. Exit 0 when the tree follows the rule, 2 on bad usage. ctest runs both modes
# (label layering); CI runs the check right after the format check (.ci/run).
set -euo pipefail

usage() {
  echo "usage: bash .ci/check_layering.sh [ROOT] | --self-test" >&2
  exit 2
}

# check <root>: print every violation under <root>, return 1 if there is one.
check() {
  local root=$1 bad=0
  if [ ! -d "$root/chapters" ] && [ ! -d "$root/common" ]; then
    echo "check_layering: $root has neither chapters/ nor common/" >&2
    return 2
  fi

  # ---- includes ----------------------------------------------------------------------------
  # One line per #include of a C++ file under chapters/ or common/: "path:line:text".
  local hit file rel line text target owner owner_dir part m who
  local -a parts
  local include_re='^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]([^">]*)[">]'
  while IFS= read -r hit; do
    file=${hit%%:*}
    hit=${hit#*:}
    line=${hit%%:*}
    text=${hit#*:}
    # The included path: what stands between the quotes or the angle brackets.
    [[ $text =~ $include_re ]] || continue
    target=${BASH_REMATCH[1]}
    rel=${file#"$root"/}
    case "$rel" in
      chapters/tools/* | tests/*) continue ;;  # may include anything
      chapters/*)
        owner_dir=${rel#chapters/}
        owner_dir=${owner_dir%%/*}
        [[ $owner_dir =~ ^([0-9][0-9])_ ]] || continue  # not a chapter folder
        owner=${BASH_REMATCH[1]}
        ;;
      common/*) owner_dir=common owner="" ;;
      *) continue ;;
    esac
    # chapters/ is the include root, so "tools/..." is chapters/tools/: above every chapter.
    if [ "${target#tools/}" != "$target" ]; then
      if [ -n "$owner" ]; then who="chapter $owner ($owner_dir)"; else who="common/"; fi
      echo "$rel:$line: $who includes \"$target\" of chapters/tools/, which stands above every chapter"
      bad=1
      continue
    fi
    # Every component of the included path that names a chapter is a dependency on it.
    IFS=/ read -r -a parts <<<"$target"
    for part in "${parts[@]}"; do
      [[ $part =~ ^([0-9][0-9])_ ]] || continue
      m=${BASH_REMATCH[1]}
      if [ -z "$owner" ]; then
        echo "$rel:$line: common/ includes \"$target\" of chapter $m ($part): common/ includes no chapter"
        bad=1
      elif [ "$((10#$m))" -gt "$((10#$owner))" ]; then
        echo "$rel:$line: chapter $owner ($owner_dir) includes \"$target\" of chapter $m ($part), a later chapter"
        bad=1
      fi
    done
  done < <(grep -rnE --include='*.cpp' --include='*.hpp' --include='*.h' --include='*.cc' \
             --include='*.inl' '^[[:space:]]*#[[:space:]]*include' \
             "$root/chapters" "$root/common" 2>/dev/null || true)

  # ---- CMake: a chapter's libraries ----------------------------------------------------------
  # Any word chMM (a chapter library; programs are chMM_name) outside a comment.
  local cm owner_num
  while IFS= read -r cm; do
    rel=${cm#"$root"/}
    case "$rel" in
      chapters/tools/*) continue ;;
      chapters/*)
        owner_dir=${rel#chapters/}
        owner_dir=${owner_dir%%/*}
        [[ $owner_dir =~ ^([0-9][0-9])_ ]] || continue  # not a chapter folder
        owner_num=${BASH_REMATCH[1]}
        ;;
      common/*) owner_dir=common owner_num=0 ;;
      *) continue ;;
    esac
    # awk prints "line:MM" for each chapter library named on a line (comments stripped).
    while IFS=: read -r line m; do
      if [ "$owner_dir" = common ]; then
        echo "$rel:$line: common/ links chapter $m (ch$m): common/ depends on no chapter"
        bad=1
      elif [ "$((10#$m))" -gt "$((10#$owner_num))" ]; then
        echo "$rel:$line: chapter $owner_num ($owner_dir) links chapter $m (ch$m), a later chapter"
        bad=1
      fi
    done < <(awk '{
               sub(/#.*/, "")
               s = " " $0 " "
               while (match(s, /[^A-Za-z0-9_$]ch[0-9][0-9][^A-Za-z0-9_]/)) {
                 print FNR ":" substr(s, RSTART + 3, 2)
                 s = substr(s, RSTART + RLENGTH - 1)
               }
             }' "$cm")
  done < <(find "$root/chapters" "$root/common" \( -name CMakeLists.txt -o -name '*.cmake' \) \
             2>/dev/null | sort)

  return $bad
}

# ---- self-test: bad trees must fail, a good one must pass -------------------------------------
self_test() {
  local fail=0 out rc
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # A small good tree: chapter 2 uses chapter 1 and common/, tools/ uses both, tests anything.
  make_tree() {
    local t=$1
    mkdir -p "$t/common/include/mla" "$t/chapters/01_one" "$t/chapters/02_two" \
             "$t/chapters/tools" "$t/tests"
    printf '#pragma once\n' >"$t/common/include/mla/core.hpp"
    printf '#include "mla/core.hpp"\n' >"$t/chapters/01_one/one.hpp"
    printf '#include "01_one/one.hpp"\n#include "mla/core.hpp"\n' >"$t/chapters/02_two/two.cpp"
    printf '#include "02_two/two.hpp"\n#include "01_one/one.hpp"\n' >"$t/chapters/tools/tool.cpp"
    printf '#include "02_two/two.hpp"\n' >"$t/tests/test_two.cpp"
    printf 'mla_add_chapter(ch01 SOURCES one.cpp PROGRAM ch01_one MAIN main.cpp)\n' \
      >"$t/chapters/01_one/CMakeLists.txt"
    printf '# ch03 will come\nmla_add_chapter(ch02\n  DEPENDS ch01\n  PROGRAM ch02_two)\n' \
      >"$t/chapters/02_two/CMakeLists.txt"
    printf 'mla_add_program(tool SOURCES tool.cpp LIBS ch01 ch02)\n' \
      >"$t/chapters/tools/CMakeLists.txt"
    printf 'add_library(mla_core STATIC src/core.cpp)\n' >"$t/common/CMakeLists.txt"
  }
  # expect <case> <exit code> <text the output must contain> <setup command...>
  expect() {
    local name=$1 want=$2 text=$3
    shift 3
    rm -rf "$tmp/tree"
    make_tree "$tmp/tree"
    (cd "$tmp/tree" && "$@")
    rc=0
    out=$(check "$tmp/tree" 2>&1) || rc=$?
    if [ "$rc" -eq "$want" ] && [[ "$out" == *"$text"* ]]; then
      echo "ok: $name (exit $rc)"
    else
      echo "FAILED: $name: expected exit $want and output containing '$text', got exit $rc:" >&2
      printf '%s\n' "$out" >&2
      fail=1
    fi
  }
  expect "a good tree passes" 0 "" true
  expect "chapter 1 including chapter 2 fails" 1 \
    'chapters/01_one/one.hpp:2: chapter 01 (01_one) includes "02_two/two.hpp" of chapter 02 (02_two), a later chapter' \
    sh -c 'printf "#include \"02_two/two.hpp\"\n" >>chapters/01_one/one.hpp'
  expect "an indented include with angle brackets fails" 1 "chapter 01 (01_one) includes" \
    sh -c 'printf "  #  include <02_two/two.hpp>  // x\n" >>chapters/01_one/one.hpp'
  expect "common/ including a chapter fails" 1 \
    'common/include/mla/core.hpp:2: common/ includes "01_one/one.hpp" of chapter 01' \
    sh -c 'printf "#include \"01_one/one.hpp\"\n" >>common/include/mla/core.hpp'
  expect "a chapter including tools/ fails" 1 \
    'chapters/02_two/two.cpp:3: chapter 02 (02_two) includes "tools/tool.hpp" of chapters/tools/' \
    sh -c 'printf "#include \"tools/tool.hpp\"\n" >>chapters/02_two/two.cpp'
  expect "a chapter's CMake DEPENDS on a later chapter fails" 1 \
    'chapters/01_one/CMakeLists.txt:2: chapter 01 (01_one) links chapter 02 (ch02), a later chapter' \
    sh -c 'printf "target_link_libraries(ch01 PUBLIC ch02)\n" >>chapters/01_one/CMakeLists.txt'
  expect "common/'s CMake linking a chapter fails" 1 "common/ links chapter 01" \
    sh -c 'printf "target_link_libraries(mla_core PUBLIC ch01)\n" >>common/CMakeLists.txt'
  if [ "$fail" -eq 0 ]; then
    echo "check_layering self-test: every planted violation was caught"
  fi
  return $fail
}

case "${1:-}" in
  -h | --help) usage ;;
  --self-test)
    [ $# -eq 1 ] || usage
    self_test
    exit $?
    ;;
esac
[ $# -le 1 ] || usage
root=${1:-"$(cd "$(dirname "$0")/.." && pwd)"}
root=${root%/}
rc=0
check "$root" || rc=$?
if [ "$rc" -eq 0 ]; then
  echo "layering: ok (no chapter includes or links a later one; common/ includes no chapter)"
elif [ "$rc" -eq 1 ]; then
  echo "layering: FAILED: chapter N may use common/ and chapters before N only (CONTRIBUTING.md)" >&2
fi
exit "$rc"
