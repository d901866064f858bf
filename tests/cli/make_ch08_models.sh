#!/usr/bin/env bash
# Make the model folders the ch08_serving cli tests read: a good random one, and four that are
# wrong in one way each (made by editing the good one's config.json).
#
#   tests/cli/make_ch08_models.sh <ch08_serving> <folder>
set -euo pipefail
prog="$1"
out="$2"
rm -rf "$out"
mkdir -p "$out"
"$prog" --save-random "$out/good" > /dev/null
"$prog" --save-random "$out/good_gqa" --variant gqa > /dev/null
make_bad() {  # <name> <sed expression on config.json>
  cp -r "$out/good" "$out/$1"
  sed -i "$2" "$out/$1/config.json"
}
make_bad missing_layer 's/"num_hidden_layers": 2/"num_hidden_layers": 3/'
make_bad misshaped 's/"intermediate_size": 128/"intermediate_size": 96/'
make_bad vocab 's/"vocab_size": 256/"vocab_size": 320/'
make_bad experts 's/"n_routed_experts": null/"n_routed_experts": 64, "first_k_dense_replace": 1/'
for d in missing_layer misshaped vocab experts; do
  if cmp -s "$out/good/config.json" "$out/$d/config.json"; then
    echo "make_ch08_models.sh: the edit for $d changed nothing" >&2
    exit 1
  fi
done
