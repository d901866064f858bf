#!/usr/bin/env bash
# Make a damaged copy of a golden case: one F32 value of one tensor replaced by NaN or Inf.
#
#   tests/cli/make_nonfinite_case.sh <NAME.config.json> <NAME.safetensors> <out_dir> <tensor> <index> <nan|inf>
#
# Writes <out_dir>/NAME.config.json (a copy) and <out_dir>/NAME.safetensors (the same bytes but
# element <index> of <tensor>), so `mla_verify --golden-dir <out_dir>` runs exactly one case.
# The ctest fixtures of the "cli: mla_verify ..." non-finite cases use it (tests/CMakeLists.txt).
set -euo pipefail

if [ $# -ne 6 ]; then
  echo "usage: $0 <NAME.config.json> <NAME.safetensors> <out_dir> <tensor> <index> <nan|inf>" >&2
  exit 2
fi
config="$1" weights="$2" out="$3" tensor="$4" index="$5" value="$6"
case "$value" in
  nan) bytes='\x00\x00\xc0\x7f' ;;  # 0x7fc00000, little-endian: a quiet NaN
  inf) bytes='\x00\x00\x80\x7f' ;;  # 0x7f800000: +Inf
  *) echo "$0: value must be nan or inf, got '$value'" >&2; exit 2 ;;
esac

# The header: 8-byte little-endian length, then JSON with "<tensor>":{"dtype":..,"data_offsets":[b,e]}.
header_len="$(od -An -tu8 -N8 "$weights" | tr -d ' ')"
header="$(dd if="$weights" bs=1 skip=8 count="$header_len" 2>/dev/null)"
entry="$(printf '%s' "$header" | grep -o "\"$tensor\":{[^}]*}" || true)"
if [ -z "$entry" ]; then
  echo "$0: no tensor '$tensor' in $weights" >&2
  exit 2
fi
case "$entry" in
  *'"dtype":"F32"'*) ;;
  *) echo "$0: tensor '$tensor' is not F32: $entry" >&2; exit 2 ;;
esac
begin="$(printf '%s' "$entry" | sed -E 's/.*"data_offsets":\[([0-9]+),([0-9]+)\].*/\1/')"
end="$(printf '%s' "$entry" | sed -E 's/.*"data_offsets":\[([0-9]+),([0-9]+)\].*/\2/')"
offset=$((8 + header_len + begin + 4 * index))
if [ $((begin + 4 * index + 4)) -gt "$end" ]; then
  echo "$0: index $index is outside tensor '$tensor' ($(((end - begin) / 4)) values)" >&2
  exit 2
fi

mkdir -p "$out"
name="$(basename "$weights" .safetensors)"
cp "$config" "$out/$name.config.json"
cp "$weights" "$out/$name.safetensors"
chmod u+w "$out/$name.safetensors"
printf "$bytes" | dd of="$out/$name.safetensors" bs=1 seek="$offset" conv=notrunc 2>/dev/null
echo "wrote $out/$name.safetensors: $tensor[$index] = $value"
