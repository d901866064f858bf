#!/usr/bin/python3
"""Train tiny byte-level decoders that differ only in their attention, and export them.

Variants (same depth, width, MLP, tokens, learning-rate schedule and seed):
  mha      Llama-style multi-head attention: q_proj/k_proj/v_proj/o_proj, H KV heads
  gqa      grouped-query attention, H/4 KV heads
  mqa      multi-query attention, 1 KV head
  mla      DeepSeek's Multi-head Latent Attention with query compression (V3 layout:
           q_a_proj -> q_a_layernorm -> q_b_proj)
  mla_noq  MLA without query compression (V2-Lite layout: q_proj)

Blocks are RMSNorm pre-norm with a SwiGLU MLP, as DeepSeek's dense layers:
  x = x + attn(input_layernorm(x));  x = x + down(silu(gate(y)) * up(y)), y = post_norm(x)

MLA follows DeepSeek-V3's inference/model.py (the naive path): kv_a_proj_with_mqa gives the
latent c_kv (kv_lora_rank) and one RoPE key k_pe (qk_rope_head_dim) shared by every head;
kv_a_layernorm normalizes c_kv; kv_b_proj gives per head [k_nope | v]. RoPE is interleaved
(pairs (2i, 2i+1) rotated as complex numbers), the softmax scale 1/sqrt(qk_nope + qk_rope).
The MHA/GQA/MQA twins use Llama's rotate_half RoPE, as chapter 8's loader applies it.

Corpus: the King James Bible (Debian's bible-kjv), `bible "Gen1:1-Rev22:21"`, bytes as tokens.
Validation: every 20th block of 8192 bytes is held out (deterministic, spread over the whole
book). Reported: validation cross-entropy in bits per byte.

Determinism: torch.manual_seed(seed), one thread (torch.set_num_threads(1) and
OPENBLAS_NUM_THREADS=1), torch.use_deterministic_algorithms(True): the same command on the same
machine and torch build makes the same weights (tests/cli/train_smoke.sh checks it).

Export (--out DIR): config.json (Llama names for MHA/GQA/MQA, DeepSeek-V2/V3 names for MLA),
model.safetensors (F32, written by write_safetensors below, no safetensors package) and
golden.json (a prompt, its logits at every position, its greedy continuation).

Usage:
  /usr/bin/python3 data/models/train.py --variant mla --seed 0 --steps 400 --batch 16 --out data/models/mla
  /usr/bin/python3 data/models/train.py --smoke --out /tmp/smoke   # a few steps, tiny model
  /usr/bin/python3 data/models/train.py --finetune-from CONVERTED --steps 100 --lr 1e-3 --out DIR
      # fine-tune an MHA model converted to MLA by chapters/tools' mha_to_mla --save CONVERTED
  /usr/bin/python3 data/models/train.py --excerpts data/models
      # write the validation bytes the reported loss scores, and as many training bytes (so C++
      # can score and calibrate without the corpus)
"""

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time

# One thread everywhere, set before numpy/torch load their BLAS: torch.set_num_threads(1) below
# covers torch's own kernels, but the OpenBLAS that Debian's torch calls for every matrix
# product starts its own thread pool (one thread per core) unless told otherwise, and that pool
# busy-waits for a core whenever another program holds one: under load a step took minutes.
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402  (after the environment above)
import torch  # noqa: E402


def keep_freed_memory():
    """Make glibc keep freed memory in the process instead of returning it to the kernel.

    A training step allocates and frees many buffers of B·H·S·S floats (34 MB at batch 16);
    glibc serves blocks that big with mmap and unmaps them on free, so every step touches
    fresh pages, and a first touch is a page fault (in a virtual machine a costly one: it made
    a step ~3x slower here). Serving every block from the heap and never trimming it reuses the
    same pages. Changes speed only, never a result."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)  # no mmap'd blocks: all from the heap
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # never give the heap's top back


keep_freed_memory()
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("mha", "gqa", "mqa", "mla", "mla_noq")
BLOCK = 8192  # bytes per split block
VAL_EVERY = 20  # every 20th block is validation
PROMPT = "In the beginning"
GOLDEN_TOKENS = 32


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


def shape_for(variant, smoke):
    """The one shape every variant shares, plus the variant's attention fields."""
    if smoke:
        s = dict(layers=2, d_model=32, heads=4, head_dim=8, intermediate=64, context=64,
                 batch=4, kv_lora_rank=16, q_lora_rank=24, qk_nope=8, qk_rope=4, v_head=8)
    else:
        # d_h = 16; MLA as DeepSeek-V2 scales it: d_c = 4 d_h, d_rope = d_h / 2.
        s = dict(layers=4, d_model=128, heads=8, head_dim=16, intermediate=384, context=256,
                 batch=16, kv_lora_rank=64, q_lora_rank=96, qk_nope=16, qk_rope=8, v_head=16)
    s["kv_heads"] = {"mha": s["heads"], "gqa": s["heads"] // 4, "mqa": 1}.get(variant)
    return s


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_freqs(d, theta):
    return 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))


def rope_cos_sin(d, theta, positions):
    """cos, sin of positions x freqs: (S, d/2) each."""
    a = torch.outer(positions.to(torch.float32), rope_freqs(d, theta))
    return torch.cos(a), torch.sin(a)


def rope_half(x, cos, sin):
    """Llama's rotate_half RoPE on the last dim of x (..., S, H, d): pairs (i, i + d/2)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos[:, None, :], sin[:, None, :]  # (S, 1, d/2)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def rope_interleaved(x, cos, sin):
    """DeepSeek's interleaved RoPE on the last dim of x (..., S, H, d): pairs (2i, 2i + 1)."""
    re, im = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(-2)


def causal_bias(S):
    """(S, S) additive mask: 0 where query i may read key j (j <= i), -inf above the diagonal."""
    return torch.full((S, S), float("-inf")).triu(1)


def causal_attention(q, k, v, scale):
    """q (B, S, H, dq), k (B, T, H, dq), v (B, T, H, dv) -> (B, S, H·dv); causal, T = S.

    softmax(scale·q·kᵀ + mask)·v, written for speed on a CPU (the same math as the textbook
    form, rounded in another order): the scale goes onto q (B·S·H·dq numbers, not B·H·S·S
    scores), the mask is added inside the score product (baddbmm: no masked_fill pass, and
    none in the backward), and both products are plain bmm on contiguous (B·H, S, d) operands."""
    B, S, H, dq = q.shape
    dv = v.shape[-1]
    q = (q * scale).transpose(1, 2).reshape(B * H, S, dq)
    kt = k.permute(0, 2, 3, 1).reshape(B * H, dq, S)  # kᵀ per head
    v = v.transpose(1, 2).reshape(B * H, S, dv)
    p = torch.softmax(torch.baddbmm(causal_bias(S), q, kt), dim=-1)  # (B·H, S, S)
    o = torch.bmm(p, v).view(B, H, S, dv)
    return o.transpose(1, 2).flatten(2)


class GqaAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, H, Hkv, d = c["d_model"], c["heads"], c["kv_heads"], c["head_dim"]
        self.H, self.Hkv, self.d, self.theta = H, Hkv, d, c["rope_theta"]
        self.q_proj = nn.Linear(D, H * d, bias=False)
        self.k_proj = nn.Linear(D, Hkv * d, bias=False)
        self.v_proj = nn.Linear(D, Hkv * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)

    def forward(self, x):
        B, S, _ = x.shape
        cos, sin = rope_cos_sin(self.d, self.theta, torch.arange(S))
        q = rope_half(self.q_proj(x).view(B, S, self.H, self.d), cos, sin)
        k = rope_half(self.k_proj(x).view(B, S, self.Hkv, self.d), cos, sin)
        v = self.v_proj(x).view(B, S, self.Hkv, self.d)
        g = self.H // self.Hkv  # query head h reads KV head h // g
        k = k.repeat_interleave(g, dim=2)
        v = v.repeat_interleave(g, dim=2)
        return self.o_proj(causal_attention(q, k, v, 1.0 / math.sqrt(self.d)))


class MlaAttention(nn.Module):
    def __init__(self, c, q_lora_rank):
        super().__init__()
        D, H = c["d_model"], c["heads"]
        self.H, self.dn, self.dr, self.dv = H, c["qk_nope"], c["qk_rope"], c["v_head"]
        self.dc, self.theta, self.q_lora_rank = c["kv_lora_rank"], c["rope_theta"], q_lora_rank
        dqk = self.dn + self.dr
        if q_lora_rank:
            self.q_a_proj = nn.Linear(D, q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(q_lora_rank, c["eps"])
            self.q_b_proj = nn.Linear(q_lora_rank, H * dqk, bias=False)
        else:
            self.q_proj = nn.Linear(D, H * dqk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.dc + self.dr, bias=False)
        self.kv_a_layernorm = RMSNorm(self.dc, c["eps"])
        self.kv_b_proj = nn.Linear(self.dc, H * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(H * self.dv, D, bias=False)

    def forward(self, x):
        B, S, _ = x.shape
        H, dn, dr, dv = self.H, self.dn, self.dr, self.dv
        if self.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(B, S, H, dn + dr)
        cos, sin = rope_cos_sin(dr, self.theta, torch.arange(S))
        q = torch.cat([q[..., :dn], rope_interleaved(q[..., dn:], cos, sin)], dim=-1)
        kv = self.kv_a_proj_with_mqa(x)  # (B, S, d_c + d_rope)
        c_kv, k_pe = kv[..., : self.dc], kv[..., self.dc:]
        k_pe = rope_interleaved(k_pe.unsqueeze(2), cos, sin)  # (B, S, 1, d_rope): one for all heads
        kvb = self.kv_b_proj(self.kv_a_layernorm(c_kv)).view(B, S, H, dn + dv)
        k = torch.cat([kvb[..., :dn], k_pe.expand(B, S, H, dr)], dim=-1)
        v = kvb[..., dn:]
        return self.o_proj(causal_attention(q, k, v, 1.0 / math.sqrt(dn + dr)))


class ConvertedAttention(nn.Module):
    """An MHA layer converted to MLA by chapters/tools' mha_to_mla (chapter 4's algebra,
    chapters/04_low_rank_latents/mha_to_mla.hpp), in the same tensors: per head the no-RoPE query
    q_proj (MHA's) against keys k_up_proj(c) rebuilt from the latent c = kv_a_proj(x) (r), plus a
    rope query q_rope_proj against ONE rope key k_rope_proj(x) shared by all heads (d_r floats,
    rotate_half layout, unit u rotated with its own frequency); values v_up_proj(c); the MHA
    model's scale 1/sqrt(d_h). No kv_a_layernorm: the conversion is linear."""

    def __init__(self, c, conv):
        super().__init__()
        D, H, d = c["d_model"], c["heads"], c["head_dim"]
        self.H, self.d, r, units = H, d, conv["kv_lora_rank"], conv["rope_units"]
        self.dr = 2 * units
        self.q_proj = nn.Linear(D, H * d, bias=False)
        self.q_rope_proj = nn.Linear(D, H * self.dr, bias=False)
        self.kv_a_proj = nn.Linear(D, r, bias=False)
        self.k_rope_proj = nn.Linear(D, self.dr, bias=False)
        self.k_up_proj = nn.Linear(r, H * d, bias=False)
        self.v_up_proj = nn.Linear(r, H * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)
        self.register_buffer("freqs", torch.tensor(conv["rope_unit_frequencies"],
                                                   dtype=torch.float32).reshape(units), persistent=False)

    def forward(self, x):
        B, S, _ = x.shape
        H, d, dr = self.H, self.d, self.dr
        a = torch.outer(torch.arange(S, dtype=torch.float32), self.freqs)  # (S, units)
        cos, sin = torch.cos(a), torch.sin(a)
        qr = rope_half(self.q_rope_proj(x).view(B, S, H, dr), cos, sin)
        kr = rope_half(self.k_rope_proj(x).view(B, S, 1, dr), cos, sin)
        c = self.kv_a_proj(x)  # (B, S, r): what the cache holds, with kr
        q = torch.cat([self.q_proj(x).view(B, S, H, d), qr], dim=-1)
        k = torch.cat([self.k_up_proj(c).view(B, S, H, d), kr.expand(B, S, H, dr)], dim=-1)
        v = self.v_up_proj(c).view(B, S, H, d)
        return self.o_proj(causal_attention(q, k, v, 1.0 / math.sqrt(d)))


class Block(nn.Module):
    def __init__(self, c, variant):
        super().__init__()
        D, I = c["d_model"], c["intermediate"]
        self.input_layernorm = RMSNorm(D, c["eps"])
        if variant.startswith("mla"):
            self.self_attn = MlaAttention(c, c["q_lora_rank"] if variant == "mla" else None)
        else:
            self.self_attn = GqaAttention(c)
        self.post_attention_layernorm = RMSNorm(D, c["eps"])
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(D, I, bias=False)
        self.mlp.up_proj = nn.Linear(D, I, bias=False)
        self.mlp.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        y = self.post_attention_layernorm(x)
        m = self.mlp
        return x + m.down_proj(F.silu(m.gate_proj(y)) * m.up_proj(y))


class Decoder(nn.Module):
    def __init__(self, c, variant):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(256, c["d_model"])
        self.model.layers = nn.ModuleList([Block(c, variant) for _ in range(c["layers"])])
        self.model.norm = RMSNorm(c["d_model"], c["eps"])
        self.lm_head = nn.Linear(c["d_model"], 256, bias=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2's init: N(0, 0.02²), the residual outputs scaled by 1/sqrt(2L).
                std = 0.02
                if n.endswith("o_proj.weight") or n.endswith("down_proj.weight"):
                    std /= math.sqrt(2 * c["layers"])
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens):
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_corpus():
    text = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True).stdout
    data = np.frombuffer(text, dtype=np.uint8)
    n = len(data) // BLOCK
    blocks = data[: n * BLOCK].reshape(n, BLOCK)
    is_val = (np.arange(n) % VAL_EVERY) == VAL_EVERY - 1
    train = torch.from_numpy(blocks[~is_val].reshape(-1).astype(np.int64))
    val = torch.from_numpy(blocks[is_val].reshape(-1).astype(np.int64))
    return text, train, val


def batch(stream, B, S, gen):
    starts = torch.randint(0, len(stream) - S - 1, (B,), generator=gen)
    x = torch.stack([stream[s: s + S] for s in starts])
    y = torch.stack([stream[s + 1: s + S + 1] for s in starts])
    return x, y


@torch.no_grad()
def val_bits_per_byte(model, val, S, max_windows):
    """Mean cross-entropy over non-overlapping windows of S+1 bytes of the validation stream."""
    model.eval()
    n = min((len(val) - 1) // S, max_windows)
    total, count = 0.0, 0
    for i in range(0, n, 16):
        idx = range(i, min(i + 16, n))
        x = torch.stack([val[j * S: j * S + S] for j in idx])
        y = torch.stack([val[j * S + 1: j * S + S + 1] for j in idx])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train()
    return total / count / math.log(2)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def write_safetensors(path, tensors, metadata):
    """The safetensors format: u64 little-endian header length, a JSON header (padded with
    spaces to a multiple of 8), then the raw little-endian data. tensors: [(name, np.float32)]."""
    header, offset = {"__metadata__": metadata}, 0
    for name, a in tensors:
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, a in tensors:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def hf_config(c, variant):
    common = {
        "vocab_size": 256, "hidden_size": c["d_model"], "intermediate_size": c["intermediate"],
        "num_hidden_layers": c["layers"], "max_position_embeddings": c["context"],
        "rms_norm_eps": c["eps"], "hidden_act": "silu", "tie_word_embeddings": False,
        "eos_token_id": None, "rope_theta": c["rope_theta"], "rope_scaling": None,
        "num_attention_heads": c["heads"], "torch_dtype": "float32",
    }
    if variant.startswith("mla"):
        common.update({
            "model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"],
            "kv_lora_rank": c["kv_lora_rank"],
            "q_lora_rank": c["q_lora_rank"] if variant == "mla" else None,
            "qk_nope_head_dim": c["qk_nope"], "qk_rope_head_dim": c["qk_rope"],
            "v_head_dim": c["v_head"], "num_key_value_heads": c["heads"],
            "n_routed_experts": None, "first_k_dense_replace": c["layers"], "moe_layer_freq": 1,
        })
    else:
        common.update({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "num_key_value_heads": c["kv_heads"], "head_dim": c["head_dim"],
        })
    return common


def cache_floats_per_token(c, variant):
    """Numbers cached per token per layer."""
    if variant.startswith("mla"):
        return c["kv_lora_rank"] + c["qk_rope"]
    return 2 * c["kv_heads"] * c["head_dim"]


@torch.no_grad()
def golden(model):
    model.eval()
    prompt = list(PROMPT.encode())
    logits = model(torch.tensor([prompt]))[0]  # (S, 256)
    toks = list(prompt)
    for _ in range(GOLDEN_TOKENS):  # greedy, recomputing the whole sequence each step
        toks.append(int(model(torch.tensor([toks]))[0, -1].argmax()))
    cont = toks[len(prompt):]
    return {
        "prompt": PROMPT, "prompt_tokens": prompt,
        "logits": [[float(v) for v in row] for row in logits.tolist()],
        "greedy_tokens": cont,
        "greedy_text": bytes(cont).decode("latin-1"),
    }


def export(model, c, variant, out, info):
    os.makedirs(out, exist_ok=True)
    tensors = [(n, p.detach().numpy().astype(np.float32)) for n, p in model.named_parameters()]
    write_safetensors(os.path.join(out, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(c, variant), f, indent=2)
        f.write("\n")
    g = golden(model)
    g["training"] = info
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(g, f, indent=1)
        f.write("\n")
    return g


def drop_log(argv):
    """argv without --log PATH / --log=PATH."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--log":
            skip = True
        elif not x.startswith("--log="):
            out.append(x)
    return out


def read_safetensors(path):
    """{name: torch.float32 tensor} of an F32 safetensors file (the format write_safetensors
    writes)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8: 8 + n])
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        if h["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {h['dtype']}, expected F32")
        b, e = h["data_offsets"]
        a = np.frombuffer(raw[8 + n + b: 8 + n + e], dtype="<f4").reshape(h["shape"])
        out[name] = torch.from_numpy(a.copy())
    return out


def val_excerpt(val, S, max_windows):
    """The bytes val_bits_per_byte scores on stream `val`: windows of S + 1 bytes, S apart, from
    the start."""
    n = min((len(val) - 1) // S, max_windows)
    return bytes(val[: n * S + 1].numpy().astype(np.uint8))


def make_optimizer(model, lr):
    """AdamW as every run of this script uses it: weight decay 0.1 on matrices, none on norms."""
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def lr_schedule(peak, steps):
    """Linear warm-up over 5 % of the steps, then cosine to 10 % of the peak."""
    warmup = max(1, steps // 20)

    def lr_at(s):
        if s < warmup:
            return peak * (s + 1) / warmup
        t = (s - warmup) / max(1, steps - warmup)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    return lr_at


def train_steps(model, opt, lr_at, train, B, S, gen, steps, print_every):
    """The training loop of every run: `steps` steps of B sequences of S bytes drawn by `gen`,
    gradients clipped at 1. Returns the training loss per step (bits/byte), or None (after saying
    so) if a loss is not finite."""
    log, t0 = [], time.time()
    for s in range(steps):
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(s)
        x, y = batch(train, B, S, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bpb = loss.item() / math.log(2)
        log.append(bpb)
        if not math.isfinite(bpb):
            print(f"step {s}: loss is not finite", file=sys.stderr)
            return None
        if s % print_every == 0 or s == steps - 1:
            print(f"step {s:5d}  train {bpb:.4f} bits/byte  lr {lr_at(s):.2e}  "
                  f"{time.time() - t0:.0f} s", flush=True)
    return log


def finetune(a):
    """Start from an MHA model converted to MLA (mha_to_mla --save DIR), or from the MHA model
    itself (the baseline: as many further steps with the attention unchanged), train a.steps
    steps with the usual schedule, report the validation loss before and after, export to a.out
    (model.safetensors, config.json, finetune.json: the record mha_to_mla --finetuned reads)."""
    with open(os.path.join(a.finetune_from, "config.json")) as f:
        hf = json.load(f)
    # A converted model has an "mha2mla" block; without one, the folder must be an MHA model of
    # this script (the baseline: the same further steps with the attention left as it is).
    conv = hf.get("mha2mla")
    if conv is None and (hf.get("model_type") != "llama"
                         or hf.get("num_key_value_heads") != hf.get("num_attention_heads")):
        print(f"train.py: {a.finetune_from}/config.json is neither a model converted by "
              "mha_to_mla --save (an 'mha2mla' block) nor an MHA model", file=sys.stderr)
        return 2
    c = dict(layers=hf["num_hidden_layers"], d_model=hf["hidden_size"],
             heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
             intermediate=hf["intermediate_size"], context=hf["max_position_embeddings"],
             batch=a.batch or 16, kv_heads=hf["num_key_value_heads"], eps=hf["rms_norm_eps"],
             rope_theta=hf["rope_theta"])
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(a.seed)
    model = Decoder(c, "mha")
    if conv is not None:
        for layer in model.model.layers:
            layer.self_attn = ConvertedAttention(c, conv)
    model.load_state_dict(read_safetensors(os.path.join(a.finetune_from, "model.safetensors")))
    _, train, val = load_corpus()
    S, B = c["context"], c["batch"]
    before = val_bits_per_byte(model, val, S, 64)
    what = (f"converted (r = {conv['kv_lora_rank']}, d_rope = {2 * conv['rope_units']})"
            if conv is not None else "MHA")
    print(f"{what}: val {before:.4f} bits/byte before fine-tuning", flush=True)
    opt = make_optimizer(model, a.lr)
    steps = a.steps
    # Batches the pre-training did not draw in this order (another seed of the same generator).
    gen = torch.Generator().manual_seed(1000 + a.seed)
    t0, c0 = time.time(), time.process_time()
    if train_steps(model, opt, lr_schedule(a.lr, steps), train, B, S, gen, steps, 25) is None:
        return 1
    after = val_bits_per_byte(model, val, S, 64)
    os.makedirs(a.out, exist_ok=True)
    tensors = [(n, p.detach().numpy().astype(np.float32)) for n, p in model.named_parameters()]
    write_safetensors(os.path.join(a.out, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
        f.write("\n")
    if conv is None:  # MHA: every pair of every head rotated, K and V cached whole
        conv = {"kv_lora_rank": None, "rope_pairs": c["head_dim"] // 2,
                "rope_components": c["heads"], "rope_units": 0, "svd_basis": "-"}
    floats = (conv["kv_lora_rank"] + 2 * conv["rope_units"] if conv["kv_lora_rank"]
              else cache_floats_per_token(c, "mha"))
    info = {
        "kv_lora_rank": conv["kv_lora_rank"], "rope_pairs": conv["rope_pairs"],
        "rope_components": conv["rope_components"] if conv["rope_pairs"] else 0,
        "rope_dim": 2 * conv["rope_units"], "kv_cache_floats_per_token_per_layer": floats,
        "svd_basis": conv["svd_basis"],
        "steps": steps, "batch": B, "peak_lr": a.lr, "seed": a.seed,
        "tokens_seen": steps * B * S,
        "val_bits_per_byte_before": before, "val_bits_per_byte": after,
        "wall_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1), "torch": torch.__version__,
        "command": " ".join(["data/models/train.py"] + drop_log(sys.argv[1:])),
    }
    with open(os.path.join(a.out, "finetune.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(f"val {before:.4f} -> {after:.4f} bits/byte after {steps} steps "
          f"({info['cpu_seconds']} s CPU)", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=VARIANTS, default="mla")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 400, smoke 30)")
    ap.add_argument("--out", help="folder to export the model into (required unless --init-kv or --excerpts)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps (a CI check)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--log", type=str, default=None, help="also write the loss log (JSON) here")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 16)")
    ap.add_argument("--init-kv", type=str, default=None, metavar="FILE",
                    help="write the key/value projections at initialization (the draws this "
                         "seed's training starts from) to FILE (safetensors) and stop; "
                         "mha/gqa/mqa only (chapter 4 compares their spectrum with the trained one)")
    ap.add_argument("--finetune-from", type=str, default=None,
                    help="start from this converted MHA->MLA model (mha_to_mla --save), or from "
                         "an MHA model (the baseline), and train --steps more")
    ap.add_argument("--excerpts", type=str, default=None,
                    help="write into this folder val_excerpt.txt (the validation bytes the "
                         "reported loss scores) and calib_excerpt.txt (as many training bytes, "
                         "from the start), then stop")
    a = ap.parse_args()
    if a.excerpts:
        _, train, val = load_corpus()
        S = shape_for("mha", False)["context"]
        with open(os.path.join(a.excerpts, "val_excerpt.txt"), "wb") as f:
            f.write(val_excerpt(val, S, 64))
        with open(os.path.join(a.excerpts, "calib_excerpt.txt"), "wb") as f:
            f.write(val_excerpt(train, S, 64))
        return 0
    if not a.out and not a.init_kv:
        print("train.py: --out is required", file=sys.stderr)
        return 2
    if a.finetune_from:
        if a.steps is None or a.steps < 1:
            print("train.py: --finetune-from needs --steps N >= 1", file=sys.stderr)
            return 2
        return finetune(a)
    steps = a.steps if a.steps is not None else (30 if a.smoke else 400)
    if steps < 1:
        print(f"train.py: --steps {steps} must be >= 1", file=sys.stderr)
        return 2

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(a.seed)
    c = shape_for(a.variant, a.smoke)
    c.update(eps=1e-6, rope_theta=10000.0)

    if a.init_kv:
        # The same draws as training: manual_seed above, then Decoder's constructor (the corpus,
        # read below without torch's generator, does not move it).
        if a.variant.startswith("mla"):
            print("train.py: --init-kv is for mha/gqa/mqa (k_proj, v_proj)", file=sys.stderr)
            return 2
        model = Decoder(c, a.variant)
        kv = [(n, p.detach().numpy().astype(np.float32)) for n, p in model.named_parameters()
              if n.endswith(("k_proj.weight", "v_proj.weight"))]
        write_safetensors(a.init_kv, kv, {"format": "pt", "what": "initialization, no training",
                                          "command": " ".join(["data/models/train.py"] + sys.argv[1:])})
        print(f"wrote {len(kv)} key/value projections at initialization to {a.init_kv}")
        return 0

    text, train, val = load_corpus()
    model = Decoder(c, a.variant)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    if a.batch is not None:
        if a.batch < 1:
            print(f"train.py: --batch {a.batch} must be >= 1", file=sys.stderr)
            return 2
        c["batch"] = a.batch
    S, B = c["context"], c["batch"]
    print(f"variant {a.variant} seed {a.seed}: {n_params} parameters, {steps} steps of {B}x{S} "
          f"bytes; corpus {len(text)} bytes, train {len(train)}, val {len(val)}", flush=True)
    t0, c0 = time.time(), time.process_time()
    log = train_steps(model, opt, lr_schedule(a.lr, steps), train, B, S, gen, steps, 50)
    if log is None:
        return 1
    wall, cpu = time.time() - t0, time.process_time() - c0
    val_bpb = val_bits_per_byte(model, val, S, 16 if a.smoke else 64)
    floats = cache_floats_per_token(c, a.variant)
    info = {
        "variant": a.variant, "seed": a.seed, "steps": steps, "batch": B, "context": S,
        "peak_lr": a.lr, "parameters": n_params, "tokens_seen": steps * B * S,
        "val_bits_per_byte": val_bpb, "train_bits_per_byte_last": log[-1],
        "kv_cache_floats_per_token_per_layer": floats,
        "kv_cache_bytes_per_token_f32": floats * 4 * c["layers"],
        # Wall time depends on what else runs; CPU time (this process, one thread) much less.
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "torch": torch.__version__, "threads": 1,
        # The command that made the weights (--log only says where the loss log went).
        "command": " ".join(["data/models/train.py"] + drop_log(sys.argv[1:])),
    }
    torch.save({"state": model.state_dict(), "shape": c, "info": info},
               os.path.join(a.out + ".state.pt") if not a.smoke else os.devnull)
    g = export(model, c, a.variant, a.out, info)
    if a.log:
        with open(a.log, "w") as f:
            json.dump({"train_bits_per_byte": log, **info}, f)
    print(f"val {val_bpb:.4f} bits/byte; KV cache {info['kv_cache_bytes_per_token_f32']} bytes/token "
          f"(F32, all layers); {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    print(f"greedy: {PROMPT!r} -> {g['greedy_text']!r}", flush=True)
    print(json.dumps({"first_loss": log[0], "last_loss": log[-1],
                      "first5": sum(log[:5]) / min(5, len(log)),
                      "last5": sum(log[-5:]) / min(5, len(log))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
