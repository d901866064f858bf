#!/usr/bin/python3
"""Print the quality table (Markdown): validation bits/byte against KV-cache bytes per token.

  /usr/bin/python3 data/models/quality_table.py data/models [more roots with the same variants]

Each root holds one folder per variant (mha, gqa, mqa, mla, mla_noq) written by train.py; the
first root's models are the shipped ones, the others (other seeds) only add to the spread.
"""
import json
import os
import statistics
import sys

VARIANTS = ("mha", "gqa", "mqa", "mla", "mla_noq")


def main():
    roots = sys.argv[1:] or [os.path.dirname(os.path.abspath(__file__))]
    print("| variant | KV cache floats/token/layer | KV cache bytes/token (F32, all layers) "
          "| parameters | val bits/byte (seed 0) | seeds | mean ± sd over seeds | train wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        runs = []
        for r in roots:
            p = os.path.join(r, v, "golden.json")
            if os.path.exists(p):
                with open(p) as f:
                    runs.append(json.load(f)["training"])
        if not runs:
            continue
        vals = [t["val_bits_per_byte"] for t in runs]
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        t = runs[0]
        print(f"| {v} | {t['kv_cache_floats_per_token_per_layer']} | "
              f"{t['kv_cache_bytes_per_token_f32']} | {t['parameters']} | {vals[0]:.4f} | "
              f"{len(vals)} | {statistics.mean(vals):.4f} ± {sd:.4f} | {t['wall_seconds']} |")


if __name__ == "__main__":
    main()
