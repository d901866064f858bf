#!/usr/bin/env bash
# train.py --init-kv remakes the shipped initialization of the MHA model's key/value projections
# (data/models/mha/init_kv.safetensors, chapter 4's "at initialization" spectrum) from its
# documented command, and chapter 4 reads it.
#
#   tests/cli/init_kv.sh <python with torch> <train.py> <data/models/mha> <ch04_low_rank_latents> <work dir>
#
# Passes if the command exits 0, every tensor of the new file has the shipped file's shape and
# bytes (the headers differ only in the command they record), and ch04_low_rank_latents --model on
# a copy of the model folder with the new file prints the initialization columns.
set -euo pipefail
if [ $# -ne 5 ]; then
  echo "usage: $0 <python> <train.py> <data/models/mha> <ch04_low_rank_latents> <work dir>" >&2
  exit 2
fi
python="$1" train="$2" mha="$3" ch04="$4" work="$5"
rm -rf "$work"
mkdir -p "$work/mha"
"$python" "$train" --variant mha --seed 0 --init-kv "$work/mha/init_kv.safetensors" \
  > "$work/init_kv.log" 2>&1 || {
  echo "train.py --init-kv failed:"
  cat "$work/init_kv.log"
  exit 1
}
"$python" - "$mha/init_kv.safetensors" "$work/mha/init_kv.safetensors" <<'PY'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    data = b[8 + n:]
    return {k: (v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}
shipped, made = tensors(sys.argv[1]), tensors(sys.argv[2])
if shipped.keys() != made.keys():
    sys.exit("different tensors: %s vs %s" % (sorted(shipped), sorted(made)))
for k in shipped:
    if shipped[k] != made[k]:
        sys.exit("tensor %s differs from the shipped one" % k)
print("the %d tensors equal the shipped init_kv.safetensors" % len(shipped))
PY
cp "$mha/config.json" "$mha/model.safetensors" "$work/mha/"
out="$("$ch04" --model "$work/mha" 2>&1)" || { echo "ch04_low_rank_latents failed:"; echo "$out"; exit 1; }
case "$out" in
  *"r90 init"*) echo "ch04_low_rank_latents read it" ;;
  *) echo "ch04_low_rank_latents printed no initialization column:"; echo "$out"; exit 1 ;;
esac
