#!/usr/bin/env bash
# Run a program and check how it ends: its exit code, and a piece of text in what it printed.
#
#   tests/cli/expect_exit.sh <code> <substring> <program> [args...]
#
# Passes (exit 0) if <program> exits with <code> and its stdout + stderr contain <substring>
# (a fixed string, not a pattern; empty matches anything). Otherwise prints what was expected,
# what happened and the program's output, and exits 1. The ctest cases "cli: ..." (label
# reliability) are made of this: every program must refuse a nonsense option with exit code 2
# and a message naming the option, and answer --help with 0.
#
# Environment: EXPECT_EXIT_VMEM_KB, if set, caps the program's virtual memory (ulimit -v), so
# a program that forgets to refuse a giant size fails with an allocation error instead of
# exhausting the machine. (Not under AddressSanitizer: its shadow memory is virtual memory.)
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 <code> <substring> <program> [args...]" >&2
  exit 2
fi
expected="$1"
substring="$2"
shift 2

output="$(
  if [ -n "${EXPECT_EXIT_VMEM_KB:-}" ]; then ulimit -v "$EXPECT_EXIT_VMEM_KB"; fi
  "$@" 2>&1
)"
status=$?

ok=1
[ "$status" -eq "$expected" ] || ok=0
case "$output" in
  *"$substring"*) ;;
  *) ok=0 ;;
esac

if [ "$ok" -eq 1 ]; then
  echo "ok: exit $status, output names '$substring': $*"
  exit 0
fi
{
  echo "FAILED: $*"
  echo "  expected: exit $expected and output containing '$substring'"
  echo "  got:      exit $status"
  echo "----- output (first 40 lines) -----"
  printf '%s\n' "$output" | head -n 40
} >&2
exit 1
