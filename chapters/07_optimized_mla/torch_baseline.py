#!/usr/bin/env python3
"""PyTorch CPU eager baseline for chapter 7: the absorbed MLA decode step as DeepSeek's own
reference code writes it, timed at the same shapes as mla_bench.

DeepSeek-V3's inference/model.py (MLA.forward, attn_impl == "absorb") computes one decode step
with three einsums and a softmax over the latent cache (kv_cache: (B, T, d_c)) and the rope-key
cache (pe_cache: (B, T, d_r)):

    scores = (einsum("bshc,btc->bsht", q_absorbed, kv_cache)
              + einsum("bshr,btr->bsht", q_pe, pe_cache)) * softmax_scale
    scores = scores.softmax(dim=-1)
    out    = einsum("bsht,btc->bshc", scores, kv_cache)

This script times exactly that part (the part chapter 7's kernels do), for one new token (s = 1),
in float32, and prints the same columns as mla_bench (or, with --json, one JSON object in
mla_bench's format with impl "torch_eager"). It is optional: it needs Debian's python3-torch,
which the project's build and tests do not.

    python3 chapters/07_optimized_mla/torch_baseline.py --heads 128 --context 4096 --threads 2
"""

import argparse
import json
import os
import statistics
import sys
import time


def positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=positive, default=128, help="query heads H (V3: 128)")
    parser.add_argument("--context", type=positive, default=4096, help="cached tokens T")
    parser.add_argument("--batch", type=positive, default=1, help="sequences B")
    parser.add_argument("--threads", type=positive, default=1, help="torch.set_num_threads")
    parser.add_argument("--blas-threads", type=positive, default=None,
                        help="threads of the BLAS that torch's matrix products call "
                             "(default: --threads)")
    parser.add_argument("--kv-lora-rank", type=positive, default=512, help="latent width d_c")
    parser.add_argument("--rope-dim", type=positive, default=64, help="rope key width d_r")
    parser.add_argument("--runs", type=positive, default=21, help="timed runs (median)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()

    # Debian's PyTorch does its matrix products in the system BLAS (OpenBLAS here), whose thread
    # pool ignores torch.set_num_threads: left alone, "--threads 1" would still multiply on every
    # core. So both counts are set, before torch (and with it OpenBLAS) is loaded. Measured here:
    # the fastest split on 2 cores is --threads 1 --blas-threads 2; with 2 and 2 the two pools
    # fight over the cores and a step takes about twice as long.
    blas_threads = args.blas_threads or args.threads
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(blas_threads)
    try:
        import torch
    except (ImportError, OSError):  # not installed, or a broken install (a missing library)
        print("torch_baseline.py: PyTorch is not installed (Debian: apt-get install python3-torch)",
              file=sys.stderr)
        return 2

    B, H, T, d_c, d_r = args.batch, args.heads, args.context, args.kv_lora_rank, args.rope_dim
    cache_bytes = B * T * (d_c + d_r) * 4
    # What the run holds at its peak: the f32 caches, their f64 copies for the check (3x in all),
    # and a few (B, H, T) score tensors in f32 and f64 (about 6 f32-sized ones).
    need = 3 * cache_bytes + 6 * B * H * T * 4
    if need > 8 * 2**30:
        print(f"torch_baseline.py: this shape needs about {need / 2**30:.1f} GiB (caches, their "
              "float64 copies for the check, scores): refused (at most 8 GiB)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    kv_cache = torch.randn(B, T, d_c)
    pe_cache = torch.randn(B, T, d_r)
    q_abs = torch.randn(B, 1, H, d_c) / d_c**0.5  # the absorbed query of the new token
    q_pe = torch.randn(B, 1, H, d_r) / d_r**0.5
    # DeepSeek-V3's softmax scale without YaRN's mscale factor (qk_head_dim = 128 + 64); the
    # scale changes no timing.
    scale = (128 + d_r) ** -0.5

    def step(q_abs, q_pe, kv_cache, pe_cache):
        scores = (torch.einsum("bshc,btc->bsht", q_abs, kv_cache) +
                  torch.einsum("bshr,btr->bsht", q_pe, pe_cache)) * scale
        scores = scores.softmax(dim=-1)
        return torch.einsum("bsht,btc->bshc", scores, kv_cache)

    with torch.inference_mode():
        # Validate before timing: float32 against the same formula in float64.
        out = step(q_abs, q_pe, kv_cache, pe_cache)
        ref = step(q_abs.double(), q_pe.double(), kv_cache.double(), pe_cache.double())
        err = (out.double() - ref).abs().max().item()
        if not err <= 1e-4 + 1e-3 * ref.abs().max().item():
            print(f"torch_baseline.py: float32 result off by {err:.3g}", file=sys.stderr)
            return 1
        for _ in range(3):
            step(q_abs, q_pe, kv_cache, pe_cache)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            step(q_abs, q_pe, kv_cache, pe_cache)
            times.append(time.perf_counter() - t0)

    ms = statistics.median(times) * 1e3
    flops = B * H * T * (2 * (d_c + d_r) + 2 * d_c)  # the same counts as mla_bench's:
    step_bytes = cache_bytes + B * H * (2 * d_c + d_r) * 4  # the cache, the queries and outputs
    row = {"impl": "torch_eager", "heads": H, "context": T, "batch": B,
           "threads": max(args.threads, blas_threads), "blas_threads": blas_threads,
           "dtype": "f32", "ms": round(ms, 4), "gflops": round(flops / ms / 1e6, 3),
           "gbps": round(step_bytes / ms / 1e6, 4), "torch": torch.__version__}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"PyTorch {torch.__version__} eager, DeepSeek's absorbed einsums: B={B} H={H} T={T} "
              f"d_c={d_c} d_r={d_r}, {args.threads} thread(s), {blas_threads} BLAS thread(s); "
              f"max abs error vs float64 {err:.2e}")
        print(f"{ms:.3f} ms/step, {row['gflops']} GFLOP/s, {row['gbps']} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
