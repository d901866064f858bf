#!/usr/bin/env bash
# The training script's smoke run: a tiny model, a few steps, then chapter 8's loader reads the
# export and generates from it.
#
#   tests/cli/train_smoke.sh <python with torch> <train.py> <ch08_serving> <work dir>
#
# Passes if train.py exits 0, its loss is finite and its mean over the last 5 steps is below the
# mean over the first 5, a second run of the same command writes a byte-identical
# model.safetensors (training is deterministic), and ch08_serving loads the folder and continues
# "In the beginning".
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 <python> <train.py> <ch08_serving> <work dir>" >&2
  exit 2
fi
python="$1" train="$2" serving="$3" work="$4"
rm -rf "$work"
mkdir -p "$work"
"$python" "$train" --smoke --variant mla --steps 30 --out "$work/mla" > "$work/train.log" 2>&1 || {
  echo "train.py failed:"
  cat "$work/train.log"
  exit 1
}
# The last line is {"first5": ..., "last5": ...}: finite, and decreasing.
tail -n 1 "$work/train.log" | "$python" -c '
import json, math, sys
r = json.loads(sys.stdin.read())
ok = all(math.isfinite(r[k]) for k in ("first5", "last5")) and r["last5"] < r["first5"]
print("loss: first 5 steps %.4f, last 5 steps %.4f bits/byte" % (r["first5"], r["last5"]))
sys.exit(0 if ok else 1)
' || { echo "the smoke run's loss is not finite and decreasing"; cat "$work/train.log"; exit 1; }
for f in config.json model.safetensors golden.json; do
  [ -s "$work/mla/$f" ] || { echo "the export has no $f"; exit 1; }
done
# The same command again: the same weights, byte for byte.
"$python" "$train" --smoke --variant mla --steps 30 --out "$work/again" > "$work/again.log" 2>&1 || {
  echo "train.py failed the second time:"
  cat "$work/again.log"
  exit 1
}
cmp "$work/mla/model.safetensors" "$work/again/model.safetensors" || {
  echo "two runs of the same command wrote different weights (training is not deterministic)"
  exit 1
}
echo "two runs of the same command wrote the same model.safetensors"
out="$("$serving" --model "$work/mla" --prompt "In the beginning" --max-new 8 2>&1)" || {
  echo "ch08_serving refused the export:"
  echo "$out"
  exit 1
}
case "$out" in
  *"In the beginning"*) echo "ch08_serving loaded the export: $out" ;;
  *) echo "ch08_serving printed no continuation: $out"; exit 1 ;;
esac
