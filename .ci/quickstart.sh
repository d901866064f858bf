#!/usr/bin/env bash
# The README's two commands:
#   bash .ci/quickstart.sh tour   installs what is missing, builds, runs every chapter program
#   bash .ci/quickstart.sh test   installs what is missing, builds, runs the whole test suite
# BUILD_DIR (default: build) and JOBS (default: all cores) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-tour}
case "$what" in tour|test) ;; *) echo "usage: bash .ci/quickstart.sh tour|test" >&2; exit 2 ;; esac

# Debian 12 packages the project builds with (checked by their headers / tools).
packages=(cmake g++ make libxtensor-dev xtl-dev libxsimd-dev libxtensor-blas-dev libopenblas-dev
          catch2 nlohmann-json3-dev libcli11-dev libfmt-dev doxygen graphviz libjs-mathjax gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    echo "then run this command again." >&2
    exit 1
  fi
fi

build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
echo "== configuring ($build)"
cmake -S . -B "$build" --preset release >/dev/null
echo "== building with $jobs jobs"
cmake --build "$build" -j "$jobs"

if [ "$what" = tour ]; then
  cmake --build "$build" --target tour
else
  ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 900
fi
