#!/usr/bin/python3
"""The quality table: validation bits/byte against KV-cache bytes per token, per variant.

  /usr/bin/python3 data/models/quality_table.py                 # Markdown table (README)
  /usr/bin/python3 data/models/quality_table.py --csv FILE      # also the figure's CSV
  /usr/bin/python3 data/models/quality_table.py --collect ROOT1 ROOT2 ...
        # write other_seeds.json from other seeds' runs: ROOTn/<variant>/golden.json, made by
        # `train.py --seed n --out ROOTn/<variant>`; the path in each command becomes <rootn>

The shipped models (this folder's <variant>/golden.json, seed 0) and the other seeds' training
records (other_seeds.json, keys "seedN/<variant>") are the runs; nothing is retrained.
"""
import argparse
import json
import os
import statistics
import sys

VARIANTS = ("mha", "gqa", "mqa", "mla", "mla_noq")
HERE = os.path.dirname(os.path.abspath(__file__))
OTHER_SEEDS = os.path.join(HERE, "other_seeds.json")


def training_record(folder):
    with open(os.path.join(folder, "golden.json")) as f:
        g = json.load(f)
    return dict(g["training"], greedy_text=g["greedy_text"])


def runs_per_variant():
    """{variant: [training record, ...]}, seed 0 (the shipped folder) first."""
    other = {}
    if os.path.exists(OTHER_SEEDS):
        with open(OTHER_SEEDS) as f:
            other = json.load(f)
    runs = {}
    for v in VARIANTS:
        if not os.path.exists(os.path.join(HERE, v, "golden.json")):
            continue
        shipped = training_record(os.path.join(HERE, v))
        rest = [r for k, r in sorted(other.items()) if k.split("/")[1] == v]
        for r in rest:  # a record of another command would not belong in the same row
            same = all(r[k] == shipped[k] for k in ("steps", "batch", "context", "peak_lr"))
            if not same:
                sys.exit(f"quality_table.py: {v} seed {r['seed']} was trained differently from "
                         f"seed 0 ({r['command']!r} against {shipped['command']!r})")
        runs[v] = [shipped] + rest
    return runs


def collect(roots):
    out = {}
    for n, root in enumerate(roots, start=1):
        for v in VARIANTS:
            folder = os.path.join(root, v)
            if not os.path.exists(os.path.join(folder, "golden.json")):
                continue
            r = training_record(folder)
            r["command"] = r["command"].replace(root.rstrip("/"), f"<root{n}>")
            out[f"seed{r['seed']}/{v}"] = r
    with open(OTHER_SEEDS, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} records to {OTHER_SEEDS}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", help="also write one row per variant (the figure's data) here")
    ap.add_argument("--collect", nargs="+", metavar="ROOT", help="write other_seeds.json")
    a = ap.parse_args()
    if a.collect:
        collect(a.collect)
        return 0
    runs = runs_per_variant()
    print("| variant | KV cache floats/token/layer | KV cache bytes/token (F32, all layers) "
          "| parameters | val bits/byte (seed 0) | seeds | mean ± sd over seeds | min – max "
          "| train CPU s, wall s (seed 0) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for v, rs in runs.items():
        vals = [r["val_bits_per_byte"] for r in rs]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        t = rs[0]
        row = dict(variant=v, kv_bytes=t["kv_cache_bytes_per_token_f32"], seed0=vals[0],
                   mean=statistics.mean(vals), sd=sd, lo=min(vals), hi=max(vals), seeds=len(vals))
        rows.append(row)
        print(f"| {v} | {t['kv_cache_floats_per_token_per_layer']} | {row['kv_bytes']} | "
              f"{t['parameters']} | {vals[0]:.4f} | {len(vals)} | {row['mean']:.4f} ± {sd:.4f} | "
              f"{row['lo']:.4f} – {row['hi']:.4f} | {t.get('cpu_seconds', '?')}, {t['wall_seconds']} |")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("variant,kv_bytes_per_token,val_bpb_seed0,val_bpb_mean,val_bpb_sd,"
                    "val_bpb_min,val_bpb_max,seeds\n")
            for r in rows:
                f.write(f"{r['variant']},{r['kv_bytes']},{r['seed0']:.4f},{r['mean']:.4f},"
                        f"{r['sd']:.4f},{r['lo']:.4f},{r['hi']:.4f},{r['seeds']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
